"""A handler that raises or breaks its contract costs one request a 500, never the server."""

from __future__ import annotations

import threading

import requests

from podserve.testbed.processes import poll_until


def test_handler_exceptions_are_500_with_a_short_message_and_the_traceback_in_the_log(start_server, affine_model):
    server = start_server(handler="fixture_handlers:Faulty", model_path=str(affine_model))
    cases = {13: "Faulty.decode failed: KeyError; see the server log; for bad input, raise InvalidInput(message, "
                 "field=...) (from podserve) to answer 400 instead",
             21: "Faulty.batch_key failed: RuntimeError; see the server log",  # outside the verbs, still the handler's
             22: "Faulty.batch_key returned list, which is not hashable: inputs are grouped by it; return a tuple, a "
                 "string or a number",
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
    assert "RuntimeError: a bug in batch_key" in log  # a handler's bug: no fault of the runtime's own (stop_all)


def test_liveness_fails_only_while_a_batch_is_stuck(start_server, affine_model, tmp_path):
    gate = tmp_path / "gate"  # while it is there, the batch of 999 hangs: a wedged batch thread, until the test says
    server = start_server(handler="fixture_handlers:GatedHangs", model_path=str(affine_model), stuck_batch_seconds=0.5,
                          ins_num_per_gpu=1, TEST_PREDICT_GATE=str(gate))

    def live() -> requests.Response:
        return requests.get(server.url("/api/live"), timeout=5)

    assert live().status_code == 200
    gate.touch()
    answers: list = []
    hung = threading.Thread(target=lambda: answers.append(server.post({"data": [999]}).status_code))
    hung.start()
    try:
        message = poll_until(lambda: (reply := live()).status_code == 503 and reply.json()["msg"],
                             "liveness failing while the batch is stuck", timeout=20, every=0.05)
        assert "instance cpu-0" in message
    finally:
        gate.unlink(missing_ok=True)
    hung.join()
    assert answers == [200]
    poll_until(lambda: live().status_code == 200, "liveness back once the batch finished", timeout=20, every=0.05)
