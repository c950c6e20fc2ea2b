"""The load generator: wrk (Debian's package), closed loop, one window at a time.

Why wrk: it is compiled (C and LuaJIT), keeps every connection open, and on one thread
drives tens of thousands of requests a second while using a few percent of one core, so
on a 2-core machine the server, not the client, is what gets measured. Its CPU time per
window is measured too (`Window.client_cpu_s`) and reported beside the server's.

The Lua script (`wrk_post.lua`) only cycles through complete HTTP requests built here
from real images, in both wire forms callers use: JSON with a base64 `image`, and the raw
bytes as `application/octet-stream` with the ids as query parameters.
"""

from __future__ import annotations

import base64
import json
import os
import re
import subprocess
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence
from urllib.parse import urlencode

WRK_SCRIPT = Path(__file__).resolve().parent / "wrk_post.lua"
RESULT_LINE = re.compile(r"^WRK_RESULT (\{.*\})$", re.MULTILINE)


class LoadError(RuntimeError):
    """wrk could not run or did not report."""


@dataclass(frozen=True)
class Window:
    """One timed window of closed-loop load at a fixed concurrency."""

    requests: int
    seconds: float
    errors: int
    p50_ms: float
    p95_ms: float
    p99_ms: float
    client_cpu_s: float = 0.0
    server_cpu_s: float = 0.0
    batches: float = 0.0  # predict calls the server made in the window (ours only)
    batch_items: float = 0.0  # inputs those calls held
    batch_fill_wait_s: float = 0.0  # request-seconds queued while a free lane held its batch open for more (ours)
    verb_cpu_s: float = 0.0  # CPU seconds in the handler's verbs (ours: podserve_verb_cpu_seconds_total)
    predict_cpu_s: float = 0.0  # of which in predict (onnxruntime's work, in the batch threads)
    switches: float = 0.0  # context switches of the server's threads in the window (voluntary + involuntary)
    machine_busy_s: float = 0.0  # every core's busy CPU seconds, whoever spent them (/proc/stat), over elapsed_s
    elapsed_s: float = 0.0  # wall seconds from the server's CPU read before the window to the one after it
    machine_cores: int = 0  # the cores machine_busy_s is summed over

    @property
    def throughput_rps(self) -> float:
        return self.requests / self.seconds if self.seconds > 0 else 0.0


def request_wires(path: str, host: str, images: Sequence[bytes]) -> list[bytes]:
    """Return one HTTP request per image and wire form: JSON+base64 and raw bytes, alternating."""
    wires = []
    for number, image in enumerate(images):
        ids = {"postid": f"bench-{number}", "uid": "bench", "seqid": str(number)}
        document = json.dumps({**ids, "image": base64.b64encode(image).decode("ascii")}).encode()
        wires.append(_http_post(path, host, "application/json", document))
        wires.append(_http_post(f"{path}?{urlencode(ids)}", host, "application/octet-stream", image))
    return wires


def raw_wires(path: str, host: str, images: Sequence[bytes]) -> list[bytes]:
    """One request per image, its raw bytes as the body (application/octet-stream), the ids in the query."""
    return [_http_post(f"{path}?{urlencode({'postid': f'bench-{n}', 'uid': 'bench', 'seqid': str(n)})}", host,
                       "application/octet-stream", image) for n, image in enumerate(images)]


def v2_binary_wires(path: str, host: str, model: str, input_name: str, output_name: str,
                    tensors: Sequence) -> list[bytes]:
    """One Open Inference Protocol infer request per tensor (a batch of one row), the tensor and the output as
    binary data, as Triton's client sends them."""
    wires = []
    for number, tensor in enumerate(tensors):
        data = tensor.astype("<f4").tobytes()
        header = json.dumps({"id": f"bench-{number}", "inputs": [
            {"name": input_name, "shape": [1, *tensor.shape], "datatype": "FP32",
             "parameters": {"binary_data_size": len(data)}}],
            "outputs": [{"name": output_name, "parameters": {"binary_data": True}}]}).encode()
        head = (f"POST {path}/v2/models/{model}/infer HTTP/1.1\r\nHost: {host}\r\n"
                f"Content-Type: application/octet-stream\r\nInference-Header-Content-Length: {len(header)}\r\n"
                f"Content-Length: {len(header) + len(data)}\r\n\r\n")
        wires.append(head.encode("ascii") + header + data)
    return wires


def write_wires(wires: Sequence[bytes], folder: Path) -> list[Path]:
    """Write each request to its own file for the Lua script; return the paths."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for number, wire in enumerate(wires):
        path = folder / f"request-{number}.http"
        path.write_bytes(wire)
        paths.append(path)
    return paths


def run_wrk(url: str, request_files: Sequence[Path], concurrency: int, seconds: int,
            wrk: str = "wrk", timeout_s: int = 30) -> Window:
    """Run one closed-loop window: `concurrency` connections on one wrk thread for `seconds`."""
    command = [wrk, "-t1", f"-c{concurrency}", f"-d{seconds}s", f"--timeout={timeout_s}s", "-s", str(WRK_SCRIPT),
               url, "--", *map(str, request_files)]
    limit = seconds + timeout_s + 10
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    killer = threading.Timer(limit, process.kill)
    killer.start()
    try:
        output = process.stdout.read()
        _, status, usage = os.wait4(process.pid, 0)  # reaped here, so its own CPU time is known
    finally:
        killer.cancel()
        process.stdout.close()
    process.returncode = os.waitstatus_to_exitcode(status)
    text = output.decode(errors="replace")
    if process.returncode != 0:
        raise LoadError(f"wrk exited with {process.returncode} (killed after {limit}s?): {text.strip()[-400:]}")
    return parse_wrk_output(text, client_cpu_s=usage.ru_utime + usage.ru_stime)


def parse_wrk_output(text: str, client_cpu_s: float = 0.0) -> Window:
    """Return the Window that wrk_post.lua printed, or raise LoadError quoting wrk."""
    found = RESULT_LINE.search(text)
    if found is None:
        raise LoadError(f"wrk printed no WRK_RESULT line: {text.strip()[-400:]}")
    raw = json.loads(found.group(1))
    errors = sum(raw[k] for k in ("connect_errors", "read_errors", "write_errors", "status_errors", "timeouts"))
    return Window(requests=raw["requests"], seconds=raw["duration_us"] / 1e6, errors=errors,
                  p50_ms=raw["p50_us"] / 1000, p95_ms=raw["p95_us"] / 1000, p99_ms=raw["p99_us"] / 1000,
                  client_cpu_s=client_cpu_s)


def _http_post(target: str, host: str, content_type: str, body: bytes) -> bytes:
    head = (f"POST {target} HTTP/1.1\r\nHost: {host}\r\nContent-Type: {content_type}\r\n"
            f"Content-Length: {len(body)}\r\n\r\n")
    return head.encode("ascii") + body
