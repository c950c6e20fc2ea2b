"""The handler's contract is checked at start, where the model is loaded (one process, or the split layout's model
process): a broken rule stops the start with the rule and the fix; a plain exception in `decode` is a 500 whose
answer and log say how to answer 400 instead."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import requests

from podserve import Handler, InvalidInput, WithContext
from podserve.handler import Device
from podserve.runtime.batching.contract import ContractViolation, check_contract
from podserve.settings import ServingSettings
from podserve.testbed.processes import poll_until

from context_handlers import ScaledAffine
from fixture_handlers import Affine, Doubler, EncodesArrays, FrameProbe, FrameWithContext
from server import TextDirection

#: The two layouts: one process, and the split layout (a front, decoders, the model process: docs/processes.md).
LAYOUTS = pytest.mark.parametrize("decode_processes", [0, 1], ids=["one-process", "split"])


def loaded(handler_class: type, model) -> Handler:
    """A handler loaded on the CPU as an instance is: what the pool checks after the first warm-up."""
    handler = handler_class()
    handler.max_batch_size = 8
    handler.load_codec(str(model))
    handler.load(str(model), Device("cpu", cpu_threads=1))
    return handler


class _ContextNotTaken(TextDirection):
    def decode(self, payload):
        return WithContext(super().decode(payload), payload.image[:4])


class _ContextMissing(TextDirection):
    def encode(self, scores, size):
        return {"angle": int(np.argmax(scores)), "size": size}


class _UnhashableKey(TextDirection):
    def batch_key(self, item):
        return list(item.shape)


class _Unpicklable(TextDirection):
    def decode(self, payload):
        return {"x": super().decode(payload), "later": lambda: None}


class _LosesOutputs(TextDirection):
    def predict(self, batch):
        return []


class _DecodeRaises(TextDirection):
    def decode(self, payload):
        raise KeyError("width")


BROKEN = {
    FrameWithContext: ("affine", ["FrameWithContext.decode_frame returned WithContext", "index and timestamp",
                                  "return the model input alone"]),
    EncodesArrays: ("example", ["EncodesArrays.encode returned something JSON cannot hold", "ndarray",
                                ".tolist()"]),
    _ContextNotTaken: ("example", ["encode is called as encode(output, context)", "give it a second parameter"]),
    _ContextMissing: ("example", ["encode is called as encode(output)", "return WithContext(input, context)"]),
    _UnhashableKey: ("example", ["batch_key returned list, which is not hashable", "return a tuple"]),
    _Unpicklable: ("example", ["decode's input (dict) cannot go to another process", "docs/processes.md"]),
    _LosesOutputs: ("example", ["predict returned 0 outputs for a batch of 1", "one output per input"]),
}


@pytest.mark.parametrize("handler_class", list(BROKEN), ids=lambda c: c.__name__)
def test_each_broken_rule_stops_the_check_naming_the_rule_and_the_fix(handler_class, example_model, affine_model):
    model, words = BROKEN[handler_class]
    handler = loaded(handler_class, example_model if model == "example" else affine_model)
    with pytest.raises(ContractViolation) as raised:
        check_contract(handler, ServingSettings())
    for word in words:
        assert word in str(raised.value)


@pytest.mark.parametrize("handler_class", [TextDirection, ScaledAffine, FrameProbe, Doubler, Affine],
                         ids=lambda c: c.__name__)
def test_handlers_that_keep_the_contract_pass(handler_class, example_model, affine_model):
    model = example_model if handler_class is TextDirection else affine_model
    check_contract(loaded(handler_class, model), ServingSettings())


def test_a_handler_that_refuses_the_synthetic_image_is_not_in_breach(affine_model, caplog):
    """Affine reads `data`, not images: its InvalidInput on the synthetic image is its answer, not a violation."""
    handler = loaded(Affine, affine_model)
    with caplog.at_level(logging.INFO, logger="podserve"):
        check_contract(handler, ServingSettings())
    assert "Affine.decode refused a synthetic image (InvalidInput: 'data' must be a list" in caplog.text


def test_a_plain_exception_on_the_synthetic_image_is_a_warning_naming_invalid_input(example_model, caplog):
    handler = loaded(_DecodeRaises, example_model)
    with caplog.at_level(logging.WARNING, logger="podserve"):
        check_contract(handler, ServingSettings())
    [warning] = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert "_DecodeRaises.decode raised KeyError on a synthetic image" in warning.getMessage()
    assert "raise InvalidInput(message, field=...)" in warning.getMessage()


def _refusal(server) -> str:
    """/api/ping's message once the pod has given up starting (503, no longer loading)."""
    def failed():
        assert server.process.poll() is None, server.log()
        try:
            reply = requests.get(server.url("/api/ping"), timeout=5)
        except requests.ConnectionError:  # not listening yet
            return None
        assert reply.status_code == 503, reply.text
        message = reply.json()["msg"]
        return message if "contract" in message else None

    return poll_until(failed, "the pod's load failure on /api/ping", timeout=60, every=0.1)


@LAYOUTS
def test_a_decode_frame_returning_with_context_stops_the_start(start_server, affine_model, decode_processes):
    server = start_server(wait=False, handler="fixture_handlers:FrameWithContext", model_path=str(affine_model),
                          decode_processes=decode_processes)
    message = _refusal(server)
    assert message.startswith("not ready: the handler breaks its contract: FrameWithContext.decode_frame returned WithContext: "
                              "a frame's context is its index and timestamp"), message
    assert "return the model input alone" in message
    reply = server.post({"data": [1, 2, 3, 4]})
    assert reply.status_code == 503 and "breaks its contract" in reply.json()["msg"]  # never served
    assert server.process.poll() is None  # up, not ready: the probes and the log say why
    assert "the handler breaks its contract, so the pod does not start serving" in server.log()


@LAYOUTS
def test_an_encode_returning_an_array_stops_the_start(start_server, example_model, decode_processes):
    server = start_server(wait=False, handler="fixture_handlers:EncodesArrays", model_path=str(example_model),
                          decode_processes=decode_processes)
    message = _refusal(server)
    assert "EncodesArrays.encode returned something JSON cannot hold" in message and ".tolist()" in message


@LAYOUTS
def test_a_plain_value_error_in_decode_is_a_500_naming_invalid_input(start_server, affine_model, decode_processes):
    server = start_server(handler="fixture_handlers:RaisesValueError", model_path=str(affine_model),
                          decode_processes=decode_processes)
    for postid in ("1", "2"):
        reply = server.post({"postid": postid, "data": [-1]})
        assert reply.status_code == 500 and reply.json()["error"] == "handler_error"
        assert reply.json()["msg"] == ("RaisesValueError.decode failed: ValueError; see the server log; for bad input, "
                                       "raise InvalidInput(message, field=...) (from podserve) to answer 400 instead")
    assert server.post({"data": [1]}).status_code == 200
    # Two tracebacks, one hint: once per exception type (in each process that decodes; this pod has one).
    def raised() -> list[dict]:
        return [r for r in server.log_records() if r["msg"].startswith("RaisesValueError.decode raised")]

    poll_until(lambda: len(raised()) == 2, "both failures in the log", timeout=10)
    first, second = raised()
    assert first["msg"] == ("RaisesValueError.decode raised ValueError, which answers 500: for bad input, raise "
                            "InvalidInput(message, field=...) (from podserve) to answer 400 instead (said once per "
                            "exception type)")
    assert second["msg"] == "RaisesValueError.decode raised"
    assert all("ValueError: -1.0 is negative" in record["traceback"] for record in (first, second))


def test_the_synthetic_request_costs_callers_nothing(start_server, affine_model, repo):
    """A handler that passes starts as before and counts nothing of the check as a request."""
    server = start_server(handler="fixture_handlers:FrameProbe", model_path=str(affine_model))
    assert server.metric_sum("podserve_requests_total") == 0
    assert server.metric_sum("podserve_batch_size_count") == 0
