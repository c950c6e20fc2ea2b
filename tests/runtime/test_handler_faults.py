"""A handler that raises or breaks its contract costs one request a 500, never the server."""

from __future__ import annotations

import threading
import time

import requests


def test_handler_exceptions_are_500_with_a_short_message_and_the_traceback_in_the_log(start_server, affine_model):
    server = start_server(handler="fixture_handlers:Faulty", model_path=str(affine_model))
    cases = {13: "Faulty.decode failed: KeyError; see the server log",
             666: "Faulty.predict failed: RuntimeError; see the server log",
             7: "Faulty.predict returned 0 outputs for a batch of 1; it must return one output per input, in order"}
    for value, message in cases.items():
        reply = server.post({"postid": str(value), "data": [value]})
        assert reply.status_code == 500, value
        assert reply.json()["msg"] == message and reply.json()["error"] == "handler_error"
        assert reply.json()["postid"] == str(value)
        healthy = server.post({"data": [1, 2]})
        assert healthy.status_code == 200 and healthy.json()["results"] == [3.0, 5.0]
    assert requests.get(server.url("/api/ping"), timeout=5).status_code == 200
    assert requests.get(server.url("/api/live"), timeout=5).status_code == 200
    log = server.log()
    assert "KeyError: 'a bug in decode'" in log and "RuntimeError: a bug in predict" in log


def test_liveness_fails_only_while_a_batch_is_stuck(start_server, affine_model):
    server = start_server(handler="fixture_handlers:Hangs", model_path=str(affine_model), stuck_batch_seconds=0.5,
                          ins_num_per_gpu=1)
    hung = threading.Thread(target=lambda: server.post({"data": [999]}))
    hung.start()
    time.sleep(1.2)
    live = requests.get(server.url("/api/live"), timeout=5)
    assert live.status_code == 503 and "instance cpu-0" in live.json()["msg"]
    hung.join()
    assert requests.get(server.url("/api/live"), timeout=5).status_code == 200
