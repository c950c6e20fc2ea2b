"""`make bench`: our server against the onnxruntime ceiling and the Gunicorn design, in one run.

    python -m bench.run [--quick] [--workloads fast,heavy,standin] [--decoders N] [--out bench/results]

For each workload: time the preprocessing steps, search the ceiling's configurations,
start our server (as `make serve` runs it, plus the CPU variants that justify its
defaults) and Gunicorn, then for each concurrency run closed-loop windows of every system
in turn (so that machine drift hits them all alike) until each system's last two windows
agree within 10%. The GPU stand-in (bench/standin.py) runs only our pod, in one process and
in the split layout, the same way. Every loop is bounded in count and time. Writes
latest.json and latest.md to --out.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

from bench import profile, report
from bench.ceiling import Ceiling, ServiceSteps
from bench.loadgen import LoadError, raw_wires, request_wires, v2_binary_wires, write_wires
from bench.pod_split import split_window
from bench.probes import handler_steps, preprocessing_steps
from bench.systems import (DECODE_PROCESSES, CeilingSystem, Server, ServerFailed, handler_process_peak_mb,
                           start_gunicorn, start_ours)
from bench.workloads import REPO, STANDIN, WORKLOADS, Workload

OPTIMISATIONS = REPO / "bench" / "optimisations.json"  # measured while developing; see its "how" fields
AGREE = 0.10  # two windows agree when their throughputs differ by at most 10%
MIN_WINDOWS, MAX_WINDOWS = 2, 4
MAX_WINDOW_S = 8
BUDGET_S = {"fast": 240, "heavy": 260, "standin": 40}  # measuring time per workload, start-up and search excluded
#: CPU variants of our server, run beside it to justify value.py's defaults: one instance whose batches
#: run as parallel single-threaded chunks (as value.py), against parallel single-threaded instances
#: with and without batching.
VARIANTS = {
    "ours: 2 instances, batching": {"PODSERVE_INS_NUM_PER_GPU": "2"},
    "ours: 2 instances, no batching": {"PODSERVE_INS_NUM_PER_GPU": "2", "PODSERVE_MAX_BATCH_SIZE": "1"},
}
VARIANT_CONCURRENCIES = (8, 64)
#: The system `--before` adds: our server run from the other checkout.
BEFORE = "ours: before"
#: Our server's process again, sent only raw-bytes requests, and the same images as the Open Inference Protocol's
#: binary tensors (decoded by the handler first, as a caller holding tensors would): the fast workload only.
RAW_BYTES, V2_BINARY = "ours: raw bytes", "ours: v2 binary"
PROFILE_S = 6
#: The split layout's extra window at c=64: where its CPU and a request's time go, by process and by stage.
SPLIT_WINDOW_S = 5
GIL_WINDOWS = 3  # profiled windows; the median is reported (a shared machine's noise is about +-10% per window)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.splitlines()[0])
    parser.add_argument("--workloads", default="fast,heavy,standin",
                        help="comma-separated: fast, heavy, standin (the GPU stand-in, c=64, in both layouts)")
    parser.add_argument("--out", default=str(REPO / "bench" / "results"), help="folder for latest.json/.md")
    parser.add_argument("--quick", action="store_true", help="a smoke run: one window per system, short")
    parser.add_argument("--no-variants", action="store_true", help="skip the CPU variants of our server")
    parser.add_argument("--only", default="", help="comma-separated systems to run (ours, gunicorn, ceiling); "
                                                    "default all")
    parser.add_argument("--concurrency", default="",
                        help="comma-separated concurrencies (default each workload's: fast " +
                             ",".join(map(str, WORKLOADS["fast"].concurrencies)) + ", heavy " +
                             ",".join(map(str, WORKLOADS["heavy"].concurrencies)) + ")")
    parser.add_argument("--before", type=Path, metavar="SRC",
                        help="also run our server from another checkout's src/ (e.g. `git worktree add /tmp/before "
                             "<commit>`), as the system 'ours: before' (the GPU stand-in: each layout as '<layout>: "
                             "before'), in the same interleaved windows")
    parser.add_argument("--decoders", type=int, default=0, metavar="N",
                        help="decoder processes of the split layout in the GPU stand-in's point (default: one per "
                             "core of this machine)")
    parser.add_argument("--runs", type=int, default=1, metavar="N",
                        help="measure everything N times; the targets are judged on the median of the N runs, the "
                             "tables show the last run (issue 27 asks for 3)")
    args = parser.parse_args(argv)
    args.concurrencies = tuple(int(c) for c in args.concurrency.split(",")) if args.concurrency else ()
    args.systems = set(filter(None, args.only.split(","))) or {"ours", "gunicorn", "ceiling", "variants"}
    started = time.monotonic()
    cores = len(os.sched_getaffinity(0))
    results = {"command": os.environ.get("BENCH_COMMAND", "python -m bench.run " + " ".join(argv or sys.argv[1:])),
               "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
               "machine": machine(cores), "method": report.METHOD, "workloads": {}}
    runs = []
    with tempfile.TemporaryDirectory(prefix="podserve-bench-") as scratch:
        for number in range(1, args.runs + 1):
            run = {"machine": results["machine"], "workloads": {}}
            for name in args.workloads.split(","):
                workload = WORKLOADS[name.strip()]
                if workload is STANDIN and "ours" not in args.systems:
                    continue  # its systems are two layouts of ours
                log(f"== run {number} of {args.runs}, {workload.name}: {workload.title}")
                measure = run_standin if workload is STANDIN else run_workload
                run["workloads"][workload.name] = measure(workload, cores, Path(scratch), args, number)
            runs.append(run)
    results["workloads"] = runs[-1]["workloads"]
    if len(runs) > 1:
        results["runs"] = [{"targets": report.targets(run), "host": report.host_references(run)} for run in runs]
    results["optimisations"] = json.loads(OPTIMISATIONS.read_text())
    results["wall_seconds"] = round(time.monotonic() - started, 1)
    out = Path(args.out)
    report.write(results, out, AGREE)
    log(f"wrote {out / 'latest.json'} and {out / 'latest.md'} in {results['wall_seconds']:.0f}s")
    return 0


def run_workload(workload: Workload, cores: int, scratch: Path, args, number: int = 1) -> dict:
    from podserve.runtime.core.startup import import_handler

    handler = import_handler(workload.handler)()
    concurrencies = args.concurrencies or workload.concurrencies
    images = workload.images()
    payload_inputs = [handler.decode(_payload(image)) for image in images]
    size = payload_inputs[0].shape[2], payload_inputs[0].shape[1]
    ceiling = Ceiling(str(REPO / workload.model_path), payload_inputs, cores)
    steps = preprocessing_steps(handler, images, size, ceiling.outputs(), seconds=0.3 if args.quick else 0.6)
    log("handler steps: " + "; ".join(f"{s.name} {s.us_per_call:.0f}us x{s.two_thread_speedup:.2f}" for s in steps))

    systems: list = []
    if "ceiling" in args.systems:
        ceiling.search(concurrencies, workload.ceiling_batches, seconds=0.4 if args.quick else 0.8)
        log("ceiling: " + ", ".join(f"{c.label()} {rps:.0f}/s" for c, rps in ceiling.searched.items()))
        systems.append(CeilingSystem(ceiling, workload.ceiling_batches))
        if any(name == workload.name for name, _ in report.BOUND_POINTS):
            service = ServiceSteps(images, lambda image: handler.decode(_payload(image)), handler.encode)
            systems.append(CeilingSystem(ceiling, workload.ceiling_batches, service))

    log_dir = _log_dir(args, number)
    starts = [lambda: start_ours("ours", workload, log_dir)] if "ours" in args.systems else []
    if "gunicorn" in args.systems:
        starts.append(lambda: start_gunicorn(workload, service_name(), cores, log_dir))
    if "variants" in args.systems and not (args.no_variants or args.quick):
        starts += [lambda n=name, e=env: start_ours(n, workload, log_dir, e) for name, env in VARIANTS.items()]
    if args.before:
        starts.append(lambda: start_ours(BEFORE, workload, log_dir, src=args.before.resolve()))
    servers: list[Server] = []
    try:
        start_servers(starts, servers, workload, images, scratch)
        if "ours" in args.systems and workload.name == "fast" and not args.quick:
            servers += protocol_rows(servers[0], workload, images, payload_inputs, scratch)
        points = measure_points(workload, concurrencies, systems + servers, args)
        gil = profile_ours(servers[0], scratch, workload, args) if "ours" in args.systems else {}
        peaks = {server.name: server.peak_rss_mb() for server in servers}
    finally:
        exits = {server.name: server.stop() for server in servers}
    return {**_header(workload, images, servers), "preprocessing": [s.as_dict() for s in steps],
            "ceiling_search": [{"config": c.label(), "throughput_rps": round(rps, 1)}
                               for c, rps in ceiling.searched.items()],
            "points": points, "peak_rss_mb": peaks, "exit_codes": exits, "gil_profile": gil,
            "handler_process_peak_mb": handler_process_peak_mb(workload.handler, images)}


def run_standin(workload: Workload, cores: int, scratch: Path, args, number: int = 1) -> dict:
    """The GPU stand-in (bench/standin.py): our pod in the one-process layout and in the split layout, as value.py
    sets it but for the layout, measured in the same interleaved windows, after the handler's decode and encode are
    timed alone. What each answers, against what the cores left to it allow at its own CPU per request (issue 55) and
    at the decode and encode alone (issue 70's decode bound), is report.standin_targets."""
    from podserve.runtime.core.startup import import_handler

    images = workload.images()
    handler = import_handler(workload.handler)()
    outputs = handler.predict([handler.decode(_payload(image)) for image in images])
    steps = handler_steps(handler, images, outputs, seconds=0.3 if args.quick else 0.6)
    log("handler steps: " + "; ".join(f"{s.name} {s.us_per_call:.0f}us" for s in steps))
    decoders = args.decoders or cores
    log_dir = _log_dir(args, number)
    layouts = {report.ONE_PROCESS_LAYOUT: "0", report.SPLIT_LAYOUT: str(decoders)}
    starts = [lambda n=name, count=count: start_ours(n, workload, log_dir, {DECODE_PROCESSES: count})
              for name, count in layouts.items()]
    if args.before:  # both layouts from the other checkout too, as "<layout>: before", in the same windows
        starts += [lambda n=name, count=count: start_ours(f"{n}: before", workload, log_dir, {DECODE_PROCESSES: count},
                                                          src=args.before.resolve())
                   for name, count in layouts.items()]
    servers: list[Server] = []
    try:
        start_servers(starts, servers, workload, images, scratch)
        points = measure_points(workload, args.concurrencies or workload.concurrencies, servers, args)
        split = {server.name: split_window(server, 64, SPLIT_WINDOW_S) for server in servers
                 if server.name.startswith(report.SPLIT_LAYOUT) and not args.quick}
        peaks = {server.name: server.peak_rss_mb() for server in servers}
    finally:
        exits = {server.name: server.stop() for server in servers}
    return {**_header(workload, images, servers), "kind": STANDIN.name, "decoders": decoders,
            "preprocessing": [s.as_dict() for s in steps], "points": points, "split": split, "peak_rss_mb": peaks,
            "exit_codes": exits}


def start_servers(starts: list, servers: list[Server], workload: Workload, images: list[bytes], scratch: Path) -> None:
    """Start each server in turn (one at a time: each instance times its runs at start-up, on a quiet machine), wait
    until it is ready, write its requests and warm it up; each goes into `servers` as soon as it runs, so that the
    caller stops it whatever happens next."""
    for start in starts:
        server = start()
        servers.append(server)
        server.wait_ready()
        wires = request_wires(server.path, f"127.0.0.1:{server.port}", images)
        server.request_files = write_wires(wires, scratch / workload.name / server.name)
        server.measure(8, 1)  # warm-up, not recorded


def _log_dir(args, number: int) -> Path:
    """The servers' logs, one folder per run, kept for a look afterwards (not committed): each run starts its servers
    afresh, and what one picked at start-up (its run size, say) explains a run that differs from the others."""
    log_dir = Path(args.out) / "logs" / f"run-{number}"
    log_dir.mkdir(parents=True, exist_ok=True)
    return log_dir


def _header(workload: Workload, images: list[bytes], servers: list[Server]) -> dict:
    """What every workload's results start with: its title, handler, model, requests and the servers' setups."""
    return {"title": workload.title, "handler": workload.handler, "model": workload.model_path, "images": len(images),
            "request_forms": ["JSON with base64 image", "raw bytes (application/octet-stream)"],
            "setups": {s.name: s.setup for s in servers}}


def protocol_rows(ours: Server, workload: Workload, images: list[bytes], tensors: list, scratch: Path) -> list[Server]:
    """Our server measured again with raw-bytes requests and with v2 binary tensors (same process, own requests)."""
    import copy

    import onnxruntime

    session = onnxruntime.InferenceSession(str(REPO / workload.model_path), providers=["CPUExecutionProvider"])
    host = f"127.0.0.1:{ours.port}"
    rows = []
    for name, wires in ((RAW_BYTES, raw_wires(ours.path, host, images)),
                        (V2_BINARY, v2_binary_wires(ours.path, host, ours.path.rsplit("/", 1)[1], session.get_inputs()[0].name,
                                                    session.get_outputs()[0].name, tensors))):
        row = copy.copy(ours)
        row.name = name
        row.request_files = write_wires(wires, scratch / workload.name / name.replace(" ", "-").replace(":", ""))
        row.measure(8, 1)  # warm-up, not recorded
        rows.append(row)
    return rows


def measure_points(workload: Workload, concurrencies: tuple[int, ...], systems: list, args) -> list[dict]:
    """Measure every concurrency, interleaving the systems window by window."""
    points = []
    deadline = time.monotonic() + BUDGET_S[workload.name] * (0.4 if args.quick else 1.0)
    estimate: dict[str, float] = {}  # system -> last measured throughput
    for index, concurrency in enumerate(concurrencies):
        here = [s for s in systems if measured_at(s.name, workload.name, concurrency)]
        seconds = window_seconds(workload, concurrency, [estimate.get(s.name) for s in here])
        points_left = len(concurrencies) - index
        point_deadline = time.monotonic() + (deadline - time.monotonic()) / points_left
        windows = interleave(here, concurrency, seconds, point_deadline, 1 if args.quick else MIN_WINDOWS)
        rows = [report.row(system, concurrency, windows[system.name], AGREE) for system in here]
        for row in rows:
            estimate[row["system"]] = row["throughput_rps"]
        point = {"concurrency": concurrency, "window_s": seconds, "rows": rows}
        report.add_ratios(point)
        points.append(point)
        log(f"c={concurrency:<3} " + " | ".join(f"{r['system']} {r['throughput_rps']:.0f}/s p50 {r['p50_ms']:.1f}ms "
                                                 f"p99 {r['p99_ms']:.1f}ms ({r['windows']}w)" for r in rows))
    return points


def measured_at(system: str, workload: str, concurrency: int) -> bool:
    """Whether `system` runs at this point: the variants of ours only at VARIANT_CONCURRENCIES, the service alone
    only where a target is judged against it (report.BOUND_POINTS), every other system (the GPU stand-in's layouts
    among them) everywhere."""
    if workload == STANDIN.name:
        return True
    if system == report.SERVICE_ALONE:
        return (workload, concurrency) in report.BOUND_POINTS
    if system.startswith("ours: ") and system != BEFORE:
        return concurrency in VARIANT_CONCURRENCIES
    return True


def interleave(systems: list, concurrency: int, seconds: int, deadline: float, min_windows: int) -> dict:
    """Run rounds of one window per unsettled system until each has two that agree, or bounds hit."""
    windows: dict[str, list] = {s.name: [] for s in systems}
    for round_number in range(MAX_WINDOWS):
        unsettled = [s for s in systems if len(windows[s.name]) < min_windows or
                     (min_windows > 1 and not report.settled(windows[s.name], AGREE))]
        if not unsettled or (round_number >= min_windows and time.monotonic() > deadline):
            break
        shift = round_number % len(unsettled)  # rotate who goes first, so no system always follows another
        for system in unsettled[shift:] + unsettled[:shift]:
            try:
                windows[system.name].append(system.measure(concurrency, seconds))
            except (LoadError, ServerFailed) as exc:
                log(f"{system.name} at c={concurrency}: {exc}")
                raise
    return windows


def window_seconds(workload: Workload, concurrency: int, throughputs: list[float | None]) -> int:
    """At least the workload's minimum, and long enough for ~4 round trips of the slowest system."""
    known = [t for t in throughputs if t]
    latency = max((concurrency / t for t in known), default=0.0)
    return int(min(MAX_WINDOW_S, max(workload.min_window_s, math.ceil(4 * latency))))


def profile_ours(server: Server, scratch: Path, workload: Workload, args) -> dict:
    """Extra windows of our server at concurrency 64 (not part of the table): one measuring which threads of its
    processes used the CPU and how idle the machine was, then GIL_WINDOWS under py-spy sampling each process's GIL
    holder, of which the window whose busiest GIL is the median is reported."""
    if args.quick:
        return {"skipped": "--quick"}
    import threading

    pids = server.pids()
    several = len(pids) > 1  # the split layout: each thread group is named with its process
    try:
        groups = {tid: f"{server.process_role(pid)}: {group}" if several else group
                  for pid in pids for tid, group in profile.thread_groups(pid).items()}
    except profile.ProfileUnavailable as exc:
        return {"skipped": str(exc)}

    def thread_seconds() -> dict[int, float]:
        return {tid: seconds for pid in pids for tid, seconds in profile.thread_cpu_seconds(pid).items()}

    before = thread_seconds()
    window = server.measure(64, PROFILE_S - 1)
    after = thread_seconds()
    cores: dict[str, float] = {}
    for tid, seconds in after.items():
        group = groups.get(tid, "other")
        cores[group] = cores.get(group, 0.0) + (seconds - before.get(tid, 0.0)) / window.seconds
    capacity = window.elapsed_s * window.machine_cores
    split: dict = {"cores_by_thread_group": {g: round(c, 2) for g, c in sorted(cores.items(), key=lambda x: -x[1])},
                   "machine_idle_share": round(1 - window.machine_busy_s / capacity, 3) if capacity else None,
                   "throughput_rps_unprofiled": round(window.throughput_rps, 1), "processes": len(pids)}

    profiled = []
    for number in range(GIL_WINDOWS):
        out = scratch / f"{workload.name}-gil-{number}.txt"
        result: dict = {}
        spy = threading.Thread(target=lambda: result.update(_record(server.process.pid, out)))
        spy.start()
        time.sleep(0.5)  # py-spy attaches
        window = server.measure(64, PROFILE_S - 1)
        spy.join()
        if "error" in result:
            return {**split, "skipped": result["error"]}
        one = profile.stage_split(out.read_text(), window.requests, profile.RATE, window.seconds)
        one["gil_ms_per_request_by_process"] = {
            "main" if pid is None else server.process_role(pid): ms
            for pid, ms in one.pop("gil_ms_per_request_by_pid").items()}
        one["throughput_rps_while_profiled"] = round(window.throughput_rps, 1)
        one["server_cpu_ms_per_request"] = round(window.server_cpu_s / window.requests * 1000, 3)
        profiled.append(one)
    profiled.sort(key=lambda one: one["busiest_gil_ms_per_request"])
    split.update(profiled[len(profiled) // 2])
    split["gil_ms_per_request_windows"] = [one["busiest_gil_ms_per_request"] for one in profiled]
    return split


def _record(pid: int, out: Path) -> dict:
    try:
        profile.record_gil(pid, PROFILE_S, out)
        return {}
    except profile.ProfileUnavailable as exc:
        return {"error": str(exc)}


def machine(cores: int) -> dict:
    import onnxruntime

    try:
        cpu = cpu_description(Path("/proc/cpuinfo").read_text())
    except OSError:
        cpu = platform.processor()
    memory_kb = int(next(line.split()[1] for line in Path("/proc/meminfo").read_text().splitlines()
                         if line.startswith("MemTotal")))
    load = os.getloadavg()
    return {"cpu": cpu, "cores": cores, "memory_gib": round(memory_kb / 1024 ** 2, 1), "gpu": "none",
            "os": platform.platform(), "python": platform.python_version(), "onnxruntime": onnxruntime.__version__,
            "wrk": report.wrk_version(), "load_average_at_start": [round(x, 2) for x in load]}


def cpu_description(cpuinfo: str) -> str:
    """Return the first CPU of /proc/cpuinfo as 'AMD EPYC (family 25, model 1; AVX2, no AVX-512)'.

    Machines sold under one model name differ in generation and vector units, and a run's absolute figures with
    them: a single-threaded detector run cost 14-16 ms of CPU in the committed runs (which did not record the kind)
    and 38-52 ms on a family 25, model 1 machine with AVX2 and no AVX-512, where image decoding was as much slower.
    Compare runs' absolute figures only on one kind.
    """
    first = cpuinfo.split("\n\n", 1)[0]
    fields = {key.strip(): value.strip() for key, _, value in
              (line.partition(":") for line in first.splitlines()) if key.strip()}
    flags = set(fields.get("flags", "").split())
    vectors = "AVX-512" if "avx512f" in flags else "AVX2, no AVX-512" if "avx2" in flags else "no AVX2"
    kind = ", ".join(f"{name.removeprefix('cpu ')} {fields[name]}" for name in ("cpu family", "model") if name in fields)
    return f"{fields.get('model name', platform.processor())} ({kind + '; ' if kind else ''}{vectors})"


def service_name() -> str:
    """The service's name in value.py (the path every system serves)."""
    from podserve.tooling.values import load_values

    return load_values(REPO / "value.py").serving_settings().service_name


def _payload(image: bytes):
    from podserve.handler import Payload

    return Payload(image=image)


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


if __name__ == "__main__":
    sys.exit(main())
