"""The heavy workload's handler: PP-OCRv6's small text detector at a fixed 320x320 input.

A benchmark fixture, not a service: it exists so that the benchmark can show the server
on a model where inference dominates. `make bench` fetches the model into model/
(`python -m podserve.tooling.example_models model det`).
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from podserve import OnnxHandler, Payload

SIDE = 320
# PaddleOCR's detector normalisation (ImageNet mean and std), on pixels scaled to [0, 1], BGR.
MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)
SCALE = (1 / (255.0 * STD)).reshape(3, 1, 1)
SHIFT = (MEAN / STD).reshape(3, 1, 1)
THRESHOLD = 0.3  # probability above which a pixel counts as text


class TextDetector(OnnxHandler):
    """Find where the text is: resize to 320x320, run the detector, answer the text area's box."""

    input_shape = (3, SIDE, SIDE)

    def decode(self, payload: Payload) -> np.ndarray:
        image = payload.open_image(mode="RGB", draft_size=(SIDE, SIDE))
        if image.size != (SIDE, SIDE):
            image = image.resize((SIDE, SIDE), Image.BILINEAR)
        # BGR (the model was trained on OpenCV's order), channels first. Made contiguous while still
        # uint8: numpy's arithmetic on the strided view is ~10x slower than on a contiguous copy.
        chw = np.ascontiguousarray(np.asarray(image)[:, :, ::-1].transpose(2, 0, 1))
        item = chw.astype(np.float32)
        item *= SCALE
        item -= SHIFT
        return item

    def encode(self, probabilities: np.ndarray) -> dict:
        text = probabilities[0] > THRESHOLD
        rows, columns = np.flatnonzero(text.any(axis=1)), np.flatnonzero(text.any(axis=0))
        box = [int(columns[0]), int(rows[0]), int(columns[-1]) + 1, int(rows[-1]) + 1] if rows.size else None
        return {"text_pixels": int(text.sum()), "box": box}
