"""What a request must cost here at the least, beside what the pod spends: the HTTP floor and the decode's cache cost.

    python -m bench.floors [--out bench/results/issue70-progress] [--seconds 5] [--windows 3]

Issue 70 asks the split pod for 0.7 of the decode bound (the handler's decode and encode timed alone, back to back).
Two measures here say how far its own work can be cut, and what even a server that cost nothing would lose:

- **The HTTP floor.** The least a Python server on the pod's own HTTP stack (uvloop and httptools) spends on one of
  the workload's requests: read it (the callers' mix, JSON with a base64 image and raw bytes in turn), parse the JSON
  and decode the base64 (pybase64, as the pod does), and answer a fixed JSON. No admission, deadline, hand-off,
  batching, metrics or log. One process, wrk at `CONCURRENCY` callers on loopback, its CPU per request from /proc.
- **The decode's cache cost.** The handler's decode of each of the workload's images, timed by the thread's CPU in
  one process held to one core: back to back (as the decode bound times it, every table and buffer it touches warm
  in the core's cache), and each after reading `SWEEP_L2S` times the core's L2 cache of other memory first, as a
  pod's other work (another request's bodies and arrays, another process on the same core) leaves it.

Writes floors.json and floors.md to --out. Bounded: `--windows` windows of `--seconds` each, and `DECODE_ROUNDS`
rounds of the images each way.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.loadgen import request_wires, run_wrk, write_wires
from bench.proctree import tree_cpu_seconds
from bench.systems import free_port
from bench.workloads import FAST, REPO
from podserve.testbed.processes import poll_until, port_open

CONCURRENCY = 64
#: The floor server's answer to every request (what the example's answers hold, ids left out).
FLOOR_ANSWER = json.dumps({"results": {"label": "0", "score": 0.99}, "msg": "ok"}).encode()
#: Other memory read before each decode, in the core's L2 caches: twice is enough to leave none of the decode's in it.
SWEEP_L2S = 2
#: Where Linux says how large a core's L2 cache is, and what is assumed where it does not.
L2_SIZE_PATH = Path("/sys/devices/system/cpu/cpu0/cache/index2/size")
DEFAULT_L2_BYTES = 2 << 20
#: Rounds of the workload's images per way of timing the decode; the median round is reported.
DECODE_ROUNDS = 15
#: Issue 70's goal for the split pod: this share of the decode bound.
GOAL = 0.7


def l2_bytes(path: Path = L2_SIZE_PATH) -> int:
    """One core's L2 cache in bytes, as sysfs writes it ("2048K"), or DEFAULT_L2_BYTES where it says nothing."""
    try:
        text = path.read_text().strip().upper()
    except OSError:
        return DEFAULT_L2_BYTES
    units = {"K": 1 << 10, "M": 1 << 20}
    try:
        return int(text[:-1]) * units[text[-1]] if text[-1:] in units else int(text)
    except ValueError:
        return DEFAULT_L2_BYTES


def serve_floor(port: int) -> None:
    """The floor server, on 127.0.0.1:`port` until killed: read each request, parse a JSON body and decode its base64
    image, answer FLOOR_ANSWER (a GET too, so the caller can see it is up)."""
    import httptools
    import pybase64
    import uvloop

    head = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(FLOOR_ANSWER)
    answer = head + FLOOR_ANSWER

    class Floor(asyncio.Protocol):
        def connection_made(self, transport):
            self.transport, self.parser, self.body, self.json = transport, httptools.HttpRequestParser(self), [], False

        def data_received(self, data):
            try:
                self.parser.feed_data(data)
            except httptools.HttpParserError:
                self.transport.close()

        def on_header(self, name, value):
            if name.lower() == b"content-type":
                self.json = value.startswith(b"application/json")

        def on_body(self, body):
            self.body.append(body)

        def on_message_complete(self):
            body, self.body = b"".join(self.body), []
            if self.json and body:
                pybase64.b64decode(json.loads(body)["image"], validate=True)
            self.transport.write(answer)

    async def main():
        server = await asyncio.get_running_loop().create_server(Floor, "127.0.0.1", port)
        await server.serve_forever()

    uvloop.run(main())


def http_floor(images: list[bytes], seconds: int, windows: int) -> dict:
    """The floor server's CPU per request and req/s at CONCURRENCY callers over `windows` windows (each window's, and
    the median)."""
    port = free_port()
    process = subprocess.Popen([sys.executable, "-m", "bench.floors", "--serve", str(port)], cwd=REPO,
                               env={**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "src"), str(REPO)])})
    try:
        _wait_up(port, process)
        with tempfile.TemporaryDirectory(prefix="podserve-floor-") as scratch:
            files = write_wires(request_wires("/api/floor", f"127.0.0.1:{port}", images), Path(scratch))
            measured = []
            for _ in range(windows):
                cpu_before = tree_cpu_seconds([process.pid])
                window = run_wrk(f"http://127.0.0.1:{port}/api/floor", files, CONCURRENCY, seconds)
                if window.errors:
                    raise RuntimeError(f"the floor server answered {window.errors} requests with errors")
                cpu = tree_cpu_seconds([process.pid]) - cpu_before
                measured.append({"rps": round(window.throughput_rps, 1),
                                 "cpu_ms_per_request": round(1000 * cpu / max(1, window.requests), 4),
                                 "wrk_cpu_ms_per_request": round(1000 * window.client_cpu_s / max(1, window.requests),
                                                                 4)})
    finally:
        process.kill()
        process.wait()
    return {"concurrency": CONCURRENCY, "windows": measured,
            "cpu_ms_per_request": statistics.median(w["cpu_ms_per_request"] for w in measured),
            "rps": statistics.median(w["rps"] for w in measured)}


def _wait_up(port: int, process: subprocess.Popen, timeout_s: float = 30.0) -> None:
    """Until the floor server listens on `port` (RuntimeError if it exits first, TimeoutError past `timeout_s`)."""
    def listening() -> bool:
        if process.poll() is not None:
            raise RuntimeError(f"the floor server exited with {process.returncode}")
        return port_open(port)

    poll_until(listening, f"the floor server listening on {port}", timeout_s)


def decode_cache_cost(handler_spec: str, images: list[bytes], rounds: int = DECODE_ROUNDS) -> dict:
    """The handler's decode per image (ms of its thread's CPU), back to back and each after sweeping SWEEP_L2S of the
    core's L2 cache, alternating round by round on one core; each way's median round."""
    import numpy as np

    from podserve.handler import Payload
    from podserve.runtime.core.startup import import_handler

    handler = import_handler(handler_spec)()
    sweep_bytes = SWEEP_L2S * l2_bytes()
    other_memory = np.ones(sweep_bytes, np.uint8)
    affinity = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {min(affinity)})  # the sweep and the decode share one core's cache
    try:
        for image in images:  # warm-up: imports, the decoder's first allocations
            handler.decode(Payload(image=image))
        ways = {"back_to_back": [], "after_sweep": []}
        for _ in range(rounds):
            for way, rows in ways.items():
                spent = 0.0
                for image in images:
                    if way == "after_sweep":
                        other_memory.sum()
                    began = time.thread_time()
                    handler.decode(Payload(image=image))
                    spent += time.thread_time() - began
                rows.append(1000 * spent / len(images))
    finally:
        os.sched_setaffinity(0, affinity)
    back, after = statistics.median(ways["back_to_back"]), statistics.median(ways["after_sweep"])
    return {"handler": handler_spec, "images": len(images), "rounds": rounds, "l2_bytes": sweep_bytes // SWEEP_L2S,
            "sweep_bytes": sweep_bytes, "back_to_back_ms": round(back, 4), "after_sweep_ms": round(after, 4),
            "cache_cost_ms": round(after - back, 4)}


def bound_share(decode_ms: float, beyond_ms: float) -> float:
    """The share of the decode bound a pod reaches when each request costs its decode plus `beyond_ms` of CPU and
    every core works (what the cores allow at the decode alone, over what they allow at decode + beyond)."""
    return decode_ms / (decode_ms + beyond_ms)


def own_budget_ms(decode_ms: float, cache_ms: float, goal: float = GOAL) -> float:
    """The most a pod's own work may cost per request, beside the decode and its cache cost, for `goal` of the
    decode bound with every core working."""
    return decode_ms / goal - decode_ms - cache_ms


def markdown(results: dict) -> str:
    floor, cache = results["http_floor"], results["decode_cache"]
    decode, cache_cost = cache["back_to_back_ms"], cache["cache_cost_ms"]
    windows = ", ".join(f"{w['cpu_ms_per_request']:.4f}" for w in floor["windows"])
    return "\n".join([
        "# Floors: what a request must cost here at the least (issue 70)",
        "",
        f"`{results['command']}`, {results['date']}, {results['machine']}.",
        "",
        "| measure | figure |",
        "|---|---|",
        f"| HTTP floor: a uvloop + httptools server's CPU per request (the callers' mix, JSON parsed and base64 "
        f"decoded, a fixed answer), c={floor['concurrency']}, median of windows {windows} | "
        f"{floor['cpu_ms_per_request']:.4f} ms ({floor['rps']:.0f} req/s on one core) |",
        f"| the handler's decode per image, back to back (as the decode bound times it) | "
        f"{cache['back_to_back_ms']:.4f} ms |",
        f"| the same, each after reading {cache['sweep_bytes'] >> 20} MiB of other memory "
        f"({SWEEP_L2S} x the core's L2) | {cache['after_sweep_ms']:.4f} ms |",
        f"| the decode's cache cost | {cache['cache_cost_ms']:.4f} ms "
        f"({cache['cache_cost_ms'] / cache['back_to_back_ms']:.0%}) |",
        "",
        f"A pod whose every request cost only these beyond its decode (the floor and the cache cost) would reach "
        f"{bound_share(decode, floor['cpu_ms_per_request'] + cache_cost):.2f} of the decode bound with every core "
        f"working. For {GOAL} its own work may cost at most {own_budget_ms(decode, cache_cost):.3f} ms a request "
        f"beside the decode and its cache cost: {own_budget_ms(decode, cache_cost) / floor['cpu_ms_per_request']:.1f}x "
        f"the floor.",
        "",
        "How each is made: the module's docstring (`bench/floors.py`).",
        ""])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.floors", description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(REPO / "bench" / "results" / "issue70-progress"))
    parser.add_argument("--seconds", type=int, default=5, help="seconds per window of the HTTP floor")
    parser.add_argument("--windows", type=int, default=3, help="windows of the HTTP floor (the median is reported)")
    parser.add_argument("--serve", type=int, metavar="PORT", help=argparse.SUPPRESS)  # the floor server itself
    args = parser.parse_args(argv)
    if args.serve:
        serve_floor(args.serve)
        return 0
    from bench.run import machine  # onnxruntime's version with the machine's facts

    images = FAST.images()
    facts = machine(len(os.sched_getaffinity(0)))
    results = {"command": " ".join(["python -m bench.floors", *(argv if argv is not None else sys.argv[1:])]),
               "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
               "machine": f"{facts['cores']}-core {facts['cpu']}",
               "http_floor": http_floor(images, args.seconds, args.windows),
               "decode_cache": decode_cache_cost(FAST.handler, images)}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "floors.json").write_text(json.dumps(results, indent=2) + "\n")
    (out / "floors.md").write_text(markdown(results))
    print(markdown(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
