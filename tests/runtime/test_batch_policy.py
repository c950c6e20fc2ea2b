"""The batching policy: a batch waits for more inputs only while a fuller one would cost less per input."""

from __future__ import annotations

import random
import threading
import time

import pytest

from podserve.handler import Handler
from podserve.runtime.batching.batch_policy import BatchCost
from podserve.runtime.batching.batcher import BatchWorker, WorkItem, largest_batch
from podserve.testbed.processes import poll_until

MAX = 16


def _learnt(fixed: float, per_item: float, noise: float = 0.02) -> BatchCost:
    """A BatchCost that has seen calls of every size costing fixed + per_item x n (+-noise)."""
    cost, rng = BatchCost(), random.Random(7)
    for _ in range(5):
        for size in range(1, MAX + 1):
            cost.observe(size, (fixed + per_item * size) * (1 + rng.uniform(-noise, noise)))
    return cost


def test_the_cost_of_a_call_is_learnt_as_fixed_plus_per_input():
    cost = _learnt(fixed=0.020, per_item=0.0002)
    assert cost.fixed == pytest.approx(0.020, rel=0.1) and cost.per_item == pytest.approx(0.0002, rel=0.2)


def test_a_gpu_like_cost_keeps_waiting_until_the_batch_is_full():
    cost = _learnt(fixed=0.020, per_item=0.0002)  # a GPU: the run's own cost dwarfs each input's
    assert [cost.worth_waiting(k, MAX) for k in range(1, MAX + 1)] == [True] * (MAX - 1) + [False]


def test_a_cpu_like_cost_runs_at_once():
    cost = _learnt(fixed=0.00001, per_item=0.0003)  # a CPU: each input costs about the same alone or batched
    assert not any(cost.worth_waiting(k, MAX) for k in range(1, MAX + 1))


def test_between_the_two_it_waits_only_while_a_fuller_batch_still_saves_enough():
    cost = _learnt(fixed=0.001, per_item=0.0003)
    waits = [cost.worth_waiting(k, MAX) for k in range(1, MAX + 1)]
    # 1 ms a call and 0.3 ms an input: with k queued a full batch saves (1/k - 1/16) ms of (1/k + 0.3) ms per input:
    # 5.4% at k = 12, 3.8% at k = 13 (the bar is 5%).
    assert waits == [True] * 12 + [False] * 4
    assert waits == sorted(waits, reverse=True)  # once not worth it, never worth it again for a larger batch


def test_a_queue_emptied_while_filling_has_nothing_to_wait_for():
    """Requests withdrawn while a batch fills (their callers hung up) can leave it empty: that must not raise in the
    batch thread, which would wedge the instance (found by make bench: ZeroDivisionError, every batch thread dead)."""
    for cost in (_learnt(fixed=0.02, per_item=0.0002), _learnt(fixed=0.0, per_item=0.001), BatchCost()):
        assert cost.worth_waiting(0, MAX) is False


def test_a_worker_whose_queue_empties_while_a_batch_fills_keeps_serving():
    # The batch thread asks `more_coming` each time it decides whether to go on holding its batch open for more,
    # under the worker's lock: a call with the queue not empty is the thread filling a batch; a call after the queue
    # was emptied is the thread deciding on the empty queue (where a ZeroDivisionError once killed it).
    asked: list[int] = []  # the queue's depth at each call
    filling = threading.Event()

    def more_coming() -> bool:
        decided_on_empty = 0 in asked
        asked.append(worker.depth)
        filling.set()
        return not decided_on_empty  # more are coming until then; after, `stays` runs at once

    worker = BatchWorker("w", _Costs(0.001, 0.0), max_batch_size=MAX, max_batch_delay=1.0, capacity=16,
                         more_coming=more_coming,
                         cost=_learnt(fixed=1.0, per_item=0.0002))  # worth holding for the whole 1 s delay
    worker.start()
    try:
        gone = WorkItem("gone", None, time.monotonic() + 30)
        worker.submit(gone)
        assert filling.wait(10), "the batch thread never began to fill a batch"
        assert worker.withdraw(gone), asked  # the thread holds its batch open (for up to 1 s) with `gone` in it
        # Past the delay the thread looks again and finds the queue empty: it takes an empty queue's batch.
        poll_until(lambda: 0 in asked, "the batch thread deciding on the emptied queue", timeout=10, every=0.01)
        stays = WorkItem("stays", None, time.monotonic() + 30)
        worker.submit(stays)
        assert stays.wait() == "stays" and worker.threads_alive
    finally:
        worker.stop(timeout=10)


def test_a_lane_holds_its_batch_open_no_longer_than_one_call_costs():
    """Holding idles the lane's device: past one call's fixed cost (what a fuller batch saves) it loses more than it
    gains. A GPU's 20 ms call keeps value.py's 5 ms delay; a CPU call's 0.3 ms caps it at 0.3 ms."""
    assert _learnt(fixed=0.020, per_item=0.0002).longest_worth_holding(0.005) == 0.005
    assert _learnt(fixed=0.0003, per_item=0.0003, noise=0).longest_worth_holding(0.005) == pytest.approx(0.0003)
    assert BatchCost().longest_worth_holding(0.005) == 0.005  # not yet measured: value.py's delay


def test_until_two_sizes_were_seen_it_waits_as_before():
    cost = BatchCost()
    cost.observe(4, 0.01)
    cost.observe(4, 0.011)
    assert cost.fixed is None and cost.worth_waiting(1, MAX)


#: Measured on an H200 with the example classifier (../shared/notes/gpu.md): a run of 1 input 1.4 ms, a run of 64
#: 2.5 ms; at load its runs are timed unpadded at 1 and padded to max_batch_size (Handler.run_costs).
H200_RUNS = ((1, 0.0014), (64, 0.0025))


def _padded(runs=H200_RUNS, padded_size: int = 64) -> BatchCost:
    cost = BatchCost(padded_size)
    for rows, seconds in runs:
        cost.observe_rows(rows, seconds)
    return cost


def test_padded_calls_cost_what_their_rows_do_whatever_their_inputs():
    """Every call padded to 64 rows costs the 64 rows' 2.5 ms: waiting for a fuller batch is worth it until the
    saving is under 5% (60 inputs of 64), and a lane holds its batch at most what one more call costs."""
    cost = _padded()
    assert cost.per_item == pytest.approx(0.0011 / 63) and cost.fixed == pytest.approx(0.0014 - 0.0011 / 63)
    assert cost.call_seconds(1) == cost.call_seconds(64) == pytest.approx(0.0025)
    assert [cost.worth_waiting(k, 64) for k in range(1, 65)] == [True] * 60 + [False] * 4
    assert cost.longest_worth_holding(0.005) == pytest.approx(0.0025 - 0.0011 / 63)
    assert cost.describe() == "1.383 ms per call + 0.017 ms per row, runs padded to 64 rows: 2.500 ms a run"


def _served(cost: BatchCost, rng: random.Random, calls: int) -> None:
    """Calls as a GPU pod serves them at two loads (../shared/notes/gpu.md): quiet, batches of 1-8 in 2.2 ms; busy,
    full batches of 40-64 whose thread waits for the GIL on its way back from the device, 11-25 ms."""
    for i in range(calls):
        if i % 2:
            cost.observe(rng.randint(1, 8), 0.0022)
        else:
            cost.observe(rng.randint(40, 64), rng.uniform(0.011, 0.025))


def test_a_busy_spells_slower_full_batches_do_not_pass_for_a_cost_per_input():
    """Counted by their inputs (as before), the served calls read a cost per input, and the policy stops waiting
    before a batch is 3/4 full, though a padded call of 40 costs what one of 64 does. Counted by the rows they run,
    they only move what a call costs: the policy waits for full batches, and what a row costs stays the timed
    runs' (not the 0.000 ms an input the padded warm-up read)."""
    by_inputs, by_rows = BatchCost(), _padded()
    by_inputs.observe(1, 0.0025)  # the warm-up's timed batches, both padded to 64 rows
    by_inputs.observe(64, 0.0025)
    by_rows.observe(1, 0.0025)
    by_rows.observe(64, 0.0025)
    assert by_inputs.per_item < 1e-12 and by_inputs.describe().endswith("+ 0.000 ms per input")
    for cost in (by_inputs, by_rows):
        _served(cost, random.Random(3), 400)
    assert by_inputs.per_item > 0.0001  # the busy spell passed for 0.1+ ms an input
    assert not by_inputs.worth_waiting(48, 64)
    assert [by_rows.worth_waiting(k, 64) for k in range(1, 65)] == [True] * 60 + [False] * 4
    assert by_rows.per_item == pytest.approx(0.0011 / 63)
    # What a call costs follows the calls: between the quiet 2.2 ms and the busy 11-25 ms.
    assert 0.004 < by_rows.call_seconds(64) < 0.015


class _Costs(Handler):
    """A handler whose predict sleeps fixed + per_item x n seconds."""

    def __init__(self, fixed: float, per_item: float):
        self.fixed, self.per_item = fixed, per_item

    def predict(self, batch):
        time.sleep(self.fixed + self.per_item * len(batch))
        return list(batch)


@pytest.mark.parametrize("kind, fixed, per_item", [("gpu", 0.030, 0.0005), ("cpu", 0.0, 0.001)])
def test_a_worker_batches_a_steady_stream_as_its_measured_cost_says(kind, fixed, per_item):
    """A stream of 60 inputs, one every 2 ms, with 50 ms of batch delay allowed and more always said to be coming.
    GPU-like: batches fill up while a run is on. CPU-like (1 ms an input, no cost per call, so the worker keeps
    up): no batch waits for the delay, so inputs wait about a run, not tens of milliseconds."""
    cost = _learnt(fixed, per_item)
    worker = BatchWorker(kind, _Costs(fixed, per_item), max_batch_size=MAX, max_batch_delay=0.050, capacity=256,
                         cost=cost)
    worker.start()
    items = []
    try:
        for i in range(60):
            item = WorkItem(i, None, time.monotonic() + 30)
            worker.submit(item)
            items.append(item)
            time.sleep(0.002)
        assert [item.wait() for item in items] == list(range(60))
    finally:
        worker.stop(timeout=10)
    sizes = [item.batch_size for item in items]
    held = [item.fill_seconds for item in items]  # what podserve_batch_fill_wait_seconds_total adds up
    assert all(0 <= h <= item.queue_seconds for h, item in zip(held, items))
    if kind == "gpu":
        assert sum(sizes) / len(sizes) >= 8, sizes  # an input sits in a batch of 8 or more on average
        assert held[0] > 0  # the first input waited for company
    else:
        waits = sorted(item.queue_seconds for item in items)
        # Waiting for the delay would put most inputs' queue wait near 50 ms; running at once keeps it near a run.
        assert waits[len(waits) // 2] < 0.010, waits


class _Runs(Handler):
    """A CPU-like handler: two lanes, runs of one input; the run of input 0 blocks until `release` is set."""

    concurrent_batches = 2
    run_size = 1
    run_seconds = 0.010

    def __init__(self):
        self.release = threading.Event()
        self.calls: list[list] = []

    def predict(self, batch):
        self.calls.append(list(batch))
        if 0 in batch:
            self.release.wait(10)
        return list(batch)


def test_a_lane_takes_one_run_and_leaves_the_rest_to_a_free_lane():
    """A handler that runs a batch as runs in turn (the CPU's OnnxHandler) gets one run per predict call: a lane that
    took more would hold inputs behind its first run while the other lane, free, could start them (the heavy
    model's p99 at c=8 was 2.3x Gunicorn's so). Here the run of input 0 blocks; inputs 1 to 5 must not wait for it."""
    handler = _Runs()
    worker = BatchWorker("w", handler, max_batch_size=MAX, max_batch_delay=0.005, capacity=16)
    answered = {i: threading.Event() for i in range(6)}
    for i in range(6):  # queued before either lane looks, so both find all six
        worker.submit(WorkItem(i, None, time.monotonic() + 30,
                               on_done=lambda items: [answered[item.input].set() for item in items]))
    worker.start()
    try:
        for i in range(1, 6):
            assert answered[i].wait(5), f"input {i} waits behind the blocked run of input 0; calls: {handler.calls}"
        assert not answered[0].is_set()
    finally:
        handler.release.set()
        worker.stop(timeout=10)
    assert answered[0].is_set() and sorted(map(len, handler.calls)) == [1] * 6, handler.calls


def test_a_call_gets_one_run_or_as_many_as_fit_in_the_batch_delay():
    class Cpu(Handler):
        run_size = 2

    short, long = Cpu(), Cpu()
    short.run_seconds, long.run_seconds = 0.002, 0.040  # the example's runs of 2; a detector's
    assert largest_batch(short, MAX, 0.005) == 4  # two runs fit in 5 ms
    assert largest_batch(long, MAX, 0.005) == 2  # one run, however long
    assert largest_batch(short, 3, 0.005) == 3  # never past max_batch_size
    assert largest_batch(Cpu(), MAX, 0.005) == 2  # run time not measured: one run
    assert largest_batch(_Costs(0.0, 0.0), MAX, 0.005) == MAX  # runs the whole batch at once (a GPU's): unchanged



class _TwoLanes(_Costs):
    concurrent_batches = 2


@pytest.mark.parametrize("queued, busy_lane, taken", [
    (4, None, 2),  # both lanes free: half each
    (4, 0.0109, 2),  # the other lane's call of 10 (11 ms by the cost) ends in 0.1 ms: it gets half
    (4, 0.0, 4),  # it has just started that call: this lane would finish all 4 long before it could start one
    (3, None, 3),  # less than a call's worth: all of it, and the other lane stays free
])
def test_a_free_lane_takes_what_it_would_finish_before_any_other_lane(queued, busy_lane, taken):
    """Two lanes (the CPU's one per core), calls of up to 4, a cost of 1 ms a call and 1 ms an input: with a call's
    worth queued each input goes to the lane that would finish it first, a busy lane counting from when its call
    should end. A lane that took all four while the other is about to be free kept the last ones waiting behind its
    own call (the example's p99 at 8 callers); one that left half to a lane that has just started would keep them
    waiting as long."""
    worker = BatchWorker("w", _TwoLanes(0.001, 0.001), max_batch_size=4, max_batch_delay=0.005, capacity=16,
                         more_coming=lambda: False, cost=_learnt(fixed=0.001, per_item=0.001, noise=0.0))
    for i in range(queued):  # the lanes are never started: the test takes lane 0's batch itself
        worker.submit(WorkItem(i, None, time.monotonic() + 30))
    with worker._cond:
        if busy_lane is None:
            worker._idle_lanes = 2
        else:
            worker._idle_lanes = 1
            worker._runs[1] = (10, time.monotonic() - busy_lane)  # a stall here only brings its end nearer
        batch, expired = worker._take_batch(0)
    assert [item.input for item in batch] == list(range(taken)) and expired == []
    assert worker.depth == queued - taken


class _Held(_TwoLanes):
    """Two lanes, calls of up to 4; a call with input "hold" blocks until `release` is set."""

    def __init__(self):
        super().__init__(0.0, 0.0)
        self.release = threading.Event()

    def predict(self, batch):
        if "hold" in batch:
            self.release.wait(30)
        return list(batch)


def test_a_second_call_starts_beside_a_busy_lane_only_for_a_calls_worth_or_after_the_batch_delay():
    """A call beside another lane's shares a core with the event loop on a CPU, and its inputs finish last (the
    example's tail at 8 callers). While less than a call's worth is queued, a free lane leaves it to the busy lane
    whose call should end (by the measured cost: 1 ms) before the oldest input has waited the batch delay, and starts
    it itself once the delay has passed (here the busy lane is held, so it never ends); a call's worth it starts at
    once."""
    delay = 1.0
    handler = _Held()
    worker = BatchWorker("w", handler, max_batch_size=4, max_batch_delay=delay, capacity=16,
                         more_coming=lambda: False, cost=_learnt(fixed=0.001, per_item=0.0, noise=0.0))
    worker.start()
    try:
        held = WorkItem("hold", None, time.monotonic() + 60)
        worker.submit(held)
        poll_until(lambda: worker.running == 1, "a lane running the held input", timeout=10, every=0.001)
        few = [WorkItem(i, None, time.monotonic() + 60) for i in range(2)]
        for item in few:
            worker.submit(item)
        assert [item.wait() for item in few] == [0, 1]
        assert min(item.queue_seconds for item in few) >= delay * 0.99  # left to the busy lane until the delay
        full = [WorkItem(i, None, time.monotonic() + 60) for i in range(2, 6)]
        for item in full:
            worker.submit(item)
        assert [item.wait() for item in full] == [2, 3, 4, 5]
        assert min(item.queue_seconds for item in full) < delay / 2  # a call's worth: a call started at once
        assert held.state != "done"
    finally:
        handler.release.set()
        worker.stop(timeout=10)
