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
