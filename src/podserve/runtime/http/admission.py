"""Admission: the places (slots) the pod holds, the paced 503 beyond them, and settling an answered request.

A pod holds at most `holding_limit` requests at once (`queue_size` per instance), counted from the
moment the event loop has read one until it is answered. One more is answered 503 with
`Retry-After` right away, before any app code runs; the 503s themselves are paced
(runtime/http/refusals.py). A request that becomes N inputs (an Open Inference request's rows, a
video's frames) takes N places once N is known (`hold_places`, the second admission step).
The bodies of the requests it holds are bounded too (`body_budget`, from the pod's memory plan:
podserve/memory_plan.py): a request whose body would take the pod over it gets a 503 at its headers
(from its Content-Length) or once read, and a large body (over LARGE_BODY_BYTES) may use only
LARGE_BODY_SHARE of it, so large uploads never shut out ordinary requests.
Whoever answers a request settles it here: its places and its body's bytes come back, it is counted (by its
origin too: `mirror` when its Host ends in `-shadow`, a copy the mesh mirrored to this pod),
its body dropped, and its answer goes out, in that order, so the caller's next request finds the room free and a
scrape read once it has its answer counts it. A request is settled once: a second answer is dropped.

The pod's guarantee lives here, the same in both layouts: every admitted request is answered by its deadline plus
ANSWER_GRACE_SECONDS. Whoever holds a request answers it at its deadline (a decoder's timer, a batcher's withdrawal);
admission's backstop answers 504 whatever is still unanswered a grace later (a batch still running, a process or a
thread stuck with it, a link gone quiet), and tells its holder to drop it (`on_gone`).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from typing import Callable

from podserve.errors import ClientGone, DeadlineExceeded, InvalidInput, Overloaded
from podserve.metric_names import origin_of
from podserve.runtime.core.lifecycle import Lifecycle
from podserve.runtime.core.logs import RUNTIME_FAULT, log_request
from podserve.runtime.core.metrics import Metrics
from podserve.runtime.http.messages import LARGE_BODY_BYTES, LARGE_BODY_SHARE, Answer, Exchange
from podserve.runtime.http.refusals import RefusalCost, RefusalPacer
from podserve.stop_bounds import ANSWER_GRACE_SECONDS

log = logging.getLogger(__name__)

#: How often the backstop looks for requests past their deadline and grace (the grace's granularity).
BACKSTOP_TICK_SECONDS = 0.05


class Admission:
    """Admit or refuse the requests of one route, and settle them once answered (event loop, but `settle` and
    `hold_places` from any thread)."""

    def __init__(self, route: str, holding_limit: Callable[[], int], lifecycle: Lifecycle, metrics: Metrics,
                 refusal: Answer, answer_error: Callable[[Overloaded], Answer],
                 steps_cpu: Callable[[], float] = lambda: 0.0, body_budget: int = 0):
        self.route = route
        self.body_budget = body_budget  # 0: bodies are bounded by places and max_body_bytes alone
        self._answer_error = answer_error  # the route's error answer (protocols/service_route.py's error_answer)
        self.holding_limit = holding_limit
        self.lifecycle = lifecycle
        self.metrics = metrics
        self._refusal = refusal
        self._steps_cpu = steps_cpu  # CPU of the handler's steps the loop ran itself: not admission's HTTP work
        self._admitted = 0  # requests admitted so far (event loop only)
        self._refusals: RefusalPacer | None = None
        self._lock = threading.Lock()  # settled, places and the backstop's ticks: settle runs on any thread
        self._due: dict[int, dict[int, Exchange]] = {}  # backstop tick -> the requests it answers if nobody has
        self._swept = 0  # the last tick the backstop looked at
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def refusals_held(self) -> int:
        """503s decided and held back by the pacing (runtime/http/refusals.py)."""
        return self._refusals.held if self._refusals is not None else 0

    @property
    def refusal_rate(self) -> float:
        """Refusals per second admission now sends at once: a share of a core over what one costs."""
        return self._refusals.rate if self._refusals is not None else 0.0

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._refusals = RefusalPacer(loop, cost=RefusalCost(lambda: self._admitted, self._steps_cpu))
        self._refusals.start()
        self._loop = loop
        self._swept = int(time.monotonic() / BACKSTOP_TICK_SECONDS)
        self._sweep()

    def stop(self) -> None:
        if self._refusals is not None:
            self._refusals.stop()
        self._loop = None

    def admit_head(self, exchange: Exchange, budget: float) -> bool:
        """At a request's headers: refuse it now (503, paced) when the pod is full, or its body (by Content-Length)
        would take it over its budget for bodies, before the body is read."""
        if self.lifecycle.in_flight >= self.holding_limit():
            self.refuse(exchange, budget)
            return False
        raw = exchange.headers.get("content-length") or ""
        length = int(raw) if raw.isdigit() else 0
        if length and self.body_budget and self.lifecycle.body_bytes + length > self._room(length):
            self.refuse(exchange, budget, self._bodies_full(length))
            return False
        return True

    def admit(self, exchange: Exchange, budget: float) -> bool:
        """Take a place (and its body's bytes) for a request read whole, or refuse it (503, paced) when the pod is
        full or its bodies' budget is."""
        if self.lifecycle.in_flight >= self.holding_limit():
            self.refuse(exchange, budget)
            return False
        length = len(exchange.body or b"")
        if self.body_budget and length:
            if not self.lifecycle.try_hold_bytes(length, self._room(length)):
                self.refuse(exchange, budget, self._bodies_full(length))
                return False
            exchange.held_bytes = length
        self.lifecycle.request_started()
        self._admitted += 1
        exchange.places = 1
        # The tick before the one its grace ends in: swept every tick, it is answered within the grace.
        due_at = exchange.received_at + budget + ANSWER_GRACE_SECONDS
        tick = exchange.backstop = int(due_at / BACKSTOP_TICK_SECONDS) - 1
        with self._lock:
            self._due.setdefault(tick, {})[id(exchange)] = exchange
        return True

    def _room(self, length: int) -> int:
        """The budget a body of `length` bytes may use: all of it, or LARGE_BODY_SHARE for a large one."""
        return int(self.body_budget * LARGE_BODY_SHARE) if length > LARGE_BODY_BYTES else self.body_budget

    def _bodies_full(self, length: int) -> Answer:
        room = self._room(length)
        which = f"bodies over {LARGE_BODY_BYTES} bytes may use {room} of it" if room < self.body_budget else \
            f"its limit is {room}"
        return self._answer_error(Overloaded(
            f"this pod holds {self.lifecycle.body_bytes} bytes of request bodies, and this one's {length} would take "
            f"it over ({which}, from memory in value.py); retry shortly, or elsewhere", field="body"))

    def refuse(self, exchange: Exchange, budget: float, answer: Answer | None = None) -> None:
        self.metrics.observe_request(self.route, Overloaded.status, 0.0, origin_of(exchange.headers.get("host", "")))
        self._refusals.refuse(exchange, answer or self._refusal, budget)

    def hold_places(self, exchange: Exchange, held: int, count: int, unit: str, field: str) -> int:
        """The second admission step of a request holding `held` places that became `count` inputs: hold a place for
        each from now on (at least one; fewer than it holds gives the rest back), or refuse it (400 when it could
        never fit, naming `field`; 503 when the pod is too full now; ClientGone when it was answered meanwhile).
        Returns the places the request holds now."""
        limit = self.holding_limit()
        if count > limit:
            raise InvalidInput(f"{count} {unit} are more than this pod holds at once ({limit}: queue_size per "
                               f"instance); send at most {limit} {unit} a request", field=field)
        count = max(1, count)
        with self._lock:
            if exchange.settled:
                raise ClientGone("the request was answered already (its deadline and grace passed)")
            held = exchange.places
            if count < held:
                self.lifecycle.request_finished(held - count)
            elif count > held and not self.lifecycle.try_start(count - held, limit):
                raise Overloaded(f"this pod cannot hold {count} {unit} now ({self.lifecycle.in_flight} of {limit} "
                                 f"places taken, {held} of them by this request); retry shortly, or send fewer "
                                 f"{unit}")
            exchange.places = count
        return count

    def release_places(self, exchange: Exchange, places: int) -> None:
        """Give back `places` a request took that its answer will not (nothing once it is answered: its answer gave
        back every place it held)."""
        with self._lock:
            if places > 0 and not exchange.settled:
                places = min(places, exchange.places - 1)
                exchange.places -= places
                self.lifecycle.request_finished(places)

    def submitted(self, exchange: Exchange) -> None:
        """The request's inputs are in the batcher's hands (one process: nothing to do)."""

    def settle(self, exchange: Exchange, answer: Answer, seconds: float) -> bool:
        """A request is answered: give its places and its body's bytes back, count it, drop its body and send its
        answer. False (and nothing done) when it was answered already."""
        with self._lock:
            if exchange.settled:
                return False
            exchange.settled = True
            due = self._due.get(exchange.backstop)
            if due is not None:
                due.pop(id(exchange), None)
            places, exchange.places = exchange.places, 0
        self.lifecycle.request_finished(places)
        if exchange.held_bytes:
            self.lifecycle.release_bytes(exchange.held_bytes)
            exchange.held_bytes = 0
        exchange.body = b""  # whoever still holds the request (a queued step, a decoder) holds no body with it
        self.metrics.observe_request(self.route, answer.status, seconds, origin_of(exchange.headers.get("host", "")))
        exchange.answer(answer)
        return True

    # The backstop (event loop).

    def _sweep(self) -> None:
        """Answer 504 every admitted request past its deadline and grace that nobody has answered."""
        if self._loop is None:
            return
        self._loop.call_later(BACKSTOP_TICK_SECONDS, self._sweep)  # first: nothing below may stop the backstop
        now = int(time.monotonic() / BACKSTOP_TICK_SECONDS)
        while self._swept < now:
            self._swept += 1
            with self._lock:
                due = self._due.pop(self._swept, None)
            for exchange in (due or {}).values():
                try:
                    self._backstop(exchange)
                except Exception:  # a holder's bug: the request is answered, the next ones still will be
                    log.exception("the backstop's holder callback failed", extra=RUNTIME_FAULT)

    def _backstop(self, exchange: Exchange) -> None:
        holder, exchange.on_gone = exchange.on_gone, None
        seconds = time.monotonic() - exchange.received_at
        error = DeadlineExceeded(f"the request's deadline passed over {ANSWER_GRACE_SECONDS:g} s ago and it had no "
                                 f"answer: its batch was still running, or the process or thread holding it is stuck "
                                 f"(the pod's log says which); it may have run")
        if self.settle(exchange, self._answer_error(error), seconds):
            log_request({"route": self.route, "status": error.status, "total_ms": round(seconds * 1000, 2),
                         "error": error.message, "backstop": True})
        if holder is not None:  # its holder drops it: a decoder stops work on it, a queued input is withdrawn
            holder()
