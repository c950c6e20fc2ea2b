"""What a change of batch size costs one onnxruntime CUDA session, per convolution-algorithm search mode.

    python -m bench.gpu_shapes [--model model/ch_ppocr_mobile_v2.0_cls_mobile.onnx] [--out bench/results]

For each `cudnn_conv_algo_search` mode, a fresh session (the platform's other CUDA options)
first runs every batch size 1..16 once, then times four sequences of runs by the wall clock
and by the calling thread's CPU clock: one size repeated (1, then 16), two sizes alternating
(1, 2), and sizes drawn at random from 1..16 (a fixed seed), the mix a dynamic batcher
forms, and at random from a few buckets (1, 2, 4, 8, 16). If the random and alternating runs cost what the repeated ones do, a session keeps
what it set up for each shape; if they cost far more, it sets up again whenever the shape
differs from its last run's, and a batcher on a GPU should run one shape. Writes
gpu-shapes.json and gpu-shapes.md to --out. Needs onnxruntime with the CUDA provider (a GPU);
without one it runs on the CPU provider and says so.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import time

import numpy as np

from bench.cuda_session import cuda_offered, open_session, report_header, write_report
from bench.workloads import REPO

MODES = ("HEURISTIC", "DEFAULT", "EXHAUSTIVE")
SIZES = range(1, 17)


def timed_runs(session, name: str, item: np.ndarray, sizes: list[int]) -> dict:
    """Run the session once per size in `sizes`; return median and worst wall and CPU milliseconds."""
    walls, cpus = [], []
    for size in sizes:
        feed = {name: np.repeat(item, size, axis=0)}
        wall, cpu = time.perf_counter(), time.thread_time()
        session.run(None, feed)
        walls.append(1000 * (time.perf_counter() - wall))
        cpus.append(1000 * (time.thread_time() - cpu))
    return {"runs": len(sizes), "wall_ms_median": round(statistics.median(walls), 3),
            "wall_ms_max": round(max(walls), 3), "cpu_ms_median": round(statistics.median(cpus), 3)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.gpu_shapes", description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=str(REPO / "model" / "ch_ppocr_mobile_v2.0_cls_mobile.onnx"))
    parser.add_argument("--shape", default="3,48,192", help="one input's shape, no batch axis (the example's)")
    parser.add_argument("--modes", default=",".join(MODES), help="cudnn_conv_algo_search modes to measure")
    parser.add_argument("--out", default=str(REPO / "bench" / "results"))
    args = parser.parse_args(argv)
    on_gpu = cuda_offered()
    rng = random.Random(7)
    sequences = {"repeat 1": [1] * 40, "repeat 16": [16] * 40, "alternate 1,2": [1, 2] * 20,
                 "random 1..16": [rng.choice(SIZES) for _ in range(40)],
                 "random of 1,2,4,8,16": [rng.choice((1, 2, 4, 8, 16)) for _ in range(40)]}
    results = {**report_header(args.model, on_gpu), "modes": {}}
    for mode in args.modes.split(","):
        began = time.perf_counter()
        session, on_gpu = open_session(args.model, cudnn_conv_algo_search=mode)
        name = session.get_inputs()[0].name
        item = np.random.default_rng(0).random((1, *map(int, args.shape.split(","))), dtype=np.float32)
        first = timed_runs(session, name, item, list(SIZES))  # every size once: its first run
        row = {"load_and_first_runs_s": round(time.perf_counter() - began, 2), "first run of each size": first}
        for label, sizes in sequences.items():
            row[label] = timed_runs(session, name, item, sizes)
        results["modes"][mode] = row
        print(mode, json.dumps(row), flush=True)
        del session
    write_report(args.out, "gpu-shapes", results, "One CUDA session: what a change of batch size costs", "",
                 ("mode", "sequence", "runs", "wall ms median", "wall ms max", "CPU ms median"),
                 [(mode, label, stats["runs"], stats["wall_ms_median"], stats["wall_ms_max"], stats["cpu_ms_median"])
                  for mode, row in results["modes"].items() for label, stats in row.items() if isinstance(stats, dict)])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
