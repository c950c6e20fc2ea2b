"""A full queue answers 503 with Retry-After at once; a request still queued at its deadline gets 504, unrun."""

from __future__ import annotations

import threading
import time

import requests
from fixture_handlers import held_batches
from load import burst

from podserve.testbed.processes import poll_until

# cpu=1: one core, so the instance runs one batch at a time (on more cores it runs one per core at once).
SLOW = {"handler": "fixture_handlers:SlowAffine", "ins_num_per_gpu": 1, "max_batch_size": 1, "cpu": 1,
        "TEST_PREDICT_SLEEP": 0.6}


def test_full_queue_answers_503_with_retry_after(start_server, affine_model):
    server = start_server(model_path=str(affine_model), queue_size=2, **SLOW)
    replies = burst(server.api, [{"json": {"postid": str(i), "data": [i]}} for i in range(12)])
    statuses = sorted(r.status_code for r in replies)
    # The pod holds queue_size = 2 requests (one runs, one waits); the other ten are turned away at the door,
    # not queued invisibly in the server or the kernel.
    assert statuses == [200] * 2 + [503] * 10, statuses
    for reply in replies:
        if reply.status_code == 503:
            assert reply.headers["Retry-After"] == "1"
            assert reply.json()["error"] == "overloaded"
    assert server.metric_sum("podserve_batch_size_count") == 2


def _send_in_background(server, body, headers=None) -> dict:
    result: dict = {}

    def send() -> None:
        started = time.monotonic()
        reply = requests.post(server.api, json=body, headers=headers, timeout=30)
        result.update(status=reply.status_code, body=reply.json(), seconds=time.monotonic() - started)

    thread = threading.Thread(target=send)
    thread.start()
    result["thread"] = thread
    return result


def _probe_after(server) -> None:
    """Send one more request and wait for its answer: one lane takes the queue in order, so whatever was queued
    before it has run (and been counted) by then."""
    reply = server.post({"postid": "probe", "data": [4]})
    assert reply.status_code == 200 and reply.json()["results"] == [9.0], reply.text


def test_request_queued_past_its_deadline_gets_504_and_is_not_run(start_server, affine_model, tmp_path):
    gate = tmp_path / "gate"  # while it is there, predict waits: `first` runs until the test lets it finish
    # `first` runs past its 2 s deadline: a batch that has started gets the pod's grace (1 s) to end.
    server = start_server(model_path=str(affine_model), request_timeout_ms=2000, **{**SLOW, "TEST_PREDICT_SLEEP": 0},
                          TEST_PREDICT_GATE=str(gate))
    gate.touch()
    try:
        first = _send_in_background(server, {"postid": "runs", "data": [1]})
        poll_until(lambda: held_batches(gate) == [1], "`first` inside its predict", timeout=20, every=0.01)
        # A caller may lower its deadline but not raise it: asking for 5 s still gets the server's 2 s.
        second = _send_in_background(server, {"postid": "waits", "data": [2]}, {"X-Request-Timeout-Ms": "5000"})
        third = _send_in_background(server, {"postid": "hurries", "data": [3]}, {"X-Request-Timeout-Ms": "50"})
        for result in (second, third):
            result["thread"].join(10)
            # The 504s come when their deadlines pass, while the running request is still in its predict.
            assert not result["thread"].is_alive(), "no answer while the running request held the instance"
        assert first["thread"].is_alive()
    finally:
        gate.unlink(missing_ok=True)
    first["thread"].join()
    assert first["status"] == 200 and first["body"]["results"] == [3.0]
    assert second["status"] == 504 and second["body"]["error"] == "deadline_exceeded"
    assert second["seconds"] < 4.5, "the caller's 5 s deadline was used, not the server's 2 s"
    assert third["status"] == 504 and third["body"]["postid"] == "hurries"
    assert third["seconds"] < second["seconds"] < first["seconds"]
    _probe_after(server)
    assert server.metric_sum("podserve_batch_size_count") == 2, "a request past its deadline was run"


def test_time_waiting_for_a_request_thread_counts_against_the_deadline(start_server, affine_model, tmp_path):
    # One request thread, held decoding `first` (at the gate): `second` waits for it in the request threads' queue,
    # and its 200 ms deadline passes there. It is answered 504 when the deadline passes, not when the thread
    # frees (the thread frees only once `second` has its answer), and it is never run.
    gate = tmp_path / "gate"
    server = start_server(model_path=str(affine_model), http_threads=1, handler="fixture_handlers:GatedDecode",
                          TEST_PREDICT_GATE=str(gate))
    gate.touch()
    try:
        first = _send_in_background(server, {"postid": "held", "data": [1]})
        poll_until(lambda: held_batches(gate) == [1], "`first` decoding on the request thread", timeout=20,
                   every=0.01)
        second = _send_in_background(server, {"postid": "0", "data": [2]}, {"X-Request-Timeout-Ms": "200"})
        second["thread"].join(10)
        assert not second["thread"].is_alive(), "`second` was not answered while `first` held the request thread"
    finally:
        gate.unlink(missing_ok=True)
    first["thread"].join()
    assert first["status"] == 200
    assert second["status"] == 504 and second["body"]["error"] == "deadline_exceeded", second
    assert "waiting for a request thread" in second["body"]["msg"]
    assert 0.15 < second["seconds"] < min(2.5, first["seconds"]), (second["seconds"], first["seconds"])
    _probe_after(server)
    assert server.metric_sum("podserve_batch_size_count") == 2, "a request past its deadline was run"
