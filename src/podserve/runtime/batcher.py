"""Dynamic batching for one model instance: a bounded queue and the thread that drains it.

Requests (`WorkItem`s) wait in the queue; the instance's thread takes up to
`max_batch_size` of them, waiting at most `max_batch_delay` after the oldest one arrived
(and only while more requests are on their way),
groups them by the handler's `batch_key` (inputs of different shapes are never stacked),
runs one `predict` per group and hands every item its output or its error. Nothing here
knows about HTTP: an HTTP view, a Kafka consumer or a test can drive it the same way.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from typing import Any, Callable, Hashable

from podserve.errors import DeadlineExceeded, HandlerFailed, Overloaded, ServingError
from podserve.handler import Handler

log = logging.getLogger(__name__)

QUEUED, RUNNING, DONE = "queued", "running", "done"


class WorkItem:
    """One input waiting for its output; `wait` blocks until it has one or its deadline passes."""

    __slots__ = ("input", "key", "deadline", "enqueued_at", "state", "output", "error", "batch_size",
                 "queue_seconds", "inference_seconds", "worker", "_done")

    def __init__(self, input: Any, key: Hashable, deadline: float):
        self.input = input
        self.key = key
        self.deadline = deadline  # time.monotonic() value
        self.enqueued_at = 0.0
        self.state = QUEUED
        self.output: Any = None
        self.error: ServingError | None = None
        self.batch_size = 0
        self.queue_seconds = 0.0
        self.inference_seconds = 0.0
        self.worker: BatchWorker | None = None
        self._done = threading.Event()

    def finish(self, output: Any = None, error: ServingError | None = None) -> None:
        self.output, self.error, self.state = output, error, DONE
        self._done.set()

    def wait(self) -> Any:
        """Return the output; raise its error, or DeadlineExceeded if it was still queued at the deadline."""
        if not self._done.wait(max(0.0, self.deadline - time.monotonic())):
            if self.worker is not None and self.worker.withdraw(self):
                raise self.error
            self._done.wait()  # already running: a batch is never abandoned half-way
        if self.error is not None:
            raise self.error
        return self.output


class BatchWorker:
    """The queue and batch thread of one model instance."""

    def __init__(self, name: str, handler: Handler, *, max_batch_size: int, max_batch_delay: float,
                 capacity: int, on_batch: Callable[["BatchWorker", int, float, list[WorkItem]], None] | None = None,
                 more_coming: Callable[[], bool] = lambda: True):
        self.name = name
        self._more_coming = more_coming
        self.handler = handler
        self.max_batch_size = max_batch_size
        self.max_batch_delay = max_batch_delay
        self.capacity = capacity
        self._on_batch = on_batch
        self._queue: deque[WorkItem] = deque()
        self._cond = threading.Condition()
        self._stopping = False
        self.running = 0  # items in the batch being predicted
        self.batch_started: float | None = None  # monotonic start of the running batch
        self._thread = threading.Thread(target=self._loop, name=f"batch-{name}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    @property
    def depth(self) -> int:
        return len(self._queue)

    @property
    def load(self) -> int:
        """Items queued or running: how busy this instance is (read without the lock)."""
        return len(self._queue) + self.running

    def has_room(self) -> bool:
        return len(self._queue) < self.capacity

    def submit(self, item: WorkItem) -> None:
        """Queue `item`, or raise Overloaded at once when the queue is full."""
        with self._cond:
            if self._stopping:
                raise Overloaded("this instance is stopping", headers={"Retry-After": "1"})
            if len(self._queue) >= self.capacity:
                raise Overloaded(f"the queue of instance {self.name} is full ({self.capacity} requests)",
                                 headers={"Retry-After": "1"})
            item.worker = self
            item.enqueued_at = time.monotonic()
            self._queue.append(item)
            self._cond.notify()

    def withdraw(self, item: WorkItem) -> bool:
        """Take `item` out of the queue if it has not started; return whether it was withdrawn."""
        with self._cond:
            if item.state != QUEUED:
                return False
            self._queue.remove(item)
            item.finish(error=_expired())
            return True

    def is_alive(self, stuck_after: float) -> bool:
        """False when the batch thread died or one batch has run longer than `stuck_after` seconds."""
        started = self.batch_started
        stuck = started is not None and time.monotonic() - started > stuck_after
        return self._thread.is_alive() and not stuck

    def stop(self, timeout: float | None = None) -> None:
        """Finish what is queued, then end the thread."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        self._thread.join(timeout)

    def _loop(self) -> None:
        while True:
            batch, expired = self._next_batch()
            for item in expired:
                item.finish(error=_expired())
            if batch is None:
                return
            try:
                self._run(batch)
            finally:
                self.running = 0
                self.batch_started = None

    def _next_batch(self) -> tuple[list[WorkItem] | None, list[WorkItem]]:
        """Wait for work; return (items to run, items whose deadline passed), or (None, []) to stop."""
        with self._cond:
            while not self._queue:
                if self._stopping:
                    return None, []
                self._cond.wait()
            fill_by = self._queue[0].enqueued_at + self.max_batch_delay
            # Waiting only pays while other requests are on their way (being read or decoded);
            # a lone request runs at once instead of sitting out the delay.
            while len(self._queue) < self.max_batch_size and not self._stopping and self._more_coming():
                remaining = fill_by - time.monotonic()
                if remaining <= 0:
                    break
                self._cond.wait(remaining)
            now = time.monotonic()
            batch: list[WorkItem] = []
            expired: list[WorkItem] = []
            while self._queue and len(batch) < self.max_batch_size:
                item = self._queue.popleft()
                if item.deadline <= now:
                    item.state = DONE
                    expired.append(item)
                    continue
                item.state = RUNNING
                item.queue_seconds = now - item.enqueued_at
                batch.append(item)
            self.running = len(batch)
            self.batch_started = now
            return batch, expired

    def _run(self, batch: list[WorkItem]) -> None:
        groups: dict[Hashable, list[WorkItem]] = {}
        for item in batch:
            groups.setdefault(item.key, []).append(item)
        for group in groups.values():
            started = time.perf_counter()
            try:
                outputs = self.handler.predict([item.input for item in group])
                check_outputs(self.handler, outputs, len(group))
            except Exception as exc:  # the handler's failure must not kill the batch thread
                log.exception("predict failed on instance %s for a batch of %d", self.name, len(group))
                error = exc if isinstance(exc, HandlerFailed) else HandlerFailed(
                    f"{type(self.handler).__name__}.predict failed: {type(exc).__name__}; see the server log")
                for item in group:
                    item.finish(error=error)
                continue
            seconds = time.perf_counter() - started
            for item, output in zip(group, outputs):
                item.batch_size = len(group)
                item.inference_seconds = seconds
                item.finish(output=output)
            if self._on_batch is not None:
                self._on_batch(self, len(group), seconds, group)


def _expired() -> DeadlineExceeded:
    return DeadlineExceeded("the request's deadline passed while it was queued; it was not run")


def check_outputs(handler: Handler, outputs: Any, expected: int) -> None:
    """Raise HandlerFailed, naming the handler, unless `outputs` holds one output per input."""
    try:
        count = len(outputs)
    except TypeError:
        raise HandlerFailed(f"{type(handler).__name__}.predict returned {type(outputs).__name__}; it must return "
                            f"a sequence with one output per input") from None
    if count != expected:
        raise HandlerFailed(f"{type(handler).__name__}.predict returned {count} outputs for a batch of {expected}; "
                            f"it must return one output per input, in order")
