"""A full queue answers 503 with Retry-After at once; a request still queued at its deadline gets 504, unrun."""

from __future__ import annotations

import threading
import time

import requests
from load import burst

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


def test_request_queued_past_its_deadline_gets_504_and_is_not_run(start_server, affine_model):
    server = start_server(model_path=str(affine_model), request_timeout_ms=300, **SLOW)
    first = _send_in_background(server, {"postid": "runs", "data": [1]})
    time.sleep(0.2)  # `first` is now inside its 0.6 s predict
    # A caller may lower its deadline but not raise it: asking for 5 s still gets the server's 300 ms.
    second = _send_in_background(server, {"postid": "waits", "data": [2]}, {"X-Request-Timeout-Ms": "5000"})
    third = _send_in_background(server, {"postid": "hurries", "data": [3]}, {"X-Request-Timeout-Ms": "50"})
    for result in (first, second, third):
        result["thread"].join()
    assert first["status"] == 200 and first["body"]["results"] == [3.0]
    assert second["status"] == 504 and second["body"]["error"] == "deadline_exceeded"
    assert third["status"] == 504 and third["body"]["postid"] == "hurries"
    # The 504s came when their deadlines passed, before the running request finished.
    assert third["seconds"] < second["seconds"] < first["seconds"]
    time.sleep(0.7)
    assert server.metric_sum("podserve_batch_size_count") == 1, "a request past its deadline was run"


def test_time_waiting_for_a_request_thread_counts_against_the_deadline(start_server, affine_model):
    # One request thread, busy for 0.6 s decoding `first`: `second` waits for it in the request threads' queue,
    # and its 200 ms deadline passes there. It is answered 504 when the deadline passes, not when the thread
    # frees, and it is never run.
    server = start_server(model_path=str(affine_model), http_threads=1, handler="fixture_handlers:SlowDecode")
    first = _send_in_background(server, {"postid": "0.6", "data": [1]})
    time.sleep(0.2)
    second = _send_in_background(server, {"postid": "0", "data": [2]}, {"X-Request-Timeout-Ms": "200"})
    for result in (first, second):
        result["thread"].join()
    assert first["status"] == 200
    assert second["status"] == 504 and second["body"]["error"] == "deadline_exceeded", second
    assert "waiting for a request thread" in second["body"]["msg"]
    assert 0.15 < second["seconds"] < first["seconds"] - 0.1, (second["seconds"], first["seconds"])
    time.sleep(0.5)
    assert server.metric_sum("podserve_batch_size_count") == 1, "a request past its deadline was run"
