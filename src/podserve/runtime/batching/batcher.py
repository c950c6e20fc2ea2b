"""Dynamic batching for one model instance: a bounded queue and the thread that drains it.

Requests (`WorkItem`s) wait in the queue; the instance's thread takes up to
`max_batch_size` of them (on the CPU a run or a few: `largest_batch`; where several lanes run
calls at once, a second call starts only once a call's worth is queued or a busy lane would not
be free in time, and takes the items it would finish before any other lane: `_share`),
waiting at most `max_batch_delay` after the oldest one arrived (and only while more requests
are on their way, and while a fuller batch would cost less per input: runtime/batching/batch_policy.py),
groups them by the handler's `batch_key` (inputs of different shapes are never stacked),
runs one `predict` per group and hands every item its output or its error. Nothing here
knows about HTTP: an HTTP view, a Kafka consumer or a test can drive it the same way.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import deque
from typing import Any, Callable, Hashable

from podserve.errors import DeadlineExceeded, HandlerFailed, Overloaded, ServingError
from podserve.handler import Handler
from podserve.runtime.batching.batch_policy import BatchCost
from podserve.runtime.core.lifecycle import join_by

log = logging.getLogger(__name__)

QUEUED, RUNNING, DONE = "queued", "running", "done"
#: How much lower than the rest of the process a CPU instance's batch threads run (added to their nice value): the
#: request threads and the event loop, which read, decode and answer what the lanes run, get a core as soon as they
#: wake instead of waiting for a lane's time slice; the lanes then find fuller queues (bench/optimisations.json).
CPU_LANE_NICENESS = 5


class AllOutputs(tuple):
    """A batch key asking for every model output (the handler's `predict_all_outputs`): `AllOutputs((key,))`.
    Items keyed so are never batched with those that `predict` serves."""


class WorkItem:
    """One input waiting for its output: `wait` blocks until it has one or its deadline passes; or, given
    `on_done`, nothing blocks and `on_done([items])` is called once it is done, from the batch thread with
    every item of a batch that shares that callback (one hand-off per batch, not per item)."""

    __slots__ = ("input", "key", "deadline", "enqueued_at", "state", "output", "error", "batch_size",
                 "queue_seconds", "fill_seconds", "inference_seconds", "worker", "on_done", "context", "_done")

    def __init__(self, input: Any, key: Hashable, deadline: float,
                 on_done: Callable[[list["WorkItem"]], None] | None = None, context: Any = None):
        self.input = input
        self.key = key
        self.deadline = deadline  # time.monotonic() value
        self.enqueued_at = 0.0
        self.state = QUEUED
        self.output: Any = None
        self.error: ServingError | None = None
        self.batch_size = 0
        self.queue_seconds = 0.0
        self.fill_seconds = 0.0  # of queue_seconds, the time a free lane held the batch open for more
        self.inference_seconds = 0.0
        self.worker: BatchWorker | None = None
        self.on_done = on_done
        self.context = context  # whoever submitted it may keep its own state here
        self._done = threading.Event() if on_done is None else None

    def finish(self, output: Any = None, error: ServingError | None = None) -> None:
        finish_all([self], [output], error)

    def wait(self) -> Any:
        """Return the output; raise its error, or DeadlineExceeded if it was still queued at the deadline (only for
        an item made without `on_done`)."""
        if not self._done.wait(max(0.0, self.deadline - time.monotonic())):
            if self.worker is not None and self.worker.withdraw(self):
                raise self.error
            self._done.wait()  # already running: a batch is never abandoned half-way
        if self.error is not None:
            raise self.error
        return self.output


def finish_all(items: list[WorkItem], outputs: list[Any] | None = None, error: ServingError | None = None) -> None:
    """Finish every item of a batch (with its output, or all with `error`), calling each `on_done` once."""
    callbacks: dict[Any, list[WorkItem]] = {}
    for index, item in enumerate(items):
        item.output, item.error, item.state = (outputs[index] if outputs is not None else None), error, DONE
        if item.on_done is None:
            item._done.set()
        else:
            callbacks.setdefault(item.on_done, []).append(item)
    for on_done, done in callbacks.items():
        on_done(done)


class BatchWorker:
    """The queue and batch thread of one model instance."""

    def __init__(self, name: str, handler: Handler, *, max_batch_size: int, max_batch_delay: float,
                 capacity: int,
                 on_batch: Callable[["BatchWorker", int, float, list[WorkItem], float], None] | None = None,
                 more_coming: Callable[[], bool] = lambda: True, cost: BatchCost | None = None):
        self.name = name
        self.cost = cost or BatchCost()  # what a predict call costs: whether waiting for more pays
        self._more_coming = more_coming
        self.handler = handler
        self.largest = largest_batch(handler, max_batch_size, max_batch_delay)
        self.max_batch_delay = max_batch_delay
        self.capacity = capacity
        self._on_batch = on_batch
        self._queue: deque[WorkItem] = deque()
        self._cond = threading.Condition()
        self._stopping = False
        # Batch threads: as many as the handler may run predict calls at once (on the CPU, one per core it is
        # given: each forms its own batch as soon as it is free, instead of all waiting for the slowest run).
        self.lanes = max(1, getattr(handler, "concurrent_batches", 1))
        self._idle_lanes = 0  # lanes waiting for work (under the lock)
        self._runs: list[tuple[int, float] | None] = [None] * self.lanes  # per lane: (items, monotonic start)
        self._threads = [threading.Thread(target=self._loop, args=(lane,), daemon=True,
                                          name=f"batch-{name}" + (f"-{lane}" if self.lanes > 1 else ""))
                         for lane in range(self.lanes)]

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    @property
    def running(self) -> int:
        """Items in the batches being predicted."""
        return sum(run[0] for run in self._runs if run is not None)

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
                raise Overloaded("this instance is stopping")
            if len(self._queue) >= self.capacity:
                raise Overloaded(f"the queue of instance {self.name} is full ({self.capacity} requests)")
            item.worker = self
            item.enqueued_at = time.monotonic()
            self._queue.append(item)
            if self._idle_lanes:  # a lane waits for work or for its batch to fill (busy lanes look when done)
                self._cond.notify()

    def withdraw(self, item: WorkItem, error: ServingError | None = None) -> bool:
        """Take `item` out of the queue if it has not started, finishing it with `error` (default: its deadline
        passed); return whether it was withdrawn."""
        with self._cond:
            if item.state != QUEUED:
                return False
            self._queue.remove(item)
            item.finish(error=error or _expired())
            return True

    @property
    def batch_started(self) -> float | None:
        """Monotonic start of the oldest batch being predicted, or None."""
        starts = [run[1] for run in self._runs if run is not None]
        return min(starts) if starts else None

    @property
    def threads_alive(self) -> bool:
        """Whether every batch thread still runs (one that died takes its lane's batches with it)."""
        return all(thread.is_alive() for thread in self._threads)

    def stop(self, timeout: float | None = None, until: float | None = None) -> None:
        """Finish what is queued, then end the threads, waiting for them `timeout` seconds in all (or until the
        monotonic time `until`; neither: as long as they take)."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        join_by(self._threads, until if until is not None or timeout is None else time.monotonic() + timeout)

    def _loop(self, lane: int) -> None:
        if self.handler.run_size:  # a CPU instance (a GPU lane mostly waits on its device and must keep it fed)
            lower_this_threads_priority(CPU_LANE_NICENESS)
        while True:
            batch, expired = self._next_batch(lane)
            for item in expired:
                item.finish(error=_expired())
            if batch is None:
                return
            try:
                self._run(batch)
            finally:
                self._runs[lane] = None

    def _next_batch(self, lane: int) -> tuple[list[WorkItem] | None, list[WorkItem]]:
        """Wait for work; return (items to run, items whose deadline passed), or (None, []) to stop."""
        with self._cond:
            self._idle_lanes += 1
            try:
                return self._take_batch(lane)
            finally:
                self._idle_lanes -= 1

    def _take_batch(self, lane: int) -> tuple[list[WorkItem] | None, list[WorkItem]]:
        """Under the lock: wait for work and take this lane's share of it."""
        while True:
            while not self._queue:
                if self._stopping:
                    return None, []
                self._cond.wait()
            wait = self._left_to_a_busy_lane()
            if wait <= 0:
                break
            self._cond.wait(wait)
        fill_by = self._queue[0].enqueued_at + self.max_batch_delay
        holding_since = None  # when this lane began to hold the batch open for more
        # Waiting only pays while other requests are on their way (being read or decoded);
        # a lone request runs at once instead of sitting out the delay.
        while len(self._queue) < self.largest and not self._stopping and self._more_coming() \
                and self.cost.worth_waiting(len(self._queue), self.largest):
            if holding_since is None:
                holding_since = time.monotonic()
                fill_by = min(fill_by, holding_since + self.cost.longest_worth_holding(self.max_batch_delay))
            remaining = fill_by - time.monotonic()
            if remaining <= 0:
                break
            self._cond.wait(remaining)
        now = time.monotonic()
        batch: list[WorkItem] = []
        expired: list[WorkItem] = []
        size = self._share(now)
        while self._queue and len(batch) < size:
            item = self._queue.popleft()
            if item.deadline <= now:
                item.state = DONE
                expired.append(item)
                continue
            item.state = RUNNING
            item.queue_seconds = now - item.enqueued_at
            if holding_since is not None:
                item.fill_seconds = max(0.0, now - max(item.enqueued_at, holding_since))
            batch.append(item)
        self._runs[lane] = (len(batch), now)
        if self._queue:
            self._cond.notify()  # another free lane may take the rest
        return batch, expired

    def _left_to_a_busy_lane(self) -> float:
        """Under the lock, the queue not empty: 0 when this free lane starts a call now; else how long it leaves
        the queue to a busy lane that will be free in time to take it itself.

        A CPU call needs a core, and the process's other threads (the event loop reading, decoding and answering
        requests) want one too: on the example at 8 callers they use most of a core, and a call beside another
        lane's ran on a core shared with them, at the lanes' lower priority, a fraction as fast; its inputs
        finished last, the tail. So while less than a call's worth (`largest`) is queued, a free lane leaves it to
        a busy lane whose call ends, by the measured cost, before the oldest input has waited `max_batch_delay`
        (what a caller may wait for batching's sake), and starts it itself once that has passed. A call's worth
        queued, or a busy lane that would not be free in time (a detector's long runs), and it starts at once
        (bench/optimisations.json: the example at 2 to 8 callers +4 to +20%, p99 at 8 callers -20%)."""
        fixed, per_item = self.cost.fixed, self.cost.per_item
        if self.lanes == 1 or self._stopping or len(self._queue) >= self.largest or fixed is None:
            return 0.0
        ends = self._call_ends(fixed, per_item)
        waited_enough_at = self._queue[0].enqueued_at + self.max_batch_delay
        if not ends or min(ends) > waited_enough_at:
            return 0.0
        return max(0.0, waited_enough_at - time.monotonic())

    def _call_ends(self, fixed: float, per_item: float) -> list[float]:
        """Under the lock: when each call being predicted should end, by the measured cost (a free lane has none)."""
        return [started + fixed + per_item * items for items, started in filter(None, self._runs)]

    def _share(self, now: float) -> int:
        """Under the lock: how many queued items this free lane takes, so that every core gets some of the work.

        Less than a call's worth: all of it (no other lane starts a call beside this one). More: each item goes to
        the lane that would finish it first (list scheduling by earliest finish): a free lane from now, a busy one
        from when its call should end by the measured cost. So a lane that is about to be free gets a share
        instead of the items waiting behind this lane's longer call (at 8 callers on the example: p99 -8%,
        throughput +4%; bench/optimisations.json), and one that has just started a call gets none while the queue
        is short. Until the cost is measured, the free lanes share the queue evenly."""
        queued, fixed, per_item = len(self._queue), self.cost.fixed, self.cost.per_item
        if queued < self.largest:
            return queued
        if fixed is None or not per_item or self.lanes == 1:
            return min(self.largest, -(-queued // max(1, self._idle_lanes)))
        # This lane first: ties go to it.
        starts = [0.0] + [max(0.0, end - now) for end in self._call_ends(fixed, per_item)]
        starts += [0.0] * (self.lanes - len(starts))
        counts = [0] * len(starts)
        for _ in range(min(queued, self.largest * self.lanes)):
            best = min(range(len(starts)), key=lambda i: starts[i] + per_item * counts[i])
            counts[best] += 1
        return max(1, min(self.largest, counts[0]))

    def _run(self, batch: list[WorkItem]) -> None:
        groups: dict[Hashable, list[WorkItem]] = {}
        for item in batch:
            groups.setdefault(item.key, []).append(item)
        for group in groups.values():
            started, cpu_began = time.perf_counter(), time.thread_time()
            predict = self.handler.predict_all_outputs if type(group[0].key) is AllOutputs else self.handler.predict
            try:
                outputs = predict([item.input for item in group])
                check_outputs(self.handler, outputs, len(group))
            except Exception as exc:  # the handler's failure must not kill the batch thread
                log.exception("predict failed on instance %s for a batch of %d", self.name, len(group))
                error = exc if isinstance(exc, HandlerFailed) else HandlerFailed(
                    f"{type(self.handler).__name__}.predict failed: {type(exc).__name__}; see the server log")
                finish_all(group, error=error)
                continue
            seconds, cpu_seconds = time.perf_counter() - started, time.thread_time() - cpu_began
            with self._cond:
                self.cost.observe(len(group), seconds)
            for item in group:
                item.batch_size = len(group)
                item.inference_seconds = seconds
            if self._on_batch is not None:  # counted before any of its answers can reach a caller
                self._on_batch(self, len(group), seconds, group, cpu_seconds)
            finish_all(group, list(outputs))


def largest_batch(handler: Handler, max_batch_size: int, max_batch_delay: float) -> int:
    """The most inputs the batcher gives one predict call: `max_batch_size`; where the handler pads its runs to one
    size (`Handler.padded_size`, a GPU's), one run of it (a model whose batch axis is fixed at 1 gets one input a
    call: more would run one after another and only hold the others' answers back); where the handler cuts a
    batch into runs done one after another (`Handler.run_size`, the CPU's), one run, or as many as fit in
    `max_batch_delay` (what a caller may wait for batching's sake): an input behind longer runs in the same lane
    would wait longer than that while another lane could start it. Several short runs a call keep the batcher's
    hand-offs per input down (runs of 2 of the example, one a call, cost 10-12% of its throughput at 64
    callers)."""
    if handler.padded_size:
        return max(1, min(max_batch_size, handler.padded_size))
    if not handler.run_size:
        return max_batch_size
    runs = max(1, int(max_batch_delay / handler.run_seconds)) if handler.run_seconds > 0 else 1
    return min(max_batch_size, handler.run_size * runs)


def lower_this_threads_priority(niceness: int) -> None:
    """Add `niceness` to the calling thread's nice value (raising it needs no privilege); log when it cannot."""
    thread = threading.get_native_id()
    try:
        os.setpriority(os.PRIO_PROCESS, thread, min(19, os.getpriority(os.PRIO_PROCESS, thread) + niceness))
    except OSError as exc:
        log.warning("could not lower the priority of thread %s (%s); it runs at the process's", thread, exc)


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
