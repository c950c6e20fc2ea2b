"""`make bench-gpu`: our pod on a GPU, split and in one process, against Gunicorn's workers, each with its own model.

    python -m bench.gpu [--workers N] [--seconds S] [--budget-s S] [--out bench/results]

On a machine with a GPU (nvidia-smi lists one and onnxruntime offers the CUDA execution
provider; `make bench-gpu` installs onnxruntime-gpu into its own environment there), three
systems run side by side with the same pod setting (`POD`: the machine's cores up to 16,
batches of up to 64, room for 512 requests): ours in the split layout (its decoder processes
as the pod decides: one per core on a GPU pod), ours in the one-process layout, and Gunicorn
with one sync worker per core (at most 16), each worker loading its own CUDA session and copy
of the weights. For each concurrency (1, 8, 64, 256, 512) they are measured in alternating
closed-loop wrk windows; the processes holding GPU memory (nvidia-smi: one CUDA context each,
the goal is exactly one per pod), the GPU memory and peak RSS of each process, and the cores
the pod, wrk and everything else used are recorded. Without a GPU the same script runs end to
end on the CPU provider, and its first line says so: those figures show that the benchmark
works, not what a GPU does. It stops starting new points once --budget-s has passed (each
point is about 6 windows of --seconds); on an H200 with 16 cores the whole run is expected
to take 4-5 minutes. Before the servers start, the handler's decode and encode run alone in one process
per core for DECODE_ALONE_S: the decode bound each point is judged against (issue 70).
On a GPU machine with no package index, give pip a folder of wheels through its environment:
`PIP_NO_INDEX=1 PIP_FIND_LINKS=/path/to/wheels make bench-gpu`, or carry it as
../shared/notes/gpu.md says ("Running on a GPU machine": `bash .gpu/gpu-run.sh python3 -m
bench.gpu --out $OUT`).
Writes gpu.json and gpu.md to --out.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from bench.decode_alone import decode_alone_rps
from bench.loadgen import LoadError, request_wires, write_wires
from bench.pod_split import STAGES, role_ms_per_request, stage_means, stage_totals
from bench.report import cores_left, cores_used
from bench.run import machine, service_name
from bench.standin import OUTPUT
from bench.systems import DECODE_PROCESSES, Server, ServerFailed, start_gunicorn, start_ours
from bench.workloads import FAST, REPO

#: 512: the decode bound of a 16-core box (about 20k req/s, issue 70) at the ~25 ms a request spends in the pod at
#: high load needs 500 callers in flight (Little's law); 256 reached 8.5k at 29 ms.
CONCURRENCIES = (1, 8, 64, 256, 512)
#: Seconds each process decodes alone for the decode bound (issue 70), before the servers start.
DECODE_ALONE_S = 5.0
WINDOWS = 2
#: The most cores the pod setting takes, and Gunicorn's workers (one per core).
MOST_CORES = 16
#: The pod setting every system of ours runs with here, besides its cores: batches of up to 64, room for the
#: callers of the last point (queue_size per instance is the pod's holding limit), and the memory a pod of 16
#: decoders plans for (value.py's 8Gi holds a 4-core pod's; 16 decoders need about 17 GiB, podserve/memory_plan.py).
POD = {"PODSERVE_GPU_NUM": "1", "PODSERVE_MAX_BATCH_SIZE": "64", "PODSERVE_QUEUE_SIZE": str(max(CONCURRENCIES)),
       "PODSERVE_MEMORY_BYTES": str(32 << 30)}
ONE_PROCESS = "ours: one process"


def layouts(pod_cores: int) -> dict[str, str]:
    """Our layouts (issue 55) by name, each its decode_processes: the split layout with one decoder per core (what
    auto gives a GPU pod), with two fewer (room for the front, the model process and wrk on the same cores), and
    one process. Named explicitly, not auto: a machine whose GPU device files look unusual would run one process."""
    split = {f"ours: split, {n} decoders": str(n) for n in sorted({pod_cores, max(1, pod_cores - 2)}, reverse=True)}
    return {**split, ONE_PROCESS: "0"}
#: Started once this many seconds have passed, a point is skipped (and the results say so).
BUDGET_S = 300


def gpu_inventory() -> tuple[list[str], list[str]]:
    """Return (GPUs nvidia-smi lists, execution providers onnxruntime offers)."""
    import onnxruntime

    try:
        listed = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=30)
        gpus = [line for line in listed.stdout.splitlines() if line.startswith("GPU")] if listed.returncode == 0 else []
    except (OSError, subprocess.TimeoutExpired):
        gpus = []
    return gpus, onnxruntime.get_available_providers()


def gpu_processes() -> dict[int, float]:
    """{pid: GPU memory in MB} of every process nvidia-smi lists as holding GPU memory (each holds a CUDA context);
    {} where there is none, or no nvidia-smi."""
    try:
        out = subprocess.run(["nvidia-smi", "--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.TimeoutExpired):
        return {}
    return parse_compute_apps(out)


def parse_compute_apps(out: str) -> dict[int, float]:
    """nvidia-smi's `--query-compute-apps=pid,used_memory --format=csv,noheader,nounits` as {pid: MB}."""
    used = {}
    for line in out.splitlines():
        pid, _, mib = line.partition(",")
        try:
            used[int(pid)] = round(float(mib) * 1.048576, 1)
        except ValueError:
            continue  # "[N/A]", or a line that is not a process
    return used


def cuda_contexts(pids: list[int], holding: dict[int, float]) -> int:
    """How many of a system's processes hold a CUDA context (are listed as holding GPU memory)."""
    return sum(1 for pid in pids if pid in holding)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.gpu", description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=0,
                        help=f"Gunicorn workers (default: one per CPU core, at most {MOST_CORES})")
    parser.add_argument("--seconds", type=int, default=3, help="length of one measuring window")
    parser.add_argument("--budget-s", type=int, default=BUDGET_S,
                        help="seconds after which no new point starts (the points left are skipped and named)")
    parser.add_argument("--out", default=str(REPO / "bench" / "results"))
    args = parser.parse_args(argv)
    cores = len(os.sched_getaffinity(0))
    pod_cores = min(cores, MOST_CORES)
    workers = args.workers or pod_cores
    gpus, providers = gpu_inventory()
    on_gpu = bool(gpus) and "CUDAExecutionProvider" in providers
    where = (f"GPU present: {'; '.join(gpus)}; onnxruntime offers {providers}: every server ran on the CUDA provider"
             if on_gpu else
             f"NO GPU WAS PRESENT (nvidia-smi listed {len(gpus)} GPU(s); onnxruntime offers {providers}): every server "
             f"ran on the CPU provider. These figures show that `make bench-gpu` runs end to end, not what a GPU does.")
    print(where, flush=True)
    started = time.monotonic()
    decode_rps = decode_alone_rps(FAST.handler, FAST.images(), [OUTPUT], pod_cores, DECODE_ALONE_S)
    print(f"decode and encode alone in {pod_cores} processes: {decode_rps:.0f} requests/s", flush=True)
    pod = {**POD, "PODSERVE_CPU": str(pod_cores)}
    results = {"command": os.environ.get("BENCH_COMMAND", "python -m bench.gpu"), "where": where, "on_gpu": on_gpu,
               "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
               "machine": {**machine(cores), "gpu": gpus or "none", "hostname": platform.node()},
               "load_average_at_start": list(os.getloadavg()), "model": FAST.model_path, "handler": FAST.handler,
               "pod": pod, "gunicorn_workers": workers, "points": [], "skipped": [], "processes": {},
               "decode_alone": {"processes": pod_cores, "seconds": DECODE_ALONE_S, "rps": round(decode_rps, 1)},
               "cuda_contexts": {}}
    out = Path(args.out)
    with tempfile.TemporaryDirectory(prefix="podserve-bench-gpu-") as scratch:
        log_dir = out / "logs"
        log_dir.mkdir(parents=True, exist_ok=True)
        servers: list[Server] = []  # every server started: each is stopped
        starts = [(name, lambda n=name, layout=layout: start_ours(n, FAST, log_dir, {**pod, DECODE_PROCESSES: layout}))
                  for name, layout in layouts(pod_cores).items()]
        starts.append(("gunicorn", lambda: start_gunicorn(FAST, service_name(), workers, log_dir,
                                                          "cuda" if on_gpu else "cpu")))
        try:
            running = []  # those still measured
            for name, start in starts:
                server = _started(name, start, servers, scratch, results)
                if server is not None:
                    running.append(server)
            for concurrency in CONCURRENCIES:
                if time.monotonic() - started > args.budget_s:
                    results["skipped"].append(concurrency)
                    print(f"c={concurrency} skipped: {args.budget_s} s had passed", flush=True)
                    continue
                windows: dict[str, list] = {s.name: [] for s in running}
                roles_before = {s.name: s.role_cpu_seconds() for s in running}
                stages_before = {s.name: stage_totals(s) for s in running}
                for _ in range(WINDOWS):
                    for server in list(running):
                        try:
                            windows[server.name].append(server.measure(concurrency, args.seconds))
                        except (LoadError, OSError) as exc:  # wrk failed, or the server no longer answers /metrics
                            _failed(results, server.name, f"at c={concurrency}: {exc}")
                            running.remove(server)
                for server in running:
                    results["points"].append(point_row(concurrency, server, windows[server.name]))
                    results["points"][-1].update(decode_bound(results["points"][-1], decode_rps / pod_cores, pod_cores))
                    stages = stage_means(stages_before[server.name], stage_totals(server))
                    if stages:
                        results["points"][-1]["stage_ms"] = stages
                    spent = server.role_cpu_seconds()
                    if spent:  # the split layout: which of its processes the CPU went to (the front bounds it?)
                        results["points"][-1]["role_cpu_ms_per_request"] = role_ms_per_request(
                            roles_before[server.name], spent, sum(w.requests for w in windows[server.name]))
                    print(json.dumps(results["points"][-1]), flush=True)
            holding = gpu_processes()
            results["gpu_processes"] = {str(pid): mb for pid, mb in holding.items()}
            for server in servers:
                pids = server.pids()
                rss = server.peak_rss_mb()
                results["cuda_contexts"][server.name] = cuda_contexts(pids, holding)
                results["processes"][server.name] = [
                    {"process": server.process_role(pid), "peak_rss_mb": rss.get(server.process_role(pid)),
                     "gpu_memory_mb": holding.get(pid)} for pid in pids]
        finally:
            results["exit_codes"] = {server.name: server.stop() for server in servers}
    results["wall_seconds"] = round(time.monotonic() - started, 1)
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu.json").write_text(json.dumps(results, indent=2) + "\n")
    (out / "gpu.md").write_text(markdown(results))
    print(f"wrote {out / 'gpu.json'} and {out / 'gpu.md'} in {results['wall_seconds']:.0f}s")
    return 0


def decode_bound(row: dict, per_core_rps: float, pod_cores: int) -> dict:
    """The decode bound at a point (issue 70): what the cores left to the pod (its cores, less wrk's and every other
    process's in the same windows) decode and encode alone, and the share of it the system answered."""
    left = cores_left(row)
    if left is None:
        return {}
    bound = round(per_core_rps * min(pod_cores, left), 1)
    return {"decode_bound_rps": bound, "decode_bound_fraction": round(row["rps"] / bound, 3) if bound else None}


def _started(name: str, start, servers: list[Server], scratch: str, results: dict) -> Server | None:
    """Start one system, wait until it is ready, write its requests and warm it up; None (and the reason in the
    results) when it cannot: the other systems are measured all the same, on a machine lent for minutes."""
    try:
        server = start()
        servers.append(server)
        server.wait_ready()  # one at a time: each times its calls at start-up, on a quiet machine
        wires = request_wires(server.path, f"127.0.0.1:{server.port}", FAST.images())
        server.request_files = write_wires(wires, Path(scratch) / server.name)
        server.measure(8, 1)  # warm-up, not recorded
        return server
    except (ServerFailed, LoadError, OSError) as exc:
        _failed(results, name, str(exc))
        return None


def _failed(results: dict, name: str, why: str) -> None:
    results.setdefault("failed", {})[name] = why
    print(f"{name} FAILED: {why}", flush=True)


def point_row(concurrency: int, server: Server, ws: list) -> dict:
    """One system at one concurrency: medians over its windows, its CPU per request, and the cores it, wrk and every
    other process used."""
    requests, batches = sum(w.requests for w in ws), sum(w.batches for w in ws)
    return {"c": concurrency, "system": server.name, "setup": server.setup,
            "rps": round(statistics.median(w.throughput_rps for w in ws), 1),
            "p50_ms": round(statistics.median(w.p50_ms for w in ws), 2),
            "p99_ms": round(statistics.median(w.p99_ms for w in ws), 2),
            "errors": sum(w.errors for w in ws),
            "cpu_ms_per_request": round(1000 * sum(w.server_cpu_s for w in ws) / max(1, requests), 3),
            "mean_batch": round(sum(w.batch_items for w in ws) / batches, 2) if batches else 1, **cores_used(ws)}


def markdown(results: dict) -> str:
    m = results["machine"]
    gpu = "; ".join(m["gpu"]) if isinstance(m["gpu"], list) else "no GPU"
    lines = [f"# GPU benchmark on {gpu}: our pod, split and in one process, vs Gunicorn's workers", "",
             f"**{results['where']}**", "",
             f"- Command: `{results['command']}` (wall time {results['wall_seconds']:.0f} s)",
             f"- Date: {results['date']}",
             f"- Machine: {m['hostname']}: {gpu}; {m['cpu']}, {m['cores']} cores, {m['memory_gib']} GiB; Python "
             f"{m['python']}, onnxruntime {m['onnxruntime']}, {m['wrk']}; load average at start "
             f"{[round(x, 2) for x in results['load_average_at_start']]} (a shared machine: other jobs ran beside it)",
             f"- Model: `{results['model']}` (`{results['handler']}`); our pod: {_settings(results['pod'])}; "
             f"Gunicorn: {results['gunicorn_workers']} workers, each with its own copy of the model", ""]
    if results["skipped"]:
        lines += [f"Skipped, the time budget spent: c={', '.join(map(str, results['skipped']))}.", ""]
    lines += [f"**{name} failed** (left out from then on): {why}" for name, why in results.get("failed", {}).items()]
    lines += [""] if results.get("failed") else []
    erred = [f"{row['system']} at c={row['c']} ({row['errors']})" for row in results["points"] if row["errors"]]
    if erred:
        lines += [f"**Answers that were errors or no answer** (wrk's non-2xx and socket errors; the req/s beside them "
                  f"counts them too): {'; '.join(erred)}.", ""]
    alone = results.get("decode_alone")
    if alone:
        lines += [f"The decode bound (issue 70): the handler's decode and encode alone, no server, in {alone['processes']}"
                  f" processes at once for {alone['seconds']:g} s before the servers started: {alone['rps']:.0f} "
                  f"requests/s, {alone['rps'] / alone['processes']:.0f} a core; at a point, that per core times the "
                  f"cores left to the pod (its cores less wrk's and every other process's in the same windows). The "
                  f"last concurrency is where the bound needs to be reached: {CONCURRENCIES[-1]} callers.", ""]
    lines += ["| c | system | setup | req/s | p50 ms | p99 ms | errors | mean batch | server CPU ms/req | cores: "
              "server, wrk, other | decode bound (req/s) | req/s / that | CPU ms/req by process |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for row in results["points"]:
        cores = f"{row.get('server_cores')}, {row.get('wrk_cores')}, {row.get('other_cores')}"
        roles = ", ".join(f"{role} {ms}" for role, ms in row.get("role_cpu_ms_per_request", {}).items()) or "n/a"
        lines.append(f"| {row['c']} | {row['system']} | {row['setup']} | {row['rps']} | {row['p50_ms']} | "
                     f"{row['p99_ms']} | {row['errors']} | {row['mean_batch']} | {row['cpu_ms_per_request']} | "
                     f"{cores} | {row.get('decode_bound_rps', 'n/a')} | {row.get('decode_bound_fraction', 'n/a')} | "
                     f"{roles} |")
    staged = [row for row in results["points"] if row.get("stage_ms")]
    if staged:
        lines += ["", "Where a request's time goes in our pods (means from the pod's histograms over each point, ms: "
                      "the whole time in the pod, an input's wait in the queue for a batch, a predict call; the rest of "
                      "the time in the pod is decode, encode and the hand-offs between processes):", "",
                  "| c | system | p50 at the caller | " + " | ".join(stage for stage, _ in STAGES) + " |",
                  "|---|---|---|" + "---|" * len(STAGES)]
        lines += [f"| {row['c']} | {row['system']} | {row['p50_ms']} | "
                  + " | ".join(str(row["stage_ms"].get(stage, "n/a")) for stage, _ in STAGES) + " |" for row in staged]
    lines += ["", "CUDA contexts (processes nvidia-smi lists as holding GPU memory; the goal is exactly one per pod of "
                  "ours): " + "; ".join(f"{system} {count}" for system, count in results["cuda_contexts"].items())
              + f"; {len(results.get('gpu_processes', {}))} on the GPU in all.", "",
              "Memory of each process (GPU memory from nvidia-smi; n/a where it holds none, or without a GPU):", "",
              "| system | process | peak RSS MB | GPU memory MB |", "|---|---|---|---|"]
    for system, processes in results["processes"].items():
        for proc in processes:
            gpu_mb = proc["gpu_memory_mb"] if proc["gpu_memory_mb"] is not None else "n/a"
            lines.append(f"| {system} | {proc['process']} | {proc['peak_rss_mb']} | {gpu_mb} |")
    return "\n".join(lines) + "\n"


def _settings(env: dict[str, str]) -> str:
    """PODSERVE_MAX_BATCH_SIZE=64 as max_batch_size=64, and so on."""
    return ", ".join(f"{name.removeprefix('PODSERVE_').lower()}={value}" for name, value in env.items())


if __name__ == "__main__":
    raise SystemExit(main())
