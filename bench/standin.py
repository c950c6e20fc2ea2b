"""A GPU stand-in: the example's real image decoding and encoding around a predict that only waits, as a GPU call does.

On a GPU the call that runs a batch costs about the same whatever the batch (the example: 2.4-2.7 ms for 64 on an
H100 or H200) and the calling thread holds neither the GIL nor a core while the device works. `GpuStandIn.predict`
sleeps PREDICT_SECONDS per call, whatever the batch (time.sleep releases the GIL and the core), and returns one
output of the model's shape per input. So on a machine without a GPU, what a pod answers is bounded by its CPU side
alone (HTTP, the handler's decode and encode, hand-offs between threads and processes), as on a GPU machine.

To the batcher it is a GPU instance: no CPU runs (`run_size` None), one batch at a time (`concurrent_batches` 1),
batches of up to max_batch_size, and the warm-up's timed calls show the batch policy a fixed cost per call and none
per input, so it forms full batches (runtime/batching/batch_policy.py).
"""

from __future__ import annotations

import time
from typing import Any, Sequence

import numpy as np

from podserve.handler import Device
from server import TextDirection

#: What one predict call costs, whatever its batch: about what the example's batch of 64 takes on an H100.
PREDICT_SECONDS = 0.002
#: The model's output for one input: scores of "upright" and "upside down" (the classifier's output is [N, 2]).
OUTPUT = np.array([0.9, 0.1], dtype=np.float32)


class GpuStandIn(TextDirection):
    """The example's decode and encode (server.TextDirection); a predict that waits PREDICT_SECONDS per call."""

    def load(self, model_path: str, device: Device) -> None:
        self.provider = f"GPU stand-in ({PREDICT_SECONDS * 1000:g} ms a call, time.sleep)"

    def predict(self, batch: Sequence[Any]) -> list[np.ndarray]:
        time.sleep(PREDICT_SECONDS)
        return [OUTPUT.copy() for _ in batch]

    def warmup_inputs(self) -> list[np.ndarray]:
        return [np.zeros(self.input_shape, dtype=np.float32)]
