"""A handler for the offline context test: `encode` needs what `decode` knew about each message (WithContext).

`decode` takes `data`, a list of numbers, and keeps the message's postid and length as the context;
`predict` sums each input (no model); `encode` answers the sum with that context. It needs no model.
"""

import numpy as np

from podserve import Handler, WithContext


class Summer(Handler):
    def decode(self, payload):
        values = np.asarray(payload.data, dtype=np.float64)
        return WithContext(values, {"postid": payload.postid, "count": len(values)})

    def predict(self, batch):
        return [float(item.sum()) for item in batch]

    def encode(self, total, context):
        return {"sum": total, **context}
