"""What a padded GPU run costs the thread that calls it while other threads want the GIL or the cores.

    python -m bench.gpu_lane [--model model/ch_ppocr_mobile_v2.0_cls_mobile.onnx] [--shape 3,48,192]
                             [--size 16] [--out bench/results]

One CUDA session (the platform's options) runs batches of `--size` inputs, one shape, as a GPU
instance's lane does, timed by the wall clock: alone; beside 4 threads running pure Python (they
hold the GIL, as a request thread's parsing and encoding does); beside 4 threads in numpy
(they release it and take cores, as decoding does). Each with `session.run` and with IO binding
(the input copied in by the binding, the output copied back after). If a run beside the
GIL-holding threads costs far more than alone, the lane waits for the GIL, not for the GPU.
Writes gpu-lane.json and gpu-lane.md to --out; without CUDA it runs on the CPU provider and says so.
"""

from __future__ import annotations

import argparse
import json
import statistics
import threading
import time

import numpy as np

from bench.cuda_session import open_session, report_header, write_report
from bench.workloads import REPO

RUNS = 200
NEIGHBOURS = 4


def python_work(stop: threading.Event) -> None:
    while not stop.is_set():
        sum(i * i for i in range(2000))


def numpy_work(stop: threading.Event) -> None:
    a = np.random.default_rng(1).random((256, 256))
    while not stop.is_set():
        a @ a


def timed(run, runs: int = RUNS) -> dict:
    walls = []
    for _ in range(runs):
        began = time.perf_counter()
        run()
        walls.append(1000 * (time.perf_counter() - began))
    walls.sort()
    return {"median_ms": round(statistics.median(walls), 3), "p90_ms": round(walls[int(0.9 * len(walls))], 3)}


def main(argv: list[str] | None = None) -> int:

    parser = argparse.ArgumentParser(prog="python -m bench.gpu_lane", description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=str(REPO / "model" / "ch_ppocr_mobile_v2.0_cls_mobile.onnx"))
    parser.add_argument("--shape", default="3,48,192", help="one input's shape, no batch axis (the example's)")
    parser.add_argument("--size", type=int, default=16, help="the padded batch size")
    parser.add_argument("--out", default=str(REPO / "bench" / "results"))
    args = parser.parse_args(argv)
    session, on_gpu = open_session(args.model)
    name, output = session.get_inputs()[0].name, session.get_outputs()[0].name
    batch = np.random.default_rng(0).random((args.size, *map(int, args.shape.split(","))), dtype=np.float32)

    def plain():
        session.run([output], {name: batch})

    def bound():
        binding = session.io_binding()
        binding.bind_cpu_input(name, batch)
        binding.bind_output(output, "cuda" if on_gpu else "cpu")
        session.run_with_iobinding(binding)
        binding.copy_outputs_to_cpu()

    for _ in range(20):
        plain(), bound()
    results = {**report_header(args.model, on_gpu), "size": args.size, "rows": []}
    for neighbours, work in (("none", None), (f"{NEIGHBOURS} threads in pure Python (hold the GIL)", python_work),
                             (f"{NEIGHBOURS} threads in numpy (release it)", numpy_work)):
        stop = threading.Event()
        threads = [threading.Thread(target=work, args=(stop,), daemon=True) for _ in range(NEIGHBOURS if work else 0)]
        for thread in threads:
            thread.start()
        try:
            for label, run in (("session.run", plain), ("IO binding", bound)):
                row = {"neighbours": neighbours, "call": label, **timed(run)}
                results["rows"].append(row)
                print(json.dumps(row), flush=True)
        finally:
            stop.set()
            for thread in threads:
                thread.join()
    write_report(args.out, "gpu-lane", results, "A padded GPU run beside threads that want the GIL or the cores",
                 f"runs of {args.size}, {RUNS} per row; ", ("neighbours", "call", "median ms", "p90 ms"),
                 [(r["neighbours"], r["call"], r["median_ms"], r["p90_ms"]) for r in results["rows"]])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
