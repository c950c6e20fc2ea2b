"""Pace the door's 503s, so that callers retrying at once cannot take the CPU from the requests the pod holds.

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
"""

from __future__ import annotations

import heapq
from collections import deque

from podserve.errors import RETRY_AFTER_SECONDS
from podserve.runtime.httpserver import Answer, Exchange

#: Refusals per second the door sends at once: at ~50-100 us of CPU each, at most about 0.2 of a core
#: (bench/results/overload.md measures the cost per refusal).
REFUSALS_PER_SECOND = 2000.0
#: Seconds' worth of refusals that may go at once after a calm spell, so a burst is refused as fast as it is read.
#: A quarter: a whole second's worth, sent at the start of every storm, took the GIL long enough to raise the
#: answered requests' p99 by a third to a half (bench/optimisations.json).
BURST_SECONDS = 0.25
#: The longest a 503 is held back: the Retry-After it carries.
HOLD_LIMIT_SECONDS = float(RETRY_AFTER_SECONDS)


class RefusalPacer:
    """Send refusals at once up to `rate` per second; hold the rest in order until their turn (event loop only)."""

    def __init__(self, loop, rate: float = REFUSALS_PER_SECOND, hold_limit: float = HOLD_LIMIT_SECONDS,
                 burst_seconds: float = BURST_SECONDS):
        self.loop = loop
        self.rate = rate
        self.hold_limit = hold_limit
        self._capacity = rate * burst_seconds
        self._tokens = self._capacity
        self._refilled_at = loop.time()
        self._in_order: deque[_Held] = deque()  # the turn of each held 503
        self._by_limit: list[_Held] = []  # a heap on send_by: callers' deadlines differ
        self._held = 0
        self._timer = None
        self._timer_due = 0.0  # kept here: uvloop's handle for a due time already past has no when()

    @property
    def held(self) -> int:
        """503s decided and not yet sent."""
        return self._held

    def refuse(self, exchange: Exchange, answer: Answer, budget: float) -> None:
        """Send `answer` now if within the rate, else when its turn comes: within `hold_limit` and half of
        `budget` (the caller's time budget, in seconds) at the latest."""
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
