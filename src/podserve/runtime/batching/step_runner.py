"""Where a request's two steps run: in the event loop while they are measured cheap, else on a request thread.

A request has two steps outside its batch: `begin` (parse the body, run `decode`, queue the input)
and `finish` (run `encode`, build the answer). The loop runs a step itself while that kind of step
is measured cheap and the body small (runtime/batching/inline_policy.py: a hand-off costs two thread
wake-ups), and while the loop is not the bottleneck (`LoopRelief`); otherwise the step goes to one
of the request threads, and the loop stays free to read, write, answer probes and fire deadlines.
A handful of threads serve any number of requests in flight, whatever the batching does.

Where the loop also serves HTTP (the one-process layout), a finish goes before every begin past the first
`BEGIN_TURN_SECONDS` of a turn: the begins the loop takes on past them wait in line and run in turns of at most that,
between which the loop writes the answers of batches that are done and reads what has arrived. Run as they were
read, the decodes of everything one turn of the loop read (tens of requests at 64 callers) held the answers of
finished batches back behind them: a CPU pod's c=64 p99 at 1.4x Gunicorn's, 0.94x in turns (bench/optimisations.json).
A decoder process's loop, which reads no HTTP, begins at once: in turns it fed the model process later and answered
7-10% fewer requests.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import deque
from typing import Any, Callable

from podserve.runtime.batching.inline_policy import INLINE_BODY_BYTES, LoopRelief, StepCost
from podserve.runtime.core.devices import cpu_share
from podserve.runtime.core.lifecycle import join_by
from podserve.settings import ServingSettings

log = logging.getLogger(__name__)

#: Where the loop serves HTTP, the longest it runs begins in one go before it lets answers out and reads again (a
#: begin that starts within it runs whole).
BEGIN_TURN_SECONDS = 0.002


class StepRunner:
    """Run `begin(call)` and `finish(items)` in the loop or on `threads` request threads; a step that raises is
    handed to `on_failure(job, exc)`, which must answer its requests."""

    def __init__(self, threads: int, relief: LoopRelief, begin: Callable[[Any], None],
                 finish: Callable[[list], None], on_failure: Callable[[Any, Exception], None],
                 costs: Callable[[], StepCost] = StepCost, clock: Callable[[], float] = time.perf_counter,
                 begin_turn_seconds: float | None = None):
        self._relief = relief
        self._begin, self._finish, self._on_failure = begin, finish, on_failure
        self._work: queue.SimpleQueue = queue.SimpleQueue()  # a call to begin, [WorkItem] to finish, None to stop
        self._begins: deque = deque()  # calls the loop begins itself, in turns (`_begin_some`)
        self._begin_turn_seconds = begin_turn_seconds  # None: the loop begins a call at once
        self._turn_until: float | None = None  # until when this turn of the loop begins calls at once
        self._begin_cost, self._finish_cost = costs(), costs()
        self._clock = clock  # what a step's cost is measured by: the wall clock, or (a decoder's) its thread's CPU
        self._loop_thread: int | None = None
        self.busy: dict[int, tuple[Any, float]] = {}  # request thread -> (the job it runs now, since when: monotonic)
        self.steps_cpu = 0.0  # CPU seconds of the steps the loop ran itself (runtime/http/refusals.py subtracts them)
        self.loop = None
        self._threads = [threading.Thread(target=self._serve, name=f"request-{i}", daemon=True)
                         for i in range(threads)]

    @property
    def backlog(self) -> int:
        """Steps waiting for a request thread (not the begins waiting a few milliseconds for the loop's next turn)."""
        return self._work.qsize()

    @property
    def loop_relieved(self) -> bool:
        """Whether the event loop now hands even cheap steps to the request threads (inline_policy.LoopRelief)."""
        return self._relief.wanted

    def start(self, loop) -> None:
        self.loop = loop
        self._loop_thread = threading.get_ident()
        self._relief.start(loop)
        for thread in self._threads:
            thread.start()

    def stop(self, until: float | None = None) -> None:
        """End the request threads once their work is done, waiting for them until the monotonic time `until`
        (default 5 s from now)."""
        self._relief.stop()
        while self._begins:  # the loop may not turn again: the request threads begin them
            self._work.put(self._begins.popleft())
        for _ in self._threads:
            self._work.put(None)
        join_by(self._threads, time.monotonic() + 5 if until is None else until)

    def begin(self, call: Any, body_bytes: int) -> None:
        """From the loop: begin `call` now if cheap, else on a request thread."""
        if self._begin_cost.cheap and body_bytes <= INLINE_BODY_BYTES and not self._relief.wanted:
            if self._begin_turn_seconds is None:
                self._run_in_loop(call)
                return
            if not self._begins:  # nothing waits: begin now, while this turn's begins are within their time
                now = time.perf_counter()
                if self._turn_until is None:
                    self._turn_until = now + self._begin_turn_seconds
                    self.loop.call_soon(self._end_turn)  # runs once this turn's reads are done
                if now < self._turn_until:
                    self._run_in_loop(call)
                    return
                self.loop.call_soon(self._begin_some)
            self._begins.append(call)
        else:
            self._work.put(call)

    def _end_turn(self) -> None:
        self._turn_until = None

    def _begin_some(self) -> None:
        """Begin the calls waiting for the loop, for at most its turn's seconds; the rest in the loop's next turn."""
        begins, until = self._begins, time.perf_counter() + self._begin_turn_seconds
        while begins:
            if not self._begin_cost.cheap:  # one just stalled the loop: the request threads take the rest
                while begins:
                    self._work.put(begins.popleft())
                return
            self._run_in_loop(begins.popleft())
            if begins and time.perf_counter() >= until:
                self.loop.call_soon(self._begin_some)
                return

    def begin_on_thread(self, call: Any) -> None:
        """Begin `call` on a request thread whatever its cost (a step that may wait on something)."""
        self._work.put(call)

    def finish(self, items: list) -> None:
        """From a batch thread (or the loop, where a link brings outputs): finish `items` in the loop or a request
        thread."""
        if self._finish_cost.cheap and not self._relief.wanted:
            if threading.get_ident() == self._loop_thread:
                self._run_in_loop(items)
                return
            try:
                self.loop.call_soon_threadsafe(self._run_in_loop, items)
                return
            except RuntimeError:  # the loop has closed (a shutdown past its finish timeout)
                pass
        self._work.put(items)

    def _serve(self) -> None:
        work, busy, me = self._work, self.busy, threading.get_ident()
        while True:
            job = work.get()
            if job is None:
                return
            busy[me] = job, time.monotonic()
            self._run(job)
            del busy[me]

    def _run_in_loop(self, job: Any) -> None:
        """`_run` in the event loop's thread, its CPU counted apart from the loop's HTTP work."""
        cpu = time.thread_time()
        self._run(job)
        self.steps_cpu += time.thread_time() - cpu

    def _run(self, job: Any) -> None:
        """Begin a call or finish a batch's items, timing the step; never raise."""
        begins = type(job) is not list
        began = self._clock()
        try:
            if begins:
                self._begin(job)
            else:
                self._finish(job)
        except Exception as exc:  # never lose a request to a bug here: answer it
            self._on_failure(job, exc)
        seconds = self._clock() - began
        if begins:
            self._begin_cost.observe(seconds)
        else:
            self._finish_cost.observe(seconds / max(1, len(job)))


def request_threads(settings: ServingSettings) -> int:
    """`http_threads`, or when 0 one per CPU core of the pod.

    One is the default: Python code holding the GIL runs one thread at a time anyway, and a
    second request thread contending for it cost throughput, CPU and thread switches at every
    concurrency measured (bench/optimisations.json). More pay only for a `decode` that spends
    its time in code releasing the GIL (large photos, I/O).
    """
    return settings.request_threads(cpu_share(settings))
