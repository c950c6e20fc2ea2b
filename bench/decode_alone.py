"""The decode bound's measure: the handler's decode and encode alone, no server, in N processes at once (issue 70).

What a pod's cores could answer if the server cost nothing beyond the work each request must have done for it (on a
GPU pod: decoding the image and encoding the answer; the model runs on the GPU). Each process imports the handler,
decodes the workload's images in turn and encodes an output for each, for a fixed time; their calls per second are
summed.
"""

from __future__ import annotations

import multiprocessing
import time
from typing import Any, Sequence


def decode_alone_rps(handler_spec: str, images: Sequence[bytes], outputs: Sequence[Any], processes: int,
                     seconds: float) -> float:
    """Requests per second `processes` processes decode and encode together, each for `seconds`, no server: each
    decodes `images` in turn and encodes `outputs` (the model's, or outputs of its shape) one per image."""
    context = multiprocessing.get_context("spawn")  # a fresh interpreter each, as a decoder process is
    with context.Pool(processes) as pool:
        counts = pool.starmap(_decode_for, [(handler_spec, list(images), list(outputs), seconds)] * processes)
    return sum(calls / elapsed for calls, elapsed in counts)


def _decode_for(handler_spec: str, images: list[bytes], outputs: list[Any], seconds: float) -> tuple[int, float]:
    from podserve.handler import Payload
    from podserve.runtime.core.startup import import_handler

    handler = import_handler(handler_spec)()
    calls, began = 0, time.perf_counter()
    while time.perf_counter() - began < seconds and calls < 10_000_000:
        for number, image in enumerate(images):
            handler.decode(Payload(image=image))
            handler.encode(outputs[number % len(outputs)])
        calls += len(images)
    return calls, time.perf_counter() - began
