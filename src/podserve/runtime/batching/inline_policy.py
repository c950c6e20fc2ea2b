"""Whether the event loop runs a request's own steps itself or hands them to a request thread.

A request has two steps outside its batch: `begin` (parse the body, run `decode`, queue the
input) and `finish` (run `encode`, build the answer). Handing a step to a request thread and
back costs two thread wake-ups, and on a small machine each wake-up waits for a core shared
with the loop and the batch threads: on the example model at 8 callers the hand-offs were most
of the tail (bench/optimisations.json). So the loop runs a step itself while that step has been
measured cheap, `INLINE_SECONDS` or less on average by the wall clock, and the body is no larger
than `INLINE_BODY_BYTES`; otherwise (a slow `decode`, a large photo, a video) the step goes to a
request thread, and the loop stays free to read, write, answer probes and fire deadlines. On
average a step holds the loop for less than Python's GIL switch interval (5 ms), which a request
thread may hold the GIL for anyway. Each step is measured wherever it runs, so a handler that
turns slow goes back to the request threads, and its first `WARMUP_STEPS` run there before the
loop trusts the figure.

The loop cannot know a step's cost before running it, and a handler's `decode` can be slow on
some inputs only: an image with many pixels in a small body (a crafted PNG). One step over
`STALL_SECONDS` sends every step to the request threads for `STALL_PENALTY` times as long, so
however such inputs are mixed with cheap ones, they hold the loop at most about 1% of the time
(tests/runtime/test_inline_steps.py).

Running steps in the loop saves hand-offs only while the loop keeps up. When more requests are
in flight than the lanes take in one run each, and the pod has a whole core idle, the loop is
the pod's bottleneck: on a GPU, whose lanes wait on the device and not on a core, the loop
decoding every request itself held the example's batches to 4-5 at 64 callers, where request
threads decoding beside it formed batches of 11 and cut the p99 from up to 1 s to 54-60 ms
(bench/results/gpu-inline/). Then cheap steps go to the request threads too (`LoopRelief`). On
a CPU pod at that load the lanes keep every core busy, no core is idle, and the loop keeps them.
"""

from __future__ import annotations

import time
from typing import Callable

from podserve import memory_plan

#: The mean wall time of a step under which the loop runs it itself.
INLINE_SECONDS = 0.002
#: The largest body the loop parses itself: JSON and base64 take about 1-2 ms a MiB here (the memory plan counts it).
INLINE_BODY_BYTES = memory_plan.LOOP_BODY_BYTES
#: Steps measured on request threads before the loop may run any.
WARMUP_STEPS = 8
#: A step this long (well past a garbage collection's 16 ms here) stops the loop running steps for a while...
STALL_SECONDS = 0.025
#: ...for this many times the step's own time.
STALL_PENALTY = 100
#: How often the loop reads the process's CPU time, to know whether a core idles.
CPU_SAMPLE_SECONDS = 0.25
#: Weight of one measurement against the mean of those before it (about the last 20 count).
WEIGHT = 0.05


class StepCost:
    """The mean wall time of one kind of step, and whether the event loop may run it itself.

    `inline_seconds` and `stall_seconds` default to the one-process layout's INLINE_SECONDS and STALL_SECONDS; a
    decoder process, whose loop reads no HTTP and answers no probe, lets longer steps run in its loop
    (runtime/processes/decoder_process.py)."""

    __slots__ = ("mean", "seen", "threads_until", "inline_seconds", "stall_seconds")

    def __init__(self, inline_seconds: float = INLINE_SECONDS, stall_seconds: float = STALL_SECONDS) -> None:
        self.mean = 0.0
        self.seen = 0
        self.threads_until = 0.0  # time.monotonic() before which every step goes to a request thread
        self.inline_seconds, self.stall_seconds = inline_seconds, stall_seconds

    def observe(self, seconds: float) -> None:
        """Take one step's wall time into account (from any thread: a lost update only delays the verdict)."""
        self.seen += 1
        # The plain mean of the first 1/WEIGHT steps, then a moving one: otherwise the first step, slowed by a
        # cold start or a busy core, would count as much as all the others and keep steps off the loop long after.
        self.mean += max(WEIGHT, 1.0 / self.seen) * (seconds - self.mean)
        if seconds > self.stall_seconds:
            self.threads_until = max(self.threads_until, time.monotonic() + STALL_PENALTY * seconds)

    @property
    def cheap(self) -> bool:
        """Whether the loop may run the next such step itself."""
        return (self.seen >= WARMUP_STEPS and self.mean <= self.inline_seconds
                and time.monotonic() >= self.threads_until)


class LoopRelief:
    """Whether cheap steps should go to the request threads anyway: requests queue past the lanes while a core idles.

    `sample` runs in the event loop every CPU_SAMPLE_SECONDS (`start`); `wanted` is read by any thread.
    """

    def __init__(self, cores: float, in_flight: Callable[[], int], lanes_take: Callable[[], int]):
        self.cores = cores
        self._in_flight, self._lanes_take = in_flight, lanes_take
        self.core_idle = False
        self._sampled_at, self._cpu_at = time.monotonic(), time.process_time()
        self._loop = self._timer = None

    def start(self, loop) -> None:
        self._loop = loop
        self._timer = loop.call_later(CPU_SAMPLE_SECONDS, self._tick)

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()

    def _tick(self) -> None:
        self.sample()
        self._timer = self._loop.call_later(CPU_SAMPLE_SECONDS, self._tick)

    def sample(self) -> None:
        """Read the cores the process used since the last sample, and whether a whole one was left idle."""
        now, cpu = time.monotonic(), time.process_time()
        if now > self._sampled_at:
            self.core_idle = self.cores - (cpu - self._cpu_at) / (now - self._sampled_at) >= 1.0
        self._sampled_at, self._cpu_at = now, cpu

    @property
    def wanted(self) -> bool:
        """Whether the loop should hand even cheap steps to the request threads now."""
        return self.core_idle and self._in_flight() > self._lanes_take()
