"""The systems under test, each measured one closed-loop window at a time.

- `Server`: an HTTP server in its own process tree (ours, a variant of ours, or Gunicorn),
  driven by wrk; the CPU time and peak RSS of every process of the tree are read from /proc
  (`bench.proctree`), with the machine's CPU over each window, and ours' batch sizes from
  its own /metrics.
- `CeilingSystem`: onnxruntime in this process (see `bench.ceiling`), and with `steps` the
  service without a server: the handler's decode and encode around it, no HTTP.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Sequence

from bench.ceiling import Ceiling, Config, ServiceSteps
from bench.loadgen import Window, run_wrk
from bench.proctree import (CLOCK_TICKS, machine_cpu, peak_rss_bytes, process_tree, still_running,
                            tree_cpu_seconds)
from bench.report import CEILING, SERVICE_ALONE
from bench.workloads import REPO, Workload
from podserve.metric_names import (BATCH_FILL_WAIT_SECONDS, BATCH_SIZE, IN_FLIGHT, PROCESS_CPU_SECONDS, REFUSALS_HELD,
                                   VERB_CPU_SECONDS)
from podserve.settings import ServingSettings
from podserve.testbed.processes import free_port

#: The /metrics series whose totals a window takes the difference of, and the Window field each goes to.
WINDOW_FIELDS = {BATCH_SIZE + "_sum": "batch_items", BATCH_SIZE + "_count": "batches",
                 BATCH_FILL_WAIT_SECONDS + "_total": "batch_fill_wait_s", VERB_CPU_SECONDS + "_total": "verb_cpu_s"}
#: The environment variable that picks our pod's layout (issue 55): 0 one process, N the split layout with N decoder
#: processes, -1 (or unset) the pod decides.
DECODE_PROCESSES = ServingSettings.env_name("decode_processes")
#: A server is quiet after a window once its processes use less than this share of one core...
QUIET_CORE_SHARE = 0.05
#: ...over an interval this long (ten clock ticks where /proc gives no schedstat).
QUIET_INTERVAL_S = 0.02
#: The longest a server may take to go quiet before the next window starts anyway (with a warning).
QUIET_TIMEOUT_S = 5.0


class ServerFailed(RuntimeError):
    """A server under test exited or never became ready."""


class Server:
    """One server process and every process under it (our pod's supervisor and the processes it spawns, Gunicorn's
    arbiter and its workers) on a loopback port."""

    kind = "server"

    def __init__(self, name: str, kind: str, command: list[str], env: dict[str, str], port: int, service: str,
                 log_path: Path, setup: str):
        self.name, self.kind, self.port, self.setup = name, kind, port, setup
        self.path = f"/api/{service}"
        self.url = f"http://127.0.0.1:{port}{self.path}"
        self.log_path = log_path
        self._log = open(log_path, "wb")
        self.process = subprocess.Popen(command, env=env, cwd=REPO, stdout=self._log, stderr=subprocess.STDOUT,
                                        start_new_session=True)
        self.request_files: Sequence[Path] = ()
        self.quiet_samples = 0  # how many looks the last wait_quiet took

    def wait_ready(self, timeout_s: float = 120.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise ServerFailed(f"{self.name} exited with {self.process.returncode}; see {self.log_path}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/api/ping", timeout=2) as reply:
                    if reply.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            time.sleep(0.1)
        raise ServerFailed(f"{self.name} was not ready within {timeout_s:.0f}s; see {self.log_path}")

    def measure(self, concurrency: int, seconds: int) -> Window:
        self.wait_idle()
        switches_before = self.switch_count()
        totals_before = self.metric_totals()
        cpu_before, machine_before, began = self.cpu_seconds(), machine_cpu(), time.monotonic()
        window = run_wrk(self.url, self.request_files, concurrency, seconds)
        cpu_after, machine_after, ended = self.cpu_seconds(), machine_cpu(), time.monotonic()
        totals_after = self.metric_totals()
        switches = self.switch_count() - switches_before
        self.wait_quiet()
        return _with(window, server_cpu_s=cpu_after - cpu_before, switches=switches,
                     machine_busy_s=machine_after.busy_s - machine_before.busy_s, elapsed_s=ended - began,
                     machine_cores=machine_after.cores,
                     **{field: totals_after[field] - totals_before[field] for field in totals_after})

    def pids(self) -> list[int]:
        """The server's process and every process under it, the server's first."""
        return process_tree(self.process.pid)

    def cpu_seconds(self) -> float:
        """User + system CPU seconds so far of every process of the server, those that ended and were reaped too."""
        return tree_cpu_seconds(self.pids())

    def cpu_ns(self) -> int:
        """CPU time of every thread of every process of the server so far, in ns (/proc/<pid>/task/*/schedstat;
        clock ticks from /proc/<pid>/stat where the kernel keeps no schedstat)."""
        return self._schedstat_ns(fields=1)

    def demand_ns(self) -> int:
        """CPU time plus time spent runnable, waiting for a core, of every thread of the server so far, in ns: a
        process with work to do accrues one or the other however busy the machine is (CPU only, without schedstat)."""
        return self._schedstat_ns(fields=2)

    def _schedstat_ns(self, fields: int) -> int:
        total, found = 0, False
        for pid in self.pids():
            for stat in Path(f"/proc/{pid}/task").glob("*/schedstat"):
                try:
                    total += sum(int(n) for n in stat.read_text().split()[:fields])
                    found = True
                except (OSError, ValueError, IndexError):
                    continue
        return total if found else int(self.cpu_seconds() * 1e9)

    def wait_quiet(self, timeout_s: float = QUIET_TIMEOUT_S) -> float:
        """Wait until the server has stopped working off the window just ended; return the seconds waited. The
        next window, of another system, must start on idle cores: Gunicorn's workers go on answering what wrk
        left queued in their sockets after it exits (about 60 ms of CPU, both cores for 35-40 ms, at 64
        callers on the example), which the next system's first requests would otherwise pay for. Quiet: under
        QUIET_CORE_SHARE of a core used or waited for (demand_ns) over an interval, so that a process still at work
        but starved of a core by a busy machine does not pass for quiet."""
        interval = QUIET_INTERVAL_S if Path(f"/proc/{self.process.pid}/schedstat").exists() else 10 / CLOCK_TICKS
        started = sampled_at = time.monotonic()
        used = self.demand_ns()
        self.quiet_samples = 0
        while time.monotonic() - started < timeout_s:
            time.sleep(interval)
            now, at = self.demand_ns(), time.monotonic()
            self.quiet_samples += 1
            # Over the time really slept: on a busy machine the sleep overruns, and a window must count its length.
            if now - used < QUIET_CORE_SHARE * (at - sampled_at) * 1e9:
                return at - started
            used, sampled_at = now, at
        print(f"[bench] {self.name} was still using the CPU {timeout_s:.0f}s after its window; going on",
              file=sys.stderr, flush=True)
        return time.monotonic() - started

    def switch_count(self) -> int:
        """Context switches so far of every thread of every process of the server (/proc/<pid>/task/*/status).
        Threads that ended are not counted: the servers' threads live as long as the server."""
        total = 0
        for pid in self.pids():
            for status in Path(f"/proc/{pid}/task").glob("*/status"):
                try:
                    text = status.read_text()
                except OSError:
                    continue
                total += sum(int(n) for n in re.findall(r"^(?:non)?voluntary_ctxt_switches:\s+(\d+)", text, re.M))
        return total

    def peak_rss_mb(self) -> dict[str, float]:
        """VmHWM (peak resident set) of each process of the server now running, in MB (10^6 bytes), by role: the
        process the benchmark started is "main", each under it "<kind>-<pid>" (`process_role`)."""
        peaks = {}
        for pid in self.pids():
            peak = peak_rss_bytes(pid)
            if peak is not None:
                peaks[self.process_role(pid)] = round(peak / 1e6, 1)
        return peaks

    def process_role(self, pid: int) -> str:
        """'main' for the process the benchmark started; 'worker-<pid>' under Gunicorn, 'process-<pid>' under ours."""
        if pid == self.process.pid:
            return "main"
        return f"{'worker' if self.kind == 'gunicorn' else 'process'}-{pid}"

    def _samples(self) -> list[tuple[str, str, float]]:
        """Every sample on our server's /metrics now, as (metric name, the whole line, value)."""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=10) as reply:
            lines = reply.read().decode().splitlines()
        return [(line.split("{", 1)[0].split(" ", 1)[0], line, float(line.rsplit(" ", 1)[1]))
                for line in lines if line and not line.startswith("#")]

    def gauge(self, name: str) -> float | None:
        """The sum of a gauge's samples on our server's /metrics now; None where the server has no such gauge."""
        if self.kind != "ours":
            return None
        values = [value for metric, _, value in self._samples() if metric == name]
        return sum(values) if values else None

    def role_cpu_seconds(self) -> dict[str, float]:
        """CPU seconds each role of a split pod's processes has used so far (front, decoder, model), from its /metrics;
        {} for a server that does not publish them (one process, Gunicorn) or no longer answers."""
        if self.kind != "ours":
            return {}
        try:
            samples = self._samples()
        except OSError:
            return {}
        spent: dict[str, float] = {}
        for metric, line, value in samples:
            if metric == PROCESS_CPU_SECONDS and 'role="' in line:
                role = line.split('role="', 1)[1].split('"', 1)[0]
                spent[role] = spent.get(role, 0.0) + value
        return spent

    def histogram_totals(self, name: str) -> tuple[float, float]:
        """A histogram's sum and count so far over all its series on our server's /metrics."""
        samples = self._samples()
        return (sum(value for metric, _, value in samples if metric == name + "_sum"),
                sum(value for metric, _, value in samples if metric == name + "_count"))

    def wait_idle(self, timeout_s: float = 15.0) -> None:
        """Wait until our server holds no request and no 503 held back by its pacing: wrk ends a window with
        requests in flight, which the server still answers; the next window must not start behind them (ours
        would refuse what it cannot hold)."""
        if self.kind != "ours":
            return
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if sum(value for metric, _, value in self._samples() if metric in (IN_FLIGHT, REFUSALS_HELD)) == 0:
                return
            time.sleep(0.02)

    def metric_totals(self) -> dict[str, float]:
        """So far, from the server's /metrics, by the Window field each goes to: inputs and predict calls, the
        request-seconds held for fuller batches, the CPU seconds in the handler's verbs and of those in predict;
        zeros where the server has none (Gunicorn)."""
        totals = dict.fromkeys(WINDOW_FIELDS.values(), 0.0) | {"predict_cpu_s": 0.0}
        if self.kind == "gunicorn":
            return totals
        for metric, line, value in self._samples():
            field = WINDOW_FIELDS.get(metric)
            if field is not None:
                totals[field] += value
                if field == "verb_cpu_s" and 'verb="predict"' in line:
                    totals["predict_cpu_s"] += value
        return totals

    def stop(self) -> int | None:
        """SIGTERM to the server's first process, then SIGKILL to its process group after 30 s; return the exit code.
        Processes of its tree still running once it has exited (a pod that left what it started behind) are killed
        too, with a warning: a benchmark leaves nothing running."""
        tree = self.pids()
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(10)
        left = still_running(tree[1:], self.process.pid)
        if left:
            print(f"[bench] {self.name} exited leaving processes {left} running; killing its process group",
                  file=sys.stderr, flush=True)
            try:
                os.killpg(self.process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self._log.close()
        return self.process.returncode


def log_name(workload: Workload, system: str) -> str:
    """A server's log file: its workload and system, in letters, digits, '.', '_' and '-' alone (what a GPU machine
    lent for a benchmark hands back)."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", f"{workload.name}-{system}").strip("-") + ".log"


def start_ours(name: str, workload: Workload, log_dir: Path, overrides: dict[str, str] | None = None,
               src: Path = REPO / "src") -> Server:
    """Our server with the environment `make serve` derives from value.py; only the port, the
    workload's handler and model, and a variant's `overrides` (PODSERVE_* names) differ. `src` is the
    package it runs from: another checkout's, to measure a change against the code before it."""
    from podserve.tooling.serve_local import local_environment

    port = free_port()
    env = local_environment(str(REPO / "value.py"), dict(os.environ))
    env.update({"PODSERVE_PORT": str(port), "PODSERVE_HANDLER": workload.handler,
                "PODSERVE_MODEL_PATH": str(REPO / workload.model_path), **(overrides or {})})
    env["PODSERVE_DRAIN_SECONDS"] = "0"  # the benchmark stops it when no request is in flight
    env["PYTHONPATH"] = os.pathsep.join([str(src), str(REPO)])
    setup = ", ".join(f"{k.removeprefix('PODSERVE_').lower()}={env[k]}" for k in
                      ("PODSERVE_INS_NUM_PER_GPU", "PODSERVE_MAX_BATCH_SIZE", "PODSERVE_MAX_BATCH_DELAY_MS",
                       "PODSERVE_HTTP_THREADS", "PODSERVE_CPU", "PODSERVE_QUEUE_SIZE", DECODE_PROCESSES) if k in env)
    service = env["PODSERVE_SERVICE_NAME"]
    return Server(name, "ours", [sys.executable, "-m", "podserve.runtime"], env, port, service,
                  log_dir / log_name(workload, name), setup)


#: A process that imports a handler's module and decodes the workload's images with it, then reports its peak RSS:
#: what any process of a pod that decodes holds without a model.
HANDLER_PROCESS = """
import sys
from podserve.handler import Payload
from podserve.runtime.core.startup import import_handler
handler = import_handler(sys.argv[1])()
for path in sys.argv[2:]:
    with open(path, "rb") as image:
        handler.decode(Payload(image=image.read()))
print(next(line.split()[1] for line in open("/proc/self/status") if line.startswith("VmHWM:")))
"""


def handler_process_peak_mb(handler: str, images: Sequence[bytes], src: Path = REPO / "src") -> float:
    """The peak RSS (MB) of a fresh Python process that imports `handler`'s module and decodes `images` with it, no
    model loaded: the least each process of a pod that decodes holds (the allowance per process in the peak RSS
    target, bench.report)."""
    with tempfile.TemporaryDirectory(prefix="podserve-bench-rss-") as folder:
        paths = []
        for number, image in enumerate(images):
            paths.append(Path(folder) / f"image-{number}")
            paths[-1].write_bytes(image)
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(src), str(REPO)])}
        done = subprocess.run([sys.executable, "-c", HANDLER_PROCESS, handler, *map(str, paths)], env=env, cwd=REPO,
                              capture_output=True, text=True, timeout=120)
    if done.returncode != 0:
        raise ServerFailed(f"a process decoding with {handler} failed ({done.returncode}): {done.stderr[-400:]}")
    return round(int(done.stdout.split()[-1]) * 1024 / 1e6, 1)


def start_gunicorn(workload: Workload, service: str, workers: int, log_dir: Path, device: str = "cpu") -> Server:
    """Gunicorn, `workers` sync workers (one per core), each calling the handler once per request."""
    port = free_port()
    env = {**os.environ, "BENCH_HANDLER": workload.handler, "BENCH_MODEL": str(REPO / workload.model_path),
           "BENCH_SERVICE": service, "BENCH_DEVICE": device,
           "PYTHONPATH": os.pathsep.join([str(REPO / "src"), str(REPO)])}
    command = [sys.executable, "-m", "gunicorn", "-w", str(workers), "-k", "sync", "-b", f"127.0.0.1:{port}",
               "--backlog", "2048", "--timeout", "120", "--log-level", "warning", "bench.gunicorn_app:app_from_env()"]
    return Server("gunicorn", "gunicorn", command, env, port, service, log_dir / log_name(workload, "gunicorn"),
                  f"{workers} sync workers x 1 onnxruntime {'CUDA session' if device == 'cuda' else 'thread'}, "
                  f"no batching")


class CeilingSystem:
    """The ceiling as a system the orchestrator can interleave with the servers; with `steps`, the service alone (the
    ceiling's configuration with the handler's decode and encode in its loop)."""

    kind = CEILING

    def __init__(self, ceiling: Ceiling, batches: Sequence[int], steps: ServiceSteps | None = None):
        self.name = CEILING if steps is None else SERVICE_ALONE
        self.ceiling = ceiling
        self.batches = batches
        self.steps = steps
        self.setup = ""

    def config_for(self, concurrency: int) -> Config:
        return self.ceiling.best_for(concurrency, self.batches)

    def measure(self, concurrency: int, seconds: int) -> Window:
        return self.ceiling.run(self.config_for(concurrency), seconds, steps=self.steps)


def _with(window: Window, **changes) -> Window:
    from dataclasses import replace

    return replace(window, **changes)
