"""A handler for the poison tests: its predict fails a whole batch when one input is negative.

`decode` takes `data`, a list of numbers, and raises ValueError (not InvalidInput: a handler
bug) on anything else; `predict` raises RuntimeError for the batch if any input's first
number is negative; `encode` returns the sum. It needs no model.
"""

import numpy as np

from podserve import Handler


class Fussy(Handler):
    def decode(self, payload):
        return np.asarray([float(x) for x in payload.data], dtype=np.float64)  # "boom" -> ValueError

    def predict(self, batch):
        if any(item[0] < 0 for item in batch):
            raise RuntimeError("a negative input spoils the batch")
        return [float(item.sum()) for item in batch]

    def encode(self, output):
        return output


class KeyFails(Fussy):
    """Fussy whose batch_key, which the runtime calls outside the verbs, raises on an input whose first number is 13."""

    def batch_key(self, model_input):
        if model_input[0] == 13:
            raise RuntimeError("batch_key cannot key 13")
        return super().batch_key(model_input)
