"""The door's 503s are paced: at once within the rate, beyond it held in order, never past their limit.

RefusalPacer on the server's own event loop (uvloop); the exchanges are stand-ins that record when their
answer was sent (the real server path is covered by test_sustained_overload.py).
"""

from __future__ import annotations

import asyncio

import uvloop

from podserve.runtime.httpserver import Answer
from podserve.runtime.refusals import RefusalPacer

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
