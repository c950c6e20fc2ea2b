"""Closed-loop callers at 4x and 16x a pod's capacity get paced 503s, and the answered requests stay fast.

The pod: the Affine fixture whose every batch sleeps 20 ms (a stand-in for a model: a fixed
service time), batches of up to 4, holding at most 8 requests (queue_size). Its capacity is
then ~200 req/s, reached at ~8 concurrent callers. Bounded: three 2.5 s windows. Thresholds
carry wide margins, as the machine may be loaded: what must hold is that the pod refuses
instead of queueing, that queueing does not grow with the overload, and that callers retrying
at once get their 503s no faster than the door's pacing allows (runtime/refusals.py).
"""

from __future__ import annotations

from bench.closedloop import run_closed_loop, send_burst
from podserve.metric_names import REFUSAL_RATE
from podserve.runtime.refusals import BURST_SECONDS, HOLD_LIMIT_SECONDS, MIN_REFUSALS_PER_SECOND, REFUSALS_PER_SECOND

PACED = {"handler": "fixture_handlers:SlowAffine", "ins_num_per_gpu": 1, "max_batch_size": 4, "queue_size": 8,
         "max_batch_delay_ms": 2, "TEST_PREDICT_SLEEP": 0.02}
CAPACITY_CLIENTS = 8
WINDOW_S = 2.5


def test_overloaded_pod_sheds_with_fast_503s_and_keeps_answered_latency_bounded(start_server, affine_model):
    server = start_server(model_path=str(affine_model), **PACED)
    body = b'{"postid": "load", "data": [1, 2, 3, 4]}'
    wire = [(f"POST /api/{server.service} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
             f"Content-Length: {len(body)}\r\n\r\n").encode() + body]
    capacity = run_closed_loop("127.0.0.1", server.port, wire, CAPACITY_CLIENTS, WINDOW_S)
    assert capacity.socket_errors == 0 and capacity.count(200) > 50, capacity.latencies.keys()
    at_capacity_p99 = capacity.percentile_ms(200, 99)
    for factor in (4, 16):
        overload = run_closed_loop("127.0.0.1", server.port, wire, factor * CAPACITY_CLIENTS, WINDOW_S)
        summary = (f"{factor}x: {overload.count(200)} x 200 (p99 {overload.percentile_ms(200, 99)} ms), "
                   f"{overload.count(503)} x 503 (p99 {overload.percentile_ms(503, 99)} ms), at capacity p99 "
                   f"{at_capacity_p99} ms, socket errors {overload.socket_errors}")
        assert set(overload.latencies) <= {200, 503}, summary
        assert overload.socket_errors == 0, summary
        assert overload.count(503) > overload.count(200) > 0.3 * capacity.count(200), summary
        assert overload.missing_retry_after == 0, summary
        # Paced: beyond a burst's worth at once, no more refusals a second than the most the door sends; each
        # caller still hears its 503 within the time the pacing needs to reach it at the rate the door publishes
        # (measured from what a refusal costs it), and within the hold limit.
        rate = server.metric_sum(REFUSAL_RATE)
        summary += f", refusal rate {rate:.0f}/s"
        assert MIN_REFUSALS_PER_SECOND <= rate <= REFUSALS_PER_SECOND, summary
        refused_per_s = overload.count(503) / WINDOW_S
        assert refused_per_s <= 1.1 * REFUSALS_PER_SECOND * (1 + BURST_SECONDS / WINDOW_S), summary
        refusing_callers = factor * CAPACITY_CLIENTS - PACED["queue_size"]
        pacing_ms = 1000 * refusing_callers / rate
        assert overload.percentile_ms(503, 50) < max(50.0, at_capacity_p99) + pacing_ms, summary
        assert overload.percentile_ms(503, 99) < 1000 * HOLD_LIMIT_SECONDS + 100, summary
        print(summary)
        # Shed at the door: the answered requests do not queue behind the overload.
        assert overload.percentile_ms(200, 99) < 4 * at_capacity_p99 + 50, summary
    assert server.metric_sum("podserve_requests_total") > 0


def test_a_burst_of_300_connections_is_accepted_and_refused_at_once_not_left_in_the_kernel(start_server,
                                                                                           affine_model):
    # Each batch sleeps 0.6 s and the pod holds 2: two requests are answered, after 0.6 s and 1.2 s. Every other
    # caller must hear 503 long before that, not wait unaccepted in the kernel's accept queue until a slot frees.
    server = start_server(model_path=str(affine_model), handler="fixture_handlers:SlowAffine", max_batch_size=1,
                          queue_size=2, TEST_PREDICT_SLEEP=0.6)
    body = b'{"postid": "burst", "data": [1]}'
    wire = [(f"POST /api/{server.service} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
             f"Content-Length: {len(body)}\r\n\r\n").encode() + body]
    burst = send_burst("127.0.0.1", server.port, wire, 300)
    assert burst.socket_errors == 0 and burst.missing_retry_after == 0
    assert (burst.count(200), burst.count(503)) == (2, 298), burst.latencies.keys()
    assert max(burst.latencies[503]) < 0.5 < min(burst.latencies[200]), (max(burst.latencies[503]),
                                                                            min(burst.latencies[200]))
