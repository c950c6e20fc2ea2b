"""What one request's preprocessing and postprocessing cost, step by step, and which steps release the GIL.

Each step runs alone in a loop, first in one thread, then in two threads at once. On two
free cores, a step that releases the GIL runs about twice as fast in two threads (speedup
near 2.0); one that holds it cannot go faster than one thread (speedup near 1.0). That is
what decides whether a step overlaps with inference and with other requests in our one
process.
"""

from __future__ import annotations

import base64
import json
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np
from PIL import Image

from podserve.handler import Handler, Payload
from podserve.images import decode_image
from podserve.runtime.protocols import api

MAX_PIXELS = 25_000_000
DECODE_STEP = "handler.decode (all of the above but the wire)"
ENCODE_STEP = "handler.encode (the model's output to the answer)"


@dataclass(frozen=True)
class Step:
    name: str
    us_per_call: float  # one thread
    two_thread_speedup: float  # calls per second in two threads / in one

    def as_dict(self) -> dict[str, Any]:
        return {"step": self.name, "us_per_call": round(self.us_per_call, 1),
                "two_thread_speedup": round(self.two_thread_speedup, 2)}


def time_step(name: str, calls: Sequence[Callable[[], Any]], seconds: float = 0.6) -> Step:
    """Time `calls` (cycled) in one thread, then in two; see the module docstring."""
    for call in calls:
        call()
    one = _calls_per_second(calls, seconds, threads=1)
    two = _calls_per_second(calls, seconds, threads=2)
    return Step(name, 1e6 / one, two / one)


def preprocessing_steps(handler: Handler, images: Sequence[bytes], size: tuple[int, int],
                        outputs: Sequence[Any], seconds: float = 0.6) -> list[Step]:
    """Time each stage a request's input goes through before inference, on the workload's images, and the
    handler's encode on the model's `outputs` for them (the service's postprocessing, which every server runs).

    `size` is the (width, height) the handler resizes to; the resize and normalise steps
    here are the generic ones (PIL bilinear; numpy BGR, CHW, scale to float32).
    """
    bodies = [json.dumps({"postid": "1", "image": base64.b64encode(i).decode()}).encode() for i in images]
    decoded = [decode_image(i, max_pixels=MAX_PIXELS) for i in images]
    resized = [np.asarray(d.resize(size, Image.BILINEAR)) for d in decoded]
    return [
        time_step("parse JSON + base64 (wire)", [lambda b=b: api.parse_json_request(b, MAX_PIXELS) for b in bodies],
                  seconds),
        time_step("decode image (Pillow)", [lambda i=i: decode_image(i, max_pixels=MAX_PIXELS) for i in images],
                  seconds),
        time_step("resize (Pillow bilinear)", [lambda d=d: d.resize(size, Image.BILINEAR) for d in decoded], seconds),
        time_step("normalise (numpy)", [lambda r=r: _normalise(r) for r in resized], seconds),
    ] + handler_steps(handler, images, outputs, seconds)


def handler_steps(handler: Handler, images: Sequence[bytes], outputs: Sequence[Any],
                  seconds: float = 0.6) -> list[Step]:
    """Time the handler's decode of each of `images` and its encode of each of `outputs`, alone: what a request must
    cost with no server at all (beside inference)."""
    payloads = [Payload(image=i, max_image_pixels=MAX_PIXELS) for i in images]
    return [time_step(DECODE_STEP, [lambda p=p: handler.decode(p) for p in payloads], seconds),
            time_step(ENCODE_STEP, [lambda o=o: handler.encode(o) for o in outputs], seconds)]


def _normalise(pixels: np.ndarray) -> np.ndarray:
    """BGR, channels first, to float32 in [-1, 1]: made contiguous while uint8, then scaled in place."""
    item = np.ascontiguousarray(pixels[:, :, ::-1].transpose(2, 0, 1)).astype(np.float32)
    item *= 1 / 127.5
    item -= 1.0
    return item


def _calls_per_second(calls: Sequence[Callable[[], Any]], seconds: float, threads: int) -> float:
    counts = [0] * threads
    barrier = threading.Barrier(threads + 1)
    stop_at = [0.0]

    def loop(index: int) -> None:
        barrier.wait()
        done = 0
        while time.perf_counter() < stop_at[0] and done < 1_000_000:
            for call in calls:
                call()
            done += len(calls)
        counts[index] = done

    workers = [threading.Thread(target=loop, args=(i,)) for i in range(threads)]
    for worker in workers:
        worker.start()
    began = time.perf_counter()
    stop_at[0] = began + seconds
    barrier.wait()
    for worker in workers:
        worker.join()
    return sum(counts) / (time.perf_counter() - began)
