"""The Open Inference Protocol ("v2") beside /api/<service>, called by Triton's own HTTP client (tritonclient).

The example model serves both; the test preprocesses the README's images with the handler's own
`decode`, sends the tensors by v2 (JSON and binary), and compares with /api/<service>'s answer and
with onnxruntime's unrounded output for the same tensors.
"""

from __future__ import annotations

import base64
import json
import threading
import time

import numpy as np
import onnxruntime
import pytest
import requests
import tritonclient.http as triton
from tritonclient.utils import InferenceServerException

from podserve import metric_names
from podserve.handler import Payload
from podserve.testbed.processes import poll_until
from server import ANGLES, TextDirection

from fixture_handlers import held_batches
from hostile import Reader, connect, metric_value, request_head

SERVICE = "example"
IMAGES = ("text-line.png", "text-line-upside-down.png")


@pytest.fixture(scope="module", params=[0, 2], ids=["one-process", "split"])
def v2_server(start_module_server, example_model, request):
    """The example in each layout (docs/processes.md): one process, and a front with two decoder processes."""
    return start_module_server(handler="server:TextDirection", model_path=str(example_model), service_name=SERVICE,
                               queue_size=8, max_batch_size=4, decode_processes=request.param)


@pytest.fixture(scope="module")
def tensors(repo, example_model):
    handler = TextDirection()
    decoded = np.stack([handler.decode(Payload(image=(repo / "examples" / name).read_bytes())) for name in IMAGES])
    session = onnxruntime.InferenceSession(str(example_model), providers=["CPUExecutionProvider"])
    [expected] = session.run(None, {"x": decoded})
    return decoded, expected


def _client(server) -> triton.InferenceServerClient:
    return triton.InferenceServerClient(url=f"127.0.0.1:{server.port}/api/{SERVICE}")


def test_every_endpoint_answers_triton_s_client(v2_server):
    client = _client(v2_server)
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready(SERVICE) and client.is_model_ready(SERVICE, model_version="1")
    assert client.get_server_metadata()["extensions"] == ["binary_tensor_data"]
    for metadata in (client.get_model_metadata(SERVICE), client.get_model_metadata(SERVICE, model_version="1")):
        assert metadata["name"] == SERVICE and metadata["versions"] == ["1"]
        assert metadata["inputs"] == [{"name": "x", "datatype": "FP32", "shape": [-1, 3, -1, -1]}]
        assert [o["datatype"] for o in metadata["outputs"]] == ["FP32"] and metadata["outputs"][0]["shape"] == [-1, 2]
    with pytest.raises(InferenceServerException, match="unknown model 'other'"):
        client.get_model_metadata("other")
    with pytest.raises(InferenceServerException, match="unknown version"):
        client.get_model_metadata(SERVICE, model_version="7")
    health = requests.get(v2_server.url(f"/api/{SERVICE}/v2/health/ready"), timeout=5)
    assert health.status_code == 200 and health.json() == {"ready": True}  # the status code and a JSON body


def test_the_smoke_s_readiness_requests_enter_no_request_series(v2_server):
    """CI's smoke asks the service's <route>/v2/health/ready (tooling/smoke.py), answered from the pod's state: it is
    never counted in the request series, so no verdict (grey's or a canary's) and no SLO counts it, whatever its
    origin. A request the server does count (a route it does not serve, 404) moves the same series."""
    from podserve.tooling.smoke import READY_SUFFIX

    before = v2_server.metric_sum(metric_names.REQUESTS_TOTAL)
    not_found = metric_value(v2_server, metric_names.REQUESTS_TOTAL, status="404")
    for _ in range(5):
        assert requests.get(v2_server.url(f"/api/{SERVICE}{READY_SUFFIX}"), timeout=5).status_code == 200
    assert requests.get(v2_server.url(f"/api/{SERVICE}/nothing-here"), timeout=5).status_code == 404
    # the front counts in the order it answers: once the 404 shows, a count of the readiness requests would have too
    poll_until(lambda: metric_value(v2_server, metric_names.REQUESTS_TOTAL, status="404") == not_found + 1,
               "the 404 counted", 5)
    assert v2_server.metric_sum(metric_names.REQUESTS_TOTAL) == before + 1


@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
def test_infer_gives_what_the_service_route_and_the_model_give(v2_server, repo, tensors, binary):
    decoded, expected = tensors
    client = _client(v2_server)
    [output] = client.get_model_metadata(SERVICE)["outputs"]
    given = triton.InferInput("x", list(decoded.shape), "FP32")
    given.set_data_from_numpy(decoded, binary_data=binary)
    for version in ("", "1"):
        result = client.infer(SERVICE, [given], model_version=version, request_id="r-1",
                              outputs=[triton.InferRequestedOutput(output["name"], binary_data=binary)])
        scores = result.as_numpy(output["name"])
        assert scores.shape == (2, 2) and result.get_response()["id"] == "r-1"
        np.testing.assert_allclose(scores, expected, atol=1e-4)
    for row, name in enumerate(IMAGES):
        image = base64.b64encode((repo / "examples" / name).read_bytes()).decode()
        api = v2_server.post({"postid": name, "image": image}).json()["results"]
        assert ANGLES[int(np.argmax(scores[row]))] == api["angle"]
        assert abs(float(scores[row].max()) - api["score"]) <= 1e-4


def test_every_output_by_default_in_binary_as_triton_s_client_asks(v2_server, tensors):
    decoded, expected = tensors
    given = triton.InferInput("x", list(decoded.shape), "FP32")
    given.set_data_from_numpy(decoded)
    result = _client(v2_server).infer(SERVICE, [given])  # no outputs named: the client asks binary_data_output
    [name] = [o["name"] for o in result.get_response()["outputs"]]
    assert "binary_data_size" in result.get_output(name)["parameters"]
    np.testing.assert_allclose(result.as_numpy(name), expected, atol=1e-4)


def test_rows_hold_places_and_go_through_the_batcher(v2_server, tensors):
    decoded, _ = tensors
    before = v2_server.metric_sum("podserve_batch_size_sum")
    given = triton.InferInput("x", [4, *decoded.shape[1:]], "FP32")
    given.set_data_from_numpy(np.concatenate([decoded, decoded]))
    assert _client(v2_server).infer(SERVICE, [given]).get_response()["outputs"][0]["shape"] == [4, 2]
    assert v2_server.metric_sum("podserve_batch_size_sum") - before == 4  # four inputs batched, one per row
    too_many = triton.InferInput("x", [9, *decoded.shape[1:]], "FP32")  # the pod holds 8 (queue_size, 1 instance)
    too_many.set_data_from_numpy(np.concatenate([decoded] * 4 + [decoded[:1]]))
    with pytest.raises(InferenceServerException, match="more than this pod holds at once"):
        _client(v2_server).infer(SERVICE, [too_many])


def _raw(server, document: dict | bytes, binary: bytes = b"", header_length: int | str | None = None,
         datatype_swap: str | None = None, headers: dict | None = None) -> tuple[int, str]:
    header = document if isinstance(document, bytes) else json.dumps(document).encode()
    extra = {"Content-Type": "application/json", "Content-Length": str(len(header) + len(binary)), **(headers or {})}
    if binary or header_length is not None:
        extra["Inference-Header-Content-Length"] = str(header_length if header_length is not None else len(header))
    with connect(server.port) as sock:
        sock.sendall(request_head("POST", f"/api/{SERVICE}/v2/models/{SERVICE}/infer", extra) + header + binary)
        answer = Reader(sock).response()
    return answer.status, answer.json().get("error", "")


def test_malformed_requests_get_400_naming_the_problem_and_the_server_keeps_serving(v2_server, tensors):
    decoded, _ = tensors
    one = decoded[:1]
    data = one.reshape(-1).tolist()
    good = {"name": "x", "shape": list(one.shape), "datatype": "FP32", "data": data}
    cases = [
        ({"inputs": [{**good, "datatype": "INT32"}]}, b"", None, "datatype 'INT32', but the model takes FP32"),
        ({"inputs": [{**good, "shape": [1, 3, 48, 100]}]}, b"", None, "data holds 27648 values but shape"),
        ({"inputs": [{**good, "shape": [1, 4, 48, 192]}]}, b"", None, "does not fit the model's"),
        ({"inputs": [{**good, "name": "y"}]}, b"", None, "unknown input 'y'"),
        ({"inputs": [{"name": "x", "shape": list(one.shape), "datatype": "FP32",
                      "parameters": {"binary_data_size": one.nbytes}}]}, one.tobytes()[:-10], None, "truncated"),
        ({"inputs": [good]}, b"", 10_000_000, "beyond the body's"),
        ({"inputs": []}, b"", None, 'non-empty "inputs"'),
        ({"inputs": [good], "parameters": {"timeout": -5}}, b"", None, "parameters.timeout"),
    ]
    for document, binary, header_length, message in cases:
        status, error = _raw(v2_server, document, binary, header_length)
        assert status == 400 and message in error, (message, status, error)
    status, error = _raw(v2_server, {"inputs": [good]})
    assert status == 200, error
    assert requests.get(v2_server.url(f"/api/{SERVICE}/v2/health/live"), timeout=5).status_code == 200


def test_hostile_requests_get_400_naming_the_field_before_the_model_runs(v2_server):
    def x(shape, data):
        return {"name": "x", "datatype": "FP32", "shape": shape, "data": data}
    ok = [x([1, 3, 2, 2], [0.0] * 12)]
    huge = b"9" * 5000  # over int()'s 4300 digits: json.loads refuses it with a ValueError of its own
    cases = [  # (body, Inference-Header-Content-Length, words of the message, which name the field at fault)
        ({"inputs": [{"name": ["x"], "datatype": "FP32", "shape": [1], "data": [1]}]}, None,
         "inputs[0]: name ['x'] must be a string"),
        ({"inputs": [{**ok[0], "datatype": ["FP32"]}]}, None, "not a datatype this server reads"),
        ({"inputs": ok, "outputs": 5}, None, '"outputs" must be a list'),
        ({"inputs": ok, "outputs": [{"name": ["a"]}]}, None, "outputs[0]: name ['a'] must be a string"),
        ({"inputs": ok, "outputs": [{"name": "a"}]}, None, "unknown output 'a'"),  # was: after the model
        ({"inputs": ok, "id": 7}, None, '"id" must be a string'),
        ({"inputs": ok, "parameters": {"timeout": 10 ** 400}}, None, "parameters.timeout 1000"),
        (json.dumps({"inputs": [x([1, 3, 2, 2], [0.0] * 11 + ["N"])]}).encode().replace(b'"N"', huge), None,
         "input 'x' holds 999999999999...999999, which is an integer of 5000 digits"),
        (json.dumps({"inputs": ok, "id": "N"}).encode().replace(b'"N"', huge), None, "id holds 9999"),
        (b'{"inputs": ' + b"[" * 100000 + b"]" * 100000 + b"}", None, "nested too deeply"),
        ({"inputs": [x([1, 3, 0, 10 ** 30], [])]}, None, f"input 'x': shape [1, 3, 0, {10 ** 30}]: its shape[2] is 0"),
        ({"inputs": [x([1, 3, 1, 10 ** 30], [])]}, None, "its shape[3] is " + str(10 ** 30)),
        ({"inputs": [x([0, 3, 1, 10 ** 30], [])]}, None, "its batch size (shape[0]) is 0"),
        ({"inputs": [x([1, 3, 0, 0], [])]}, None,  # was: onnxruntime's "Invalid input shape", a 500
         "input 'x': shape [1, 3, 0, 0]: its shape[2] is 0; every size must be from 1"),
        ({"inputs": ok}, "\xb2", "Inference-Header-Content-Length '\xb2' is not"),  # '\xb2'.isdigit()
        ({"inputs": ok}, "0" * 4400 + "1", "first 1 bytes, by Inference-Header-Content-Length"),
        ({"inputs": ok}, "1" * 4400, "Inference-Header-Content-Length is a number of 4400 digits, beyond"),
    ]
    log_before = len(v2_server.log())
    batched = v2_server.metric_sum("podserve_batch_size_sum")
    answers = [(message, *_raw(v2_server, document, header_length=header_length))
               for document, header_length, message in cases]
    floats = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 3, 2, 2],
                          "parameters": {"binary_data_size": 48.0}}]}  # a float offset broke a second input's read
    answers.append(("input 'x': binary_data_size 48.0 is not", *_raw(v2_server, floats, bytes(48))))
    assert [(message, status, error) for message, status, error in answers
            if status != 400 or message not in error] == []
    assert v2_server.metric_sum("podserve_batch_size_sum") == batched  # every one refused before the model ran
    assert "Traceback" not in v2_server.log()[log_before:]
    assert _raw(v2_server, {"inputs": ok, "parameters": {"timeout": 2 ** 63 - 1}, "id": "fine"}) == (200, "")


def test_unknown_routes_and_methods_under_v2(v2_server):
    for method, path, status in [("GET", "/v2/models/example/infer", 405), ("POST", "/v2/models/example", 405),
                                 ("GET", "/v2/models/example/stats", 404), ("GET", "/v2/repository/index", 404)]:
        reply = requests.request(method, v2_server.url(f"/api/{SERVICE}{path}"), timeout=5)
        assert reply.status_code == status and "error" in reply.json(), (method, path, reply.text)
        if status == 405:
            assert reply.headers["Allow"] == ("POST" if path.endswith("/infer") else "GET, HEAD"), (method, path)


def test_a_handler_that_is_not_onnx_serves_the_protocol_with_the_tensors_it_declares(start_server, affine_model):
    server = start_server(handler="fixture_handlers:Doubler", model_path=str(affine_model), service_name=SERVICE)
    client = _client(server)
    metadata = client.get_model_metadata(SERVICE)
    assert metadata["inputs"] == [{"name": "numbers", "datatype": "FP64", "shape": [-1, 4]}]
    rows = np.arange(8, dtype=np.float64).reshape(2, 4)
    given = triton.InferInput("numbers", [2, 4], "FP64")
    given.set_data_from_numpy(rows)
    np.testing.assert_array_equal(client.infer(SERVICE, [given]).as_numpy("doubled"), 2 * rows)


def test_a_handler_that_declares_no_tensors_says_it_does_not_serve_the_protocol(start_server, affine_model):
    server = start_server(handler="fixture_handlers:Undeclared", model_path=str(affine_model), service_name=SERVICE)
    assert _client(server).is_server_live()  # the rest of the protocol still answers
    reply = requests.get(server.url(f"/api/{SERVICE}/v2/models/{SERVICE}"), timeout=5)
    assert reply.status_code == 404 and "declares no tensors" in reply.json()["error"]


@pytest.mark.parametrize("deadline", ["parameter", "header"])
def test_triton_s_timeout_parameter_is_a_deadline_like_the_header(start_server, affine_model, tmp_path, deadline):
    # A v2 request queued behind a lane that does not free gets its 504 at its deadline, set by Triton's `timeout`
    # parameter or by the header, while the lane is still held: its rows are taken out of the queue then.
    gate = tmp_path / "gate"  # while it is there, predict waits: the blocker holds the lane until the test says
    server = start_server(handler="fixture_handlers:SlowAffine", model_path=str(affine_model), service_name=SERVICE,
                          cpu=1, max_batch_size=2,  # one batch lane, held by the request below
                          TEST_PREDICT_SLEEP="0", TEST_PREDICT_GATE=str(gate))
    gate.touch()
    blocker = threading.Thread(target=lambda: server.post({"postid": "slow", "data": [1, 2, 3, 4]}))
    blocker.start()
    answer: dict = {}
    document = {"inputs": [{"name": "x", "shape": [2, 4], "datatype": "FP32", "data": [1, 2, 3, 4] * 2}]}
    if deadline == "parameter":
        document["parameters"] = {"timeout": 300_000}  # microseconds: 0.3 s
    headers = {"X-Request-Timeout-Ms": "300"} if deadline == "header" else {}

    def send() -> None:
        started = time.monotonic()
        answer["status"], answer["error"] = _raw(server, document, headers=headers)
        answer["waited"] = time.monotonic() - started

    v2 = threading.Thread(target=send)
    try:
        poll_until(lambda: held_batches(gate) == [1], "the blocker inside its predict", timeout=20, every=0.01)
        v2.start()
        v2.join(10)  # the lane stays held all along
        assert held_batches(gate) == [1] and gate.exists()
    finally:
        gate.unlink(missing_ok=True)
        blocker.join(10)
        v2.join(10)
    status, error, waited = answer.get("status"), answer.get("error", ""), answer.get("waited", float("inf"))
    assert status == 504 and "deadline" in error and waited < 5, (status, error, waited)
    assert server.metric_sum("podserve_batch_size_count") == 1, "the v2 request was run past its deadline"
    assert server.metric_sum(metric_names.QUEUE_DEPTH) == 0 and server.metric_sum(metric_names.IN_FLIGHT) == 0
