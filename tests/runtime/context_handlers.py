"""A handler whose `encode` needs what `decode` knew about the request: the per-request context (WithContext)."""

from __future__ import annotations

import numpy as np

from podserve import InvalidInput, OnnxHandler, Payload, WithContext


class ScaledAffine(OnnxHandler):
    """y = 2x + 1 over 4 numbers, run on the numbers scaled to [-1, 1]; encode scales the answer back.

    The scale and the request's postid travel in the context, so a batch that mixes requests shows whether
    each answer got its own request's context.
    """

    input_shape = (4,)

    def decode(self, payload: Payload) -> WithContext:
        data = payload.data
        if not isinstance(data, list) or len(data) != 4:
            raise InvalidInput("'data' must be a list of 4 numbers", field="data")
        values = np.asarray(data, dtype=np.float32)
        scale = float(np.abs(values).max()) or 1.0
        return WithContext(values / scale, {"scale": scale, "postid": payload.postid})

    def encode(self, output: np.ndarray, context: dict) -> dict:
        # The model computed 2x/s + 1; undo the scaling: 2x + 1 = (y - 1) * s + 1.
        return {"y": [round(float(v), 3) for v in (output - 1.0) * context["scale"] + 1.0],
                "postid": context["postid"]}

    def warmup_inputs(self) -> list:
        return [self.decode(Payload(data=[1.0, 2.0, 3.0, 4.0]))]  # what decode makes, context included
