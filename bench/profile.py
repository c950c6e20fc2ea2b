"""Where our server's serial time goes: py-spy samples of whichever thread holds the GIL.

In one Python process only the thread holding the GIL runs Python; onnxruntime, and the
parts of Pillow and numpy that release the GIL, run beside it. So the GIL-held time per
request bounds throughput at 1 / (that time), whatever the cores. `stage_split` sorts
py-spy's samples into stages by the deepest frame that names one, and turns sample counts
into milliseconds of GIL per request.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections import Counter
from pathlib import Path

# (stage, pattern on one frame "function (file:line)"); the deepest matching frame decides.
STAGES = [
    ("HTTP server: event loop, parsing, writing", re.compile(
        r"\(podserve/runtime/http/(server|connection|parser|messages)\.py|\((asyncio|uvloop|httptools)/|"
        r"^(run_forever|_run_once) ")),
    ("control thread: metrics page, 404/405", re.compile(r"\(podserve/runtime/protocols/control\.py")),
    ("our view: admission, deadline, hand-offs", re.compile(r"\(podserve/runtime/protocols/service_route\.py")),
    ("batching: queue, hand-off, wake-ups", re.compile(r"\(podserve/runtime/batching/(batcher|pool)\.py")),
    ("metrics (prometheus_client)", re.compile(r"^(Metrics\.observe_\w+)|\(prometheus_client/")),
    ("access log (one JSON line)", re.compile(r"^log_request ")),
    ("wire: JSON + base64", re.compile(r"^parse_request ")),
    ("handler.decode: image decode, resize, normalise", re.compile(r"^\w+\.decode \(")),
    ("handler.predict: stack + onnxruntime call", re.compile(r"^\w+\.predict \(")),
    ("handler.encode + JSON response", re.compile(r"^(\w+\.encode|success_body) \(")),
]
OTHER = "other (start-up threads, interpreter)"
RATE = 250  # samples per second


THREAD_GROUPS = [  # (prefix of a thread's name, group)
    ("request-", "request threads: parse, decode, encode"),
    ("batch-", "batch threads: inference"),
    ("MainThread", "event loop: HTTP reading and writing"),
    ("control", "control thread: probes, metrics page"),
]


class ProfileUnavailable(RuntimeError):
    """py-spy is missing or may not attach (e.g. no ptrace permission)."""


def record_gil(pid: int, seconds: int, out: Path, rate: int = RATE) -> Path:
    """Sample the GIL holder of process `pid` and of every process under it (each has its own GIL) for `seconds`
    without pausing them; write py-spy's raw format, each stack headed by the processes it runs in."""
    command = [_py_spy(), "record", "--pid", str(pid), "--duration", str(seconds), "--rate", str(rate), "--gil",
               "--nonblocking", "--subprocesses", "--format", "raw", "--output", str(out)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=seconds + 30)
    if done.returncode != 0 or not out.exists():
        raise ProfileUnavailable(f"py-spy failed ({done.returncode}): {(done.stderr or done.stdout).strip()[-300:]}")
    return out


def _py_spy() -> str:
    py_spy = shutil.which("py-spy") or str(Path(__file__).resolve().parent.parent / ".venv/bin/py-spy")
    if not Path(py_spy).exists():
        raise ProfileUnavailable("py-spy is not installed (requirements/bench.txt)")
    return py_spy


def thread_groups(pid: int) -> dict[int, str]:
    """{native thread id: group} for process `pid`, from the thread names `py-spy dump` shows."""
    done = subprocess.run([_py_spy(), "dump", "--pid", str(pid)], capture_output=True, text=True, timeout=30)
    if done.returncode != 0:
        raise ProfileUnavailable(f"py-spy dump failed ({done.returncode}): {done.stderr.strip()[-300:]}")
    groups = {}
    for found in re.finditer(r'^Thread (\d+) \([^)]*\): "([^"]*)"', done.stdout, re.MULTILINE):
        name = found.group(2)
        groups[int(found.group(1))] = next((g for prefix, g in THREAD_GROUPS if name.startswith(prefix)), "other")
    return groups


def thread_cpu_seconds(pid: int) -> dict[int, float]:
    """{native thread id: user + system CPU seconds so far} for process `pid`."""
    ticks = os.sysconf("SC_CLK_TCK")
    seconds = {}
    for stat in Path(f"/proc/{pid}/task").glob("*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        seconds[int(stat.parent.name)] = (int(fields[11]) + int(fields[12])) / ticks
    return seconds


def stage_of(stack: list[str]) -> str:
    for frame in reversed(stack):
        for stage, pattern in reversed(STAGES):
            if pattern.search(frame):
                return stage
    return OTHER


#: The frames py-spy's --subprocesses puts at the head of a stack, one per process from the one it attached to down:
#: `process 1234:"python -m podserve.runtime"`.
PROCESS_FRAME = re.compile(r'^process (\d+):')


def stage_split(raw: str, requests: int, rate: int, seconds: float) -> dict:
    """Return the GIL's busy share and its milliseconds per request by stage and by process, from py-spy's raw
    output. Each process has a GIL of its own: the busiest one's time per request is what serialises a request
    (`busiest_gil_ms_per_request`); the sum over them (`gil_ms_per_request`) is how much Python held a GIL in all."""
    samples: Counter[str] = Counter()
    by_process: Counter[int | None] = Counter()
    for line in raw.splitlines():
        stack, _, count = line.rpartition(" ")
        try:
            number = float(count)  # py-spy writes some counts as decimals ("392.0"), seen on a fresh clone.
        except ValueError:
            continue  # not a stack: a blank line, or the rest of a command line that spans lines
        frames = stack.split(";")
        processes = [int(found.group(1)) for found in map(PROCESS_FRAME.match, frames) if found]
        samples[stage_of([frame for frame in frames if not PROCESS_FRAME.match(frame)])] += number
        by_process[processes[-1] if processes else None] += number
    total = sum(samples.values())

    def per_request(count: float) -> float:
        return round(count / rate / requests * 1000, 3)

    busiest = max(by_process.values(), default=0.0)
    return {"gil_busy_share": round(busiest / (rate * seconds), 3), "requests": requests,
            "gil_ms_per_request": per_request(total) if requests else None,
            "busiest_gil_ms_per_request": per_request(busiest) if requests else None,
            "gil_ms_per_request_by_stage": {stage: per_request(count) for stage, count in samples.most_common()},
            "gil_ms_per_request_by_pid": {pid: per_request(count) for pid, count in by_process.most_common()}}
