"""`make bench-gpu`: one process per GPU (ours, batching) against Gunicorn's N workers, each with its own model.

    python -m bench.gpu [--workers N] [--seconds S] [--out bench/results]

On a machine with a GPU (nvidia-smi lists one and onnxruntime offers the CUDA execution
provider; `make bench-gpu` installs onnxruntime-gpu into its own environment there), our
server runs value.py's settings on the GPU with batching on (`ours`; again with one request
thread per CPU core of the pod, `ours-threads`), and Gunicorn runs N sync workers, each
loading its own CUDA session and copy of the weights. For each concurrency
the two are measured in alternating closed-loop wrk windows; the GPU memory each process
holds (nvidia-smi) and its peak RSS are recorded. That table is what one process per GPU
buys. Without a GPU the same script runs end to end on the CPU provider, and its output says
so in its first line: those figures show that the benchmark works, not what a GPU does.
On a GPU machine with no package index, give pip a folder of wheels through its environment:
`PIP_NO_INDEX=1 PIP_FIND_LINKS=/path/to/wheels make bench-gpu`.
Writes gpu.json and gpu.md to --out.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from bench.loadgen import request_wires, write_wires
from bench.run import machine
from bench.systems import Server, start_gunicorn, start_ours
from bench.workloads import FAST, REPO

CONCURRENCIES = (1, 8, 64)
WINDOWS = 2


def gpu_inventory() -> tuple[list[str], list[str]]:
    """Return (GPUs nvidia-smi lists, execution providers onnxruntime offers)."""
    import onnxruntime

    try:
        listed = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=30)
        gpus = [line for line in listed.stdout.splitlines() if line.startswith("GPU")] if listed.returncode == 0 else []
    except (OSError, subprocess.TimeoutExpired):
        gpus = []
    return gpus, onnxruntime.get_available_providers()


def gpu_memory_mb(pids: list[int]) -> dict[int, float]:
    """GPU memory each of `pids` holds, in MB, from nvidia-smi; {} where there is none."""
    try:
        out = subprocess.run(["nvidia-smi", "--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.TimeoutExpired):
        return {}
    used = {}
    for line in out.splitlines():
        pid, _, mib = line.partition(",")
        if pid.strip().isdigit() and int(pid) in pids:
            used[int(pid)] = round(float(mib) * 1.048576, 1)
    return used


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.gpu", description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=0, help="Gunicorn workers (default: CPU cores, at most 8)")
    parser.add_argument("--seconds", type=int, default=3, help="length of one measuring window")
    parser.add_argument("--out", default=str(REPO / "bench" / "results"))
    args = parser.parse_args(argv)
    cores = len(os.sched_getaffinity(0))
    workers = args.workers or min(cores, 8)
    gpus, providers = gpu_inventory()
    on_gpu = bool(gpus) and "CUDAExecutionProvider" in providers
    where = (f"GPU present: {'; '.join(gpus)}; onnxruntime offers {providers}: both servers ran on the CUDA provider"
             if on_gpu else
             f"NO GPU WAS PRESENT (nvidia-smi listed {len(gpus)} GPU(s); onnxruntime offers {providers}): both servers "
             f"ran on the CPU provider. These figures show that `make bench-gpu` runs end to end, not what a GPU does.")
    print(where, flush=True)
    started = time.monotonic()
    results = {"command": os.environ.get("BENCH_COMMAND", "python -m bench.gpu"), "where": where, "on_gpu": on_gpu,
               "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
               "machine": machine(cores), "load_average_at_start": list(os.getloadavg()),
               "model": FAST.model_path, "handler": FAST.handler, "gunicorn_workers": workers, "points": [],
               "processes": {}}
    out = Path(args.out)
    with tempfile.TemporaryDirectory(prefix="podserve-bench-gpu-") as scratch:
        log_dir = out / "logs"
        log_dir.mkdir(parents=True, exist_ok=True)
        servers: list[Server] = []
        try:
            # Ours: value.py's settings (gpu_num = 1, batching on); on a machine without a GPU it falls back to the CPU.
            servers.append(start_ours("ours", FAST, log_dir, {"PODSERVE_GPU_NUM": "1"}))
            # The same with one request thread per CPU core of the pod: whether decoding, not the GPU, bounds it.
            servers.append(start_ours("ours-threads", FAST, log_dir, {"PODSERVE_GPU_NUM": "1",
                                                                      "PODSERVE_HTTP_THREADS": "0"}))
            servers.append(start_gunicorn(FAST, servers[0].path.rsplit("/", 1)[1], workers, log_dir,
                                          "cuda" if on_gpu else "cpu"))
            for server in servers:
                server.wait_ready()
                wires = request_wires(server.path, f"127.0.0.1:{server.port}", FAST.images())
                server.request_files = write_wires(wires, Path(scratch) / server.name)
                server.measure(8, 1)  # warm-up, not recorded
            for concurrency in CONCURRENCIES:
                windows: dict[str, list] = {s.name: [] for s in servers}
                for _ in range(WINDOWS):
                    for server in servers:
                        windows[server.name].append(server.measure(concurrency, args.seconds))
                for server in servers:
                    ws = windows[server.name]
                    row = {"c": concurrency, "system": server.name, "setup": server.setup,
                           "rps": round(statistics.median(w.throughput_rps for w in ws), 1),
                           "p50_ms": round(statistics.median(w.p50_ms for w in ws), 2),
                           "p99_ms": round(statistics.median(w.p99_ms for w in ws), 2),
                           "errors": sum(w.errors for w in ws),
                           "cpu_ms_per_request": round(1000 * sum(w.server_cpu_s for w in ws) /
                                                       max(1, sum(w.requests for w in ws)), 3),
                           "mean_batch": round(sum(w.batch_items for w in ws) / sum(w.batches for w in ws), 2)
                           if sum(w.batches for w in ws) else 1}
                    results["points"].append(row)
                    print(json.dumps(row), flush=True)
            for server in servers:
                pids = server.pids()
                gpu = gpu_memory_mb(pids)
                rss = server.peak_rss_mb()
                results["processes"][server.name] = [
                    {"process": role, "peak_rss_mb": mb,
                     "gpu_memory_mb": gpu.get(server.process.pid if role == "main" else int(role.split("-")[1]))}
                    for role, mb in rss.items()]
        finally:
            results["exit_codes"] = {server.name: server.stop() for server in servers}
    results["wall_seconds"] = round(time.monotonic() - started, 1)
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu.json").write_text(json.dumps(results, indent=2) + "\n")
    (out / "gpu.md").write_text(markdown(results))
    print(f"wrote {out / 'gpu.json'} and {out / 'gpu.md'} in {results['wall_seconds']:.0f}s")
    return 0


def markdown(results: dict) -> str:
    m = results["machine"]
    lines = ["# GPU benchmark: one process per GPU (ours, batching) vs Gunicorn's workers", "",
             f"**{results['where']}**", "",
             f"- Command: `{results['command']}` (wall time {results['wall_seconds']:.0f} s)",
             f"- Date: {results['date']}",
             f"- Machine: {m['cpu']}, {m['cores']} cores, {m['memory_gib']} GiB; Python {m['python']}, onnxruntime "
             f"{m['onnxruntime']}, {m['wrk']}; load average at start "
             f"{[round(x, 2) for x in results['load_average_at_start']]} (a shared machine: other jobs ran beside it)",
             f"- Model: `{results['model']}` (`{results['handler']}`); Gunicorn: {results['gunicorn_workers']} workers, "
             f"each with its own copy of the model", "",
             "| c | system | setup | req/s | p50 ms | p99 ms | errors | mean batch | server CPU ms/req |",
             "|---|---|---|---|---|---|---|---|---|"]
    for row in results["points"]:
        lines.append(f"| {row['c']} | {row['system']} | {row['setup']} | {row['rps']} | {row['p50_ms']} | "
                     f"{row['p99_ms']} | {row['errors']} | {row['mean_batch']} | {row['cpu_ms_per_request']} |")
    lines += ["", "Memory of each process (GPU memory from nvidia-smi; n/a without a GPU):", "",
              "| system | process | peak RSS MB | GPU memory MB |", "|---|---|---|---|"]
    for system, processes in results["processes"].items():
        for proc in processes:
            gpu = proc["gpu_memory_mb"] if proc["gpu_memory_mb"] is not None else "n/a"
            lines.append(f"| {system} | {proc['process']} | {proc['peak_rss_mb']} | {gpu} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
