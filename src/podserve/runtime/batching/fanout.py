"""One request, N model inputs: their trip through the batcher and their outputs gathered back in order.

An Open Inference Protocol request of N rows (runtime/protocols/v2_route.py) and a video of N sampled
frames (runtime/protocols/video_route.py) each become N inputs of the same batcher as images, sharing
batches with every other request's. Before they are submitted the request takes its N places
against the pod's limit (`ServiceRoute.hold_places`, the second admission step), so a pod never
holds more inputs than `queue_size` per instance, whatever shape they came in.
"""

from __future__ import annotations

import threading
from typing import Any, Callable, Hashable, Sequence

from podserve.runtime.batching.batcher import WorkItem


class FanOut:
    """The N inputs of one request: submit them, then `add` each finished item until every output is in."""

    __slots__ = ("outputs", "done", "_index", "_items", "_lock")

    def __init__(self, count: int):
        self.outputs: list[Any] = [None] * count
        self.done = 0
        self._index: dict[int, int] = {}  # id(WorkItem) -> its input's place among the N
        self._items: list[WorkItem] = []  # the submitted ones, for `withdraw`
        self._lock = threading.Lock()

    def submit(self, pool, inputs: Sequence[Any], keys: Sequence[Hashable], deadline: float,
               on_done: Callable[[list[WorkItem]], None], context: Any) -> None:
        """Queue every input (raises Overloaded when the queues are full); the batch threads may start on the first
        before the last is queued, and count the request as still coming until then."""
        with self._lock, pool.decoding() as incoming:  # `add` waits until every item's place is known
            last = len(inputs) - 1
            for index, (model_input, key) in enumerate(zip(inputs, keys)):
                item = pool.submit(model_input, key, deadline, incoming if index == last else None,
                                   on_done=on_done, context=context)
                self._index[id(item)] = index
                self._items.append(item)

    def withdraw(self, error: Any = None) -> None:
        """Take every input still queued out of its queue, each finished with `error` (None: the batcher's deadline
        error): the request's deadline passed, or its caller left. Inputs already in a batch run to their end."""
        with self._lock:
            items = list(self._items)
        for item in items:
            if item.worker is not None:
                item.worker.withdraw(item, error)

    def release(self) -> None:
        """Forget the submitted inputs (the request is answered): each refers to the request, and memory stays flat
        only without such cycles."""
        with self._lock:
            self._items.clear()

    def add(self, item: WorkItem) -> bool:
        """Record a finished item's output in its place; True once every output is in."""
        with self._lock:
            index = self._index.pop(id(item))
            self.outputs[index] = item.output
            self.done += 1
            return self.done == len(self.outputs)
