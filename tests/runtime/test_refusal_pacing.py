"""The door's 503s are paced: at once within a rate that follows their measured cost, beyond it held in order.

RefusalPacer on the server's own event loop (uvloop); the exchanges are stand-ins that record when their
answer was sent (the real server path is covered by test_sustained_overload.py).
"""

from __future__ import annotations

import asyncio

import uvloop

from podserve.runtime.http.messages import Answer
from podserve.runtime.http.refusals import COST_WINDOW_SECONDS, MIN_REFUSALS_PER_WINDOW, RefusalCost, RefusalPacer

REFUSAL = Answer(503, b'{"error": "overloaded"}', [("Retry-After", "1")])


class Caller:
    """Records the loop time its answer was sent."""

    def __init__(self, loop, sent: list, abandoned: bool = False):
        self.loop, self.sent, self.at, self.abandoned = loop, sent, None, abandoned

    def answer(self, answer: Answer) -> None:
        assert answer is REFUSAL and self.at is None, "answered twice"
        self.at = self.loop.time()
        self.sent.append(self)


def _run(scenario):
    async def main():
        return await scenario(asyncio.get_running_loop())
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(main())


def test_refusals_within_the_rate_go_at_once():
    async def scenario(loop):
        pacer = RefusalPacer(loop, rate=50.0, burst_seconds=1.0)
        sent: list = []
        callers = [Caller(loop, sent) for _ in range(40)]
        for caller in callers:
            pacer.refuse(caller, REFUSAL, budget=10.0)
        return callers, sent, pacer.held

    callers, sent, held = _run(scenario)
    assert sent == callers and held == 0  # all answered synchronously, in order


def test_beyond_the_rate_refusals_are_held_in_order_and_sent_at_the_rate():
    async def scenario(loop):
        pacer = RefusalPacer(loop, rate=100.0, burst_seconds=1.0)  # 100 at once, then one every 10 ms
        sent: list = []
        started = loop.time()
        callers = [Caller(loop, sent) for _ in range(130)]
        for caller in callers:
            pacer.refuse(caller, REFUSAL, budget=10.0)
        held_after_burst = pacer.held
        while pacer.held:
            await asyncio.sleep(0.01)
        return callers, sent, held_after_burst, started

    callers, sent, held_after_burst, started = _run(scenario)
    assert held_after_burst == 30
    assert sent == callers  # in the order they were refused
    late = [caller.at - started for caller in callers[100:]]
    assert all(a <= b for a, b in zip(late, late[1:]))
    # The 30 held ones need 0.3 s of refill at 100/s: not sent at once, and not much later than the rate allows.
    assert late[0] >= 0.005 and 0.25 <= late[-1] <= 0.6, late


def test_a_held_refusal_is_sent_by_half_its_budget_or_the_hold_limit():
    async def scenario(loop):
        pacer = RefusalPacer(loop, rate=2.0, hold_limit=0.4, burst_seconds=1.0)  # 2 at once, then 1 every 0.5 s
        sent: list = []
        started = loop.time()
        first = [Caller(loop, sent) for _ in range(2)]
        for caller in first:
            pacer.refuse(caller, REFUSAL, budget=10.0)
        patient, hurried = Caller(loop, sent), Caller(loop, sent)
        pacer.refuse(patient, REFUSAL, budget=10.0)  # held up to the hold limit, 0.4 s
        pacer.refuse(hurried, REFUSAL, budget=0.1)   # refused after the other, but its caller gives up at 0.1 s
        while pacer.held:
            await asyncio.sleep(0.01)
        return patient.at - started, hurried.at - started, sent.index(hurried) < sent.index(patient)

    patient_s, hurried_s, hurried_first = _run(scenario)
    assert 0.04 <= hurried_s <= 0.15, hurried_s
    assert hurried_first
    assert 0.35 <= patient_s <= 0.55, patient_s


def test_a_refusal_whose_caller_has_gone_is_dropped_without_taking_a_turn():
    async def scenario(loop):
        pacer = RefusalPacer(loop, rate=10.0, hold_limit=5.0, burst_seconds=1.0)  # 10 at once, then 1 every 0.1 s
        sent: list = []
        started = loop.time()
        for _ in range(10):
            pacer.refuse(Caller(loop, sent), REFUSAL, budget=10.0)
        gone = [Caller(loop, sent, abandoned=True) for _ in range(5)]
        waiting = Caller(loop, sent)
        for caller in gone + [waiting]:
            pacer.refuse(caller, REFUSAL, budget=10.0)
        while pacer.held:
            await asyncio.sleep(0.01)
        return gone, waiting.at - started, len(sent)

    gone, waited, sent = _run(scenario)
    assert all(caller.at is None for caller in gone) and sent == 11
    assert 0.05 <= waited <= 0.25, waited  # the first turn after the allowance, not the sixth (0.6 s)


class Counters:
    """A stand-in for the loop's CPU clock, the CPU of the handler's steps it ran and the admitted count."""

    def __init__(self):
        self.cpu, self.steps, self.admitted = 0.0, 0.0, 0

    def window(self, cost: RefusalCost, http: float, steps: float = 0.0, admitted: int = 0,
               refused: int = 0) -> None:
        self.cpu += http + steps
        self.steps += steps
        self.admitted += admitted
        cost.refused += refused
        cost.sample()


def _cost(counters: Counters, **kwargs) -> RefusalCost:
    return RefusalCost(lambda: counters.admitted, lambda: counters.steps, cpu_clock=lambda: counters.cpu, **kwargs)


def test_the_refusal_rate_is_a_share_of_a_core_over_the_loops_http_cpu_per_request():
    counters = Counters()
    cost = _cost(counters, cpu_share=0.15, most=2000.0, fewest=250.0)
    assert cost.rate == 2000.0  # nothing measured yet: the most
    for _ in range(30):  # calm: 100 admitted a window, 1 ms of steps each: no refusal, nothing learnt
        counters.window(cost, http=0.03, steps=0.1, admitted=100)
    assert cost.per_refusal is None and cost.rate == 2000.0
    for _ in range(30):  # a storm: 50 admitted (50 ms of steps) and 250 refusals, 300 us of HTTP per request
        counters.window(cost, http=300 * 300e-6, steps=0.05, admitted=50, refused=250)
    assert abs(cost.per_refusal - 300e-6) < 3e-6, cost.per_refusal  # the steps' CPU is not the refusals'
    assert abs(cost.rate - 500.0) < 5.0, cost.rate  # 0.15 of a core / 300 us
    for _ in range(5):  # windows with too few refusals to say what one costs change nothing
        counters.window(cost, http=0.05, admitted=50, refused=MIN_REFUSALS_PER_WINDOW - 1)
    assert abs(cost.rate - 500.0) < 5.0, cost.rate
    for _ in range(30):  # the same storm where a request costs the loop 50 us: no more than the most
        counters.window(cost, http=300 * 50e-6, steps=0.05, admitted=50, refused=250)
    assert cost.rate == 2000.0
    for _ in range(30):  # where it costs 2 ms: no fewer than the fewest
        counters.window(cost, http=300 * 2e-3, steps=0.05, admitted=50, refused=250)
    assert cost.rate == 250.0


def test_the_pacer_follows_the_measured_cost_on_the_loop():
    async def scenario(loop):
        counters = Counters()
        cost = _cost(counters, cpu_share=0.15, most=2000.0, fewest=100.0)
        pacer = RefusalPacer(loop, cost=cost, burst_seconds=0.25)
        rates = [pacer.rate]
        pacer.start()
        counters.cpu += 0.06  # the first window: 200 refusals decided and 60 ms of the loop's CPU, 300 us each
        sent: list = []
        for _ in range(200):
            pacer.refuse(Caller(loop, sent), REFUSAL, budget=10.0)
        await asyncio.sleep(COST_WINDOW_SECONDS * 1.5)
        rates.append(pacer.rate)
        pacer.stop()
        return rates, cost.refused

    rates, refused = _run(scenario)
    assert refused == 200
    assert rates[0] == 2000.0 and abs(rates[1] - 500.0) < 1.0, rates


def test_a_burst_allowance_granted_before_a_fall_in_the_rate_is_still_sent_at_once():
    async def scenario(loop):
        counters = Counters()
        cost = _cost(counters, cpu_share=0.15, most=2000.0, fewest=100.0)
        pacer = RefusalPacer(loop, cost=cost, burst_seconds=0.25)  # 500 may go at once
        pacer.start()
        sent: list = []
        for _ in range(20):  # the head of a burst of new connections, 15 ms of the loop's CPU each
            pacer.refuse(Caller(loop, sent), REFUSAL, budget=10.0)
        counters.cpu += 20 * 0.015
        await asyncio.sleep(COST_WINDOW_SECONDS * 1.5)
        rate = pacer.rate
        for _ in range(300):  # the rest of the burst, read after the window closed
            pacer.refuse(Caller(loop, sent), REFUSAL, budget=10.0)
        pacer.stop()
        return rate, len(sent), pacer.held

    rate, sent, held = _run(scenario)
    assert rate == 100.0  # the fewest: 0.15 of a core / 15 ms
    assert (sent, held) == (320, 0)  # within the 500 granted at the start, whatever the rate became
