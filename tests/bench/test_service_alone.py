"""The service alone: the ceiling's loop with the handler's decode and encode around inference (a real ONNX model)."""

from __future__ import annotations

import threading

import numpy as np

from bench.ceiling import Ceiling, Config, ServiceSteps


def test_every_batch_is_decoded_from_the_images_in_turn_and_every_output_encoded(affine_model):
    images = [bytes([value]) * 4 for value in (1, 2, 3)]  # decoded: a row of four copies of the byte's value
    decoded, encoded, lock = [], [], threading.Lock()

    def decode(image: bytes) -> np.ndarray:
        with lock:
            decoded.append(image[0])
        return np.full(4, image[0], dtype=np.float32)

    def encode(output: np.ndarray) -> None:
        with lock:
            encoded.append(output.tolist())

    ceiling = Ceiling(str(affine_model), [np.zeros(4, dtype=np.float32)], cores=2)
    window = ceiling.run(Config(sessions=2, threads=1, batch=3), seconds=5, max_batches=4,
                         steps=ServiceSteps(images, decode, encode))

    assert window.requests == window.batch_items == 2 * 4 * 3  # two sessions, 4 batches of 3 each
    assert sorted(decoded) == sorted([1, 2, 3] * 8)  # each image as often as the others: taken in turn
    # y = 2x + 1 of the decoded inputs, not of the ceiling's own (zeros, which would give 1.0)
    assert sorted(encoded) == sorted([[2.0 * value + 1] * 4 for value in [1, 2, 3] * 8])
    assert window.server_cpu_s > 0


def test_without_steps_the_ceiling_runs_its_own_inputs_and_decodes_nothing(affine_model):
    ceiling = Ceiling(str(affine_model), [np.ones(4, dtype=np.float32)], cores=2)
    window = ceiling.run(Config(sessions=1, threads=1, batch=2), seconds=5, max_batches=3)
    assert window.requests == 6 and window.batches == 3
