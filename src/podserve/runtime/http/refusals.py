"""Pace admission's 503s, so that callers retrying at once cannot take the CPU from the requests the pod holds.

A refusal costs the event loop tens of microseconds of CPU, holding the GIL: reading the
request, parsing it, writing the 503. A caller that honours Retry-After comes back a second
later; one that retries at once (a closed loop, a retry policy without back-off) turns every
cycle the model leaves free into another refusal, and the loop, holding the GIL for them,
starves the request threads serving what the pod holds: measured with callers retrying at
once at 4x the pod's capacity, the answered rate fell to 0.2x and the answered p99 rose to
6.6x the p99 at capacity (bench/results/overload.md).

So refusals go out at once while they stay within `rate` per second (a quarter second's worth
may go at once after a calm spell); beyond that each 503 is held, in
order, until its turn. A held caller sends nothing more, so a storm of immediate retries
slows to `rate` refusals a second in all, and the loop's share of the CPU stays bounded.
Every request is still read, counted and decided the moment it arrives; only the 503's
sending waits, never past `hold_limit` or half the caller's own deadline. Callers that wait
Retry-After stay within the rate and never meet the pacing. What is held is a gauge
(`podserve_refusals_held`).

The rate is a share of a core, not a count: what a refusal costs depends on the host (about
75 us on the machine of the earlier committed runs, 100-300 us on one a third as fast), so a
fixed count gave refusals most of a core where the CPU was scarcest. `RefusalCost` measures
the event loop's CPU per refusal as the pod runs, and the rate is `REFUSAL_CPU_SHARE` over it,
between `MIN_REFUSALS_PER_SECOND` and `REFUSALS_PER_SECOND` (gauge `podserve_refusal_rate`).
"""

from __future__ import annotations

import heapq
import time
from collections import deque
from typing import Callable

from podserve.errors import RETRY_AFTER_SECONDS
from podserve.runtime.http.messages import Answer, Exchange

#: The most refusals per second admission sends at once, however cheap they are.
REFUSALS_PER_SECOND = 2000.0
#: The fewest, however dear they measure: a storm's 503s never go out slower than this.
MIN_REFUSALS_PER_SECOND = 250.0
#: The share of a core admission's refusals may take: 2,000 a second at the ~75 us each measured on the host of the
#: earlier committed runs (bench/results/overload.md), fewer where a refusal costs more.
REFUSAL_CPU_SHARE = 0.15
#: How often the event loop's CPU is read to measure a refusal's cost.
COST_WINDOW_SECONDS = 0.1
#: The weight of the newest window in the running cost: a storm's cost is learnt within about a second.
COST_WEIGHT = 0.2
#: Refusals a window needs for its CPU to count: fewer say more about the admitted requests than about them.
MIN_REFUSALS_PER_WINDOW = 10
#: Seconds' worth of refusals that may go at once after a calm spell, so a burst is refused as fast as it is read.
#: A quarter: a whole second's worth, sent at the start of every storm, took the GIL long enough to raise the
#: answered requests' p99 by a third to a half (bench/optimisations.json).
BURST_SECONDS = 0.25
#: The longest a 503 is held back: the Retry-After it carries.
HOLD_LIMIT_SECONDS = float(RETRY_AFTER_SECONDS)


class RefusalCost:
    """The event loop's CPU per refusal, measured in windows as the pod runs, and the refusal rate it allows.

    In a window the loop's thread spends its CPU on the handler's steps it runs itself (decode,
    encode: runtime/batching/inline_policy.py) and on HTTP: accepting, reading, parsing, answering and
    closing, for the requests it admits and for those it refuses alike. A refusal is costed at the
    loop's HTTP CPU per request in windows with refusals (`MIN_REFUSALS_PER_WINDOW` or more): an
    admitted request costs the loop about as much HTTP as a refusal, its own steps apart. Measured
    this way, a host where Python runs at a third of the speed sends a third of the refusals.
    """

    def __init__(self, admitted: Callable[[], int], steps_cpu: Callable[[], float],
                 cpu_share: float = REFUSAL_CPU_SHARE, most: float = REFUSALS_PER_SECOND,
                 fewest: float = MIN_REFUSALS_PER_SECOND, cpu_clock: Callable[[], float] = time.thread_time):
        self._admitted, self._steps_cpu, self._cpu_clock = admitted, steps_cpu, cpu_clock
        self.cpu_share, self.most, self.fewest = cpu_share, most, fewest
        self.refused = 0  # refusals decided so far: each was read and parsed, whether or not it is sent
        self.per_refusal: float | None = None  # CPU seconds of the loop per refusal; None: none measured yet
        self._at = (cpu_clock(), steps_cpu(), admitted(), 0)

    @property
    def rate(self) -> float:
        """Refusals per second within `cpu_share` of a core, between `fewest` and `most`."""
        if not self.per_refusal:
            return self.most
        return max(self.fewest, min(self.most, self.cpu_share / self.per_refusal))

    def sample(self) -> None:
        """Close a window (in the loop's thread, whose CPU is measured): fold its HTTP CPU per request into the
        running cost of a refusal, if it had refusals enough."""
        now = (self._cpu_clock(), self._steps_cpu(), self._admitted(), self.refused)
        spent, steps, admits, refusals = (b - a for a, b in zip(self._at, now))
        self._at = now
        if refusals < MIN_REFUSALS_PER_WINDOW:
            return
        per_refusal = max(0.0, spent - steps) / (admits + refusals)
        self.per_refusal = per_refusal if self.per_refusal is None else \
            self.per_refusal + COST_WEIGHT * (per_refusal - self.per_refusal)


class RefusalPacer:
    """Send refusals at once up to `rate` per second; hold the rest in order until their turn (event loop only).

    With a `cost` the rate follows it, window by window once `start` has run; without one it stays `rate`.
    """

    def __init__(self, loop, rate: float = REFUSALS_PER_SECOND, hold_limit: float = HOLD_LIMIT_SECONDS,
                 burst_seconds: float = BURST_SECONDS, cost: RefusalCost | None = None):
        self.loop = loop
        self.cost = cost
        self.rate = rate if cost is None else cost.rate
        self.hold_limit = hold_limit
        self._burst_seconds = burst_seconds
        self._capacity = self.rate * burst_seconds
        self._tokens = self._capacity
        self._refilled_at = loop.time()
        self._in_order: deque[_Held] = deque()  # the turn of each held 503
        self._by_limit: list[_Held] = []  # a heap on send_by: callers' deadlines differ
        self._held = 0
        self._timer = None
        self._timer_due = 0.0  # kept here: uvloop's handle for a due time already past has no when()
        self._window = None

    def start(self) -> None:
        """Measure what refusals cost in windows, and follow it (with a `cost`)."""
        if self.cost is not None:
            self._window = self.loop.call_later(COST_WINDOW_SECONDS, self._close_window)

    def stop(self) -> None:
        if self._window is not None:
            self._window.cancel()
            self._window = None

    def _close_window(self) -> None:
        self._refill()
        self.cost.sample()
        self.rate = self.cost.rate
        self._capacity = self.rate * self._burst_seconds  # what is left of an allowance granted before stays
        self._window = self.loop.call_later(COST_WINDOW_SECONDS, self._close_window)

    @property
    def held(self) -> int:
        """503s decided and not yet sent."""
        return self._held

    def refuse(self, exchange: Exchange, answer: Answer, budget: float) -> None:
        """Send `answer` now if within the rate, else when its turn comes: within `hold_limit` and half of
        `budget` (the caller's time budget, in seconds) at the latest."""
        if self.cost is not None:
            self.cost.refused += 1
        self._refill()
        if not self._held and self._tokens >= 1.0:
            self._tokens -= 1.0
            exchange.answer(answer)
            return
        held = _Held(self.loop.time() + min(self.hold_limit, budget / 2), exchange, answer)
        self._in_order.append(held)
        heapq.heappush(self._by_limit, held)
        self._held += 1
        self._schedule()

    def _refill(self) -> None:
        now = self.loop.time()
        if self._tokens < self._capacity:  # never cut: a burst's allowance outlasts a fall in the rate it began at
            self._tokens = min(self._capacity, self._tokens + (now - self._refilled_at) * self.rate)
        self._refilled_at = now

    def _send_due(self) -> None:
        self._timer = None
        self._refill()
        now = self.loop.time()
        while self._by_limit and (self._by_limit[0].sent or self._by_limit[0].send_by <= now):
            held = heapq.heappop(self._by_limit)
            if not held.sent and self._send(held):
                self._tokens = max(0.0, self._tokens - 1.0)  # sent at its limit, in or out of turn
        while self._in_order and (self._in_order[0].sent or self._tokens >= 1.0):
            held = self._in_order.popleft()
            if not held.sent and self._send(held):
                self._tokens -= 1.0
        if self._held:
            self._schedule()

    def _send(self, held: "_Held") -> bool:
        """Send `held`; return False, sending nothing, when its caller has gone (it costs no turn)."""
        held.sent = True
        self._held -= 1
        if held.exchange.abandoned:
            return False
        held.exchange.answer(held.answer)
        return True

    def _schedule(self) -> None:
        until_token = (1.0 - self._tokens) / self.rate
        until_limit = self._by_limit[0].send_by - self.loop.time()
        # A timer per token would cost more than the refusals: send in steps of at least a millisecond.
        due = self.loop.time() + max(0.001, min(until_token, until_limit))
        if self._timer is not None:
            if self._timer_due <= due:
                return
            self._timer.cancel()  # one held later must go sooner: its caller's deadline is shorter
        self._timer, self._timer_due = self.loop.call_at(due, self._send_due), due


class _Held:
    """A 503 decided and waiting for its turn."""

    __slots__ = ("send_by", "exchange", "answer", "sent")

    def __init__(self, send_by: float, exchange: Exchange, answer: Answer):
        self.send_by, self.exchange, self.answer, self.sent = send_by, exchange, answer, False

    def __lt__(self, other: "_Held") -> bool:
        return self.send_by < other.send_by
