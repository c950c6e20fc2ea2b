"""Per-request metrics observed in an event loop's thread apply at the end of its turn (Metrics.defer_per_turn): the
same exposition as one observation at a time, and counted before anything the turn queued to write leaves."""

from __future__ import annotations

import asyncio
import threading

import uvloop
from hypothesis import given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, generate_latest

from podserve import metric_names as names
from podserve.metric_names import LATENCY_BUCKETS
from podserve.runtime.core.metrics import Metrics, observe_all

SERVICE, ROUTE = "svc", "/api/svc"
LABELS = {"service": SERVICE, "route": ROUTE, "status": "200", names.ORIGIN_LABEL: names.ORIGIN_LIVE}


def _exposition(registry: CollectorRegistry) -> list[str]:
    return [line for line in generate_latest(registry).decode().splitlines() if "_created" not in line]


def _counts(registry: CollectorRegistry) -> tuple[float, float, float]:
    """Requests counted, their latencies' sum, and the decode verb's CPU seconds (0 where a series is not there)."""
    def value(name: str, labels: dict) -> float:
        return registry.get_sample_value(name, labels) or 0.0
    return (value(names.REQUESTS_TOTAL, LABELS), value(names.REQUEST_SECONDS + "_sum", LABELS),
            value(names.VERB_CPU_SECONDS + "_total", {"service": SERVICE, "verb": "decode"}))


def _on_uvloop(turn) -> None:
    """Run the coroutine function `turn` on uvloop, as the pod's processes run their loops."""
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(turn())


@hypothesis_settings(max_examples=200, deadline=None)
@given(st.lists(st.one_of(st.sampled_from(LATENCY_BUCKETS), st.floats(0, 100, allow_nan=False)), max_size=40))
def test_observing_latencies_all_at_once_exposes_what_observing_them_one_at_a_time_does(latencies):
    """Bounds included (a latency equal to a bucket's bound is in that bucket), as prometheus_client's observe puts it."""
    one_at_a_time, all_at_once = CollectorRegistry(), CollectorRegistry()
    histogram = Metrics(SERVICE, one_at_a_time).request_seconds.labels(*LABELS.values())
    for latency in latencies:
        histogram.observe(latency)
    observe_all(Metrics(SERVICE, all_at_once).request_seconds.labels(*LABELS.values()), latencies)
    assert _exposition(all_at_once) == _exposition(one_at_a_time)


def test_a_turn_s_observations_apply_when_it_ends_before_what_it_queued_to_write():
    registry = CollectorRegistry()
    metrics = Metrics(SERVICE, registry)
    seen = {}

    async def turn() -> None:
        loop = asyncio.get_running_loop()
        metrics.defer_per_turn(loop)
        metrics.observe_verb_cpu("decode", 0.25)
        metrics.observe_request(ROUTE, 200, 0.003)
        metrics.observe_verb_cpu("decode", 0.5)
        seen["during the turn"] = _counts(registry)
        loop.call_soon(lambda: seen.setdefault("when its answer leaves", _counts(registry)))  # as a link's flush
        await asyncio.sleep(0)
        metrics.observe_request(ROUTE, 200, 0.001)
        await asyncio.sleep(0)
        seen["the next turns"] = _counts(registry)

    _on_uvloop(turn)
    assert seen == {"during the turn": (0.0, 0.0, 0.0), "when its answer leaves": (1.0, 0.003, 0.75),
                    "the next turns": (2.0, 0.004, 0.75)}


def test_once_the_loop_has_closed_its_thread_s_observations_apply_at_once():
    registry = CollectorRegistry()
    metrics = Metrics(SERVICE, registry)

    async def turn() -> None:
        metrics.defer_per_turn(asyncio.get_running_loop())

    _on_uvloop(turn)
    metrics.observe_request(ROUTE, 200, 0.005)  # a shutdown's last answers, after the loop
    metrics.observe_verb_cpu("decode", 0.5)
    assert _counts(registry) == (1.0, 0.005, 0.5)


def test_other_threads_observe_at_once_and_a_flush_from_any_thread_applies_what_the_turn_deferred():
    registry = CollectorRegistry()
    metrics = Metrics(SERVICE, registry)
    seen = {}

    def control_thread() -> None:  # another thread: a request thread's answer, then a scrape of /metrics
        metrics.observe_request(ROUTE, 200, 0.002)
        seen["another thread's, at once"] = _counts(registry)
        metrics.flush()
        seen["after a flush there"] = _counts(registry)

    async def turn() -> None:
        metrics.defer_per_turn(asyncio.get_running_loop())
        metrics.observe_request(ROUTE, 200, 0.001)
        thread = threading.Thread(target=control_thread)
        thread.start()
        thread.join()
        await asyncio.sleep(0)
        seen["after the turn"] = _counts(registry)

    _on_uvloop(turn)
    assert seen == {"another thread's, at once": (1.0, 0.002, 0.0), "after a flush there": (2.0, 0.003, 0.0),
                    "after the turn": (2.0, 0.003, 0.0)}
