"""The event loop runs a request's decode and encode itself only while they are measured cheap
(runtime/batching/inline_policy.py): a slow step goes to a request thread, so the loop keeps answering."""

from __future__ import annotations

import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from podserve import metric_names
from podserve.runtime.batching import inline_policy
from podserve.runtime.batching.inline_policy import (INLINE_SECONDS, STALL_PENALTY, STALL_SECONDS, WARMUP_STEPS,
                                                     LoopRelief, StepCost)
from podserve.testbed.processes import poll_until

LOOP_THREAD = "MainThread"  # processes/one_process.py runs the event loop in the process's main thread
REQUEST_THREAD = "request-0"


@pytest.fixture
def clock(monkeypatch):
    """A fake time.monotonic for inline_policy, moved by hand."""
    now = [1000.0]
    monkeypatch.setattr(inline_policy.time, "monotonic", lambda: now[0])
    return now


def test_steps_go_to_the_request_threads_until_warmed_up_and_while_their_mean_is_over_the_bound(clock):
    cost = StepCost()
    for _ in range(WARMUP_STEPS - 1):
        cost.observe(0.0001)
        assert not cost.cheap
    cost.observe(0.0001)
    assert cost.cheap
    for _ in range(100):
        cost.observe(INLINE_SECONDS * 1.5)  # a handler that became slower, never stalling
    assert not cost.cheap
    for _ in range(100):
        cost.observe(0.0001)
    assert cost.cheap


def test_one_stall_sends_steps_to_the_request_threads_for_a_hundred_times_as_long(clock):
    cost = StepCost()
    for _ in range(50):
        cost.observe(0.0001)
    stall = 0.03
    cost.observe(stall)
    assert cost.mean < INLINE_SECONDS  # the mean alone would still send the next step to the loop
    assert not cost.cheap
    clock[0] += STALL_PENALTY * stall - 0.01
    cost.observe(0.0001)
    assert not cost.cheap
    clock[0] += 0.02
    assert cost.cheap
    cost.observe(STALL_SECONDS * 0.9)  # slow but not a stall: only the mean sees it, and forgets it
    for _ in range(20):
        cost.observe(0.0001)
    assert cost.cheap


def test_a_slow_first_step_weighs_as_one_of_the_warm_up_steps(clock):
    # A pod's first step runs cold (first parse, first decode) or waits for a busy core: it must not outweigh the
    # warm-up steps after it.
    cost = StepCost()
    cost.observe(INLINE_SECONDS * 5)
    for _ in range(WARMUP_STEPS - 1):
        cost.observe(0.0001)
    assert cost.mean < INLINE_SECONDS
    assert cost.cheap


@pytest.mark.parametrize("stall_seconds", [0.03, 0.3, 3.0])
def test_slow_inputs_mixed_with_cheap_ones_hold_the_loop_about_one_percent_of_the_time(clock, stall_seconds):
    # A hostile caller sends an input that decodes slowly (a crafted image) whenever the loop would take it
    # itself, between cheap requests: only the stalls that ran in the loop count against it.
    cost, in_loop, began = StepCost(), 0.0, clock[0]
    while clock[0] - began < 600:
        if cost.cheap:
            in_loop += stall_seconds
            cost.observe(stall_seconds)
            clock[0] += stall_seconds
        else:
            cost.observe(0.0005)  # a cheap request, on a request thread meanwhile
            clock[0] += 0.0005
    share = in_loop / (clock[0] - began)
    assert 0 < share <= 1.05 / STALL_PENALTY, share


def test_relief_only_with_requests_queued_past_the_lanes_and_a_whole_core_idle(clock, monkeypatch):
    cpu = [5.0]
    monkeypatch.setattr(inline_policy.time, "process_time", lambda: cpu[0])
    in_flight = [64]
    relief = LoopRelief(4.0, lambda: in_flight[0], lambda: 16)  # a pod of 4 cores, one lane taking 16 a run

    def one_second_using(cores: float) -> None:
        clock[0] += 1.0
        cpu[0] += cores
        relief.sample()

    one_second_using(2.5)  # GPU lanes wait on the device: the loop and the request threads use 2.5 cores
    assert relief.wanted
    in_flight[0] = 16  # no more than the lane takes in one run: nothing queues behind the loop
    assert not relief.wanted
    in_flight[0] = 64
    one_second_using(3.2)  # CPU lanes busy on the cores: a step handed off would wait for one
    assert not relief.wanted
    one_second_using(3.0)
    assert relief.wanted


def _ask(server, decode_seconds: float = 0.0) -> dict:
    answer = server.post({"data": [1, 2, 3, 4], "postid": str(decode_seconds)})
    assert answer.status_code == 200, answer.text
    results = answer.json()["results"]
    assert results["y"] == [3.0, 5.0, 7.0, 9.0]
    return results


def test_cheap_steps_move_to_the_loop_and_a_stall_sends_them_back_while_the_loop_keeps_answering(start_server,
                                                                                                    affine_model):
    server = start_server(handler="fixture_handlers:WhereStepsRun", model_path=str(affine_model), http_threads=1)
    for _ in range(WARMUP_STEPS):
        assert _ask(server) == {"y": [3.0, 5.0, 7.0, 9.0], "decoded_by": REQUEST_THREAD,
                                "encoded_by": REQUEST_THREAD}
    # Measured cheap, steps move to the loop: at once on a quiet machine. A step the machine slowed (the wall clock
    # counts waits for a core) delays that until it is forgotten: over about 1/WEIGHT steps, or for STALL_PENALTY
    # times as long past STALL_SECONDS (a 50 ms one: 5 s). Hence a bound in time, not in requests.
    poll_until(lambda: _ask(server) == {"y": [3.0, 5.0, 7.0, 9.0], "decoded_by": LOOP_THREAD,
                                        "encoded_by": LOOP_THREAD},
               "the loop decoding and encoding a cheap request itself", timeout=20, every=0)

    # The loop cannot know that a decode will be slow: the first one runs wherever the cheap ones did (the loop,
    # unless the machine stalled the step just before), and is measured there.
    _ask(server, decode_seconds=0.1)
    # Then every decode goes to the request thread for STALL_PENALTY times that (10 s), and the loop stays free.
    slow: dict = {}
    caller = threading.Thread(target=lambda: slow.update(_ask(server, decode_seconds=1.0)))
    caller.start()
    time.sleep(0.2)
    began = time.monotonic()
    pings = [requests.get(server.url("/api/ping"), timeout=5).status_code for _ in range(5)]
    assert pings == [200] * 5 and time.monotonic() - began < 0.5
    caller.join()
    assert slow["decoded_by"] == REQUEST_THREAD
    assert _ask(server)["decoded_by"] == REQUEST_THREAD


def test_cheap_steps_go_to_the_request_threads_while_requests_queue_past_a_lane_that_holds_no_core(start_server,
                                                                                                   affine_model,
                                                                                                   tmp_path):
    # A lane that waits in predict, as one waiting on a GPU does, taking one input a run: with 6 callers in flight 5
    # queue while the process idles on 2 cores, and the loop hands even cheap steps to the request thread.
    assert len(os.sched_getaffinity(0)) >= 2, "the test needs a core idle beside the event loop"
    gate = tmp_path / "gate"  # while it is there the lane waits: every caller is in flight before the first answer
    server = start_server(handler="fixture_handlers:WaitsOnDevice", model_path=str(affine_model), http_threads=1,
                          max_batch_size=1, cpu=2, TEST_PREDICT_SLEEP="0.05", TEST_PREDICT_GATE=str(gate))
    poll_until(lambda: _ask(server)["decoded_by"] == LOOP_THREAD, "the loop decoding a cheap request itself",
               timeout=20, every=0)
    assert server.metric_sum(metric_names.LOOP_RELIEF) == 0
    gate.touch()
    with ThreadPoolExecutor(6) as callers:
        try:
            answers = callers.map(lambda _: _ask(server), range(6))
            # However slowly the callers arrive (a busy machine may start one thread long after another), none is
            # answered before all six are in flight; the gauge shows the relief meanwhile.
            poll_until(lambda: server.metric_sum(metric_names.IN_FLIGHT) == 6, "all six callers in flight", timeout=20)
            poll_until(lambda: server.metric_sum(metric_names.LOOP_RELIEF) == 1, "the relief on /metrics", timeout=5)
        finally:
            gate.unlink()
        decoded_by = [answer["decoded_by"] for answer in answers]
    # Only the request that found no other in flight, the first to arrive, may have been decoded by the loop.
    assert decoded_by.count(REQUEST_THREAD) >= 5, decoded_by
    assert server.metric_sum(metric_names.LOOP_RELIEF) == 0  # nothing in flight
    # One at a time again, the loop takes them (once any step the burst slowed past STALL_SECONDS is forgotten).
    poll_until(lambda: _ask(server)["decoded_by"] == LOOP_THREAD, "the loop decoding again", timeout=20, every=0)


def test_in_the_loop_a_finished_batch_is_answered_before_the_begins_still_waiting_for_their_turn(monkeypatch):
    """Where the loop serves HTTP, past a turn's first BEGIN_TURN_SECONDS it begins what one turn read in turns; a
    batch that finishes meanwhile is encoded and answered between them, not behind every decode read with it (a CPU
    pod's tail at 64 callers, issue 70). Within that time, and in a decoder's loop, each begins at once."""
    import asyncio

    from podserve.runtime.batching.step_runner import StepRunner

    ran: list[str] = []

    def warm() -> StepCost:
        cost = StepCost()
        for _ in range(WARMUP_STEPS):
            cost.observe(0.0001)
        return cost

    def begin(call: str) -> None:
        ran.append(call)
        if call == "begin-1":  # a batch finishes on its thread while the loop decodes
            done = threading.Thread(target=runner.finish, args=(["batch-A"],))
            done.start()
            done.join()

    async def run() -> None:
        runner.start(asyncio.get_running_loop())
        for n in range(1, 5):  # what one turn of the loop read
            runner.begin(f"begin-{n}", 100)
        while len(ran) < 5:
            await asyncio.sleep(0.001)

    in_turns = ["begin-1", "batch-A", "begin-2", "begin-3", "begin-4"]
    at_once = ["begin-1", "begin-2", "begin-3", "begin-4", "batch-A"]
    for turn_seconds, order in ((0.0, in_turns),  # one begin a turn
                                (3600.0, at_once),  # within a turn's time: at once, as at low concurrency
                                (None, at_once)):  # a decoder's loop
        ran.clear()
        runner = StepRunner(1, LoopRelief(1.0, lambda: 0, lambda: 0), begin, lambda items: ran.extend(items),
                            lambda job, exc: ran.append(f"failed {job}: {exc!r}"), costs=warm,
                            begin_turn_seconds=turn_seconds)
        try:
            asyncio.run(run())
        finally:
            runner.stop()
        assert ran == order, turn_seconds
