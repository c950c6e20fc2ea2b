"""Pad batches to a few fixed sizes, or run them at their own size? The CPU side of the question, measured.

    python -m bench.padding

On a GPU a new batch shape costs a slow first run, so a batcher either warms up every size
it can form or pads to buckets. Here: the CPU time per input of the example handler's
`predict` at every batch size from 1 to 16 (value.py's max_batch_size), then the mean over
sizes 1-16 taken as equally likely, run exactly or padded up to 1, 2, 4, 8, 16; and how long
warming up every size takes. Prints one line per figure.
"""

from __future__ import annotations

import resource
import time

from podserve.handler import Device
from podserve.runtime.core.startup import import_handler

from bench.workloads import FAST, REPO

BUCKETS = (1, 2, 4, 8, 16)


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def main() -> None:
    handler = import_handler(FAST.handler)()
    handler.load(str(REPO / FAST.model_path), Device("cpu", 0, cpu_threads=2))
    item = handler.warmup_inputs()[0]
    started = time.perf_counter()
    for size in range(1, BUCKETS[-1] + 1):
        handler.predict([item] * size)
    print(f"warm-up of every batch size 1..{BUCKETS[-1]}: {time.perf_counter() - started:.2f} s")
    cost: dict[int, float] = {}
    for _ in range(3):
        for size in range(1, BUCKETS[-1] + 1):
            before, runs = cpu_seconds(), 30
            for _ in range(runs):
                handler.predict([item] * size)
            cost[size] = min(cost.get(size, float("inf")), (cpu_seconds() - before) / runs)
    sizes = range(1, BUCKETS[-1] + 1)
    exact = sum(cost[n] for n in sizes) / sum(sizes)
    padded = sum(cost[next(b for b in BUCKETS if b >= n)] for n in sizes) / sum(sizes)
    print("CPU ms per batch, by size: " + ", ".join(f"{n}: {cost[n] * 1000:.2f}" for n in sizes))
    print(f"sizes 1..{BUCKETS[-1]} equally likely: exact size {exact * 1000:.3f} ms CPU per input; padded to "
          f"{BUCKETS}: {padded * 1000:.3f} ms ({padded / exact:.2f}x)")


if __name__ == "__main__":
    main()
