"""Every route of a real server over loopback HTTP: probes, metrics, the service in JSON and raw bytes."""

from __future__ import annotations

import base64
import time

import requests


def test_service_answers_json_and_echoes_ids(start_server, affine_model):
    server = start_server(handler="fixture_handlers:Affine", model_path=str(affine_model), service_name="affine")
    reply = server.post({"postid": "p-1", "uid": 42, "seqid": "s", "data": [1, 2.5, -3]})
    assert reply.status_code == 200
    assert reply.json() == {"postid": "p-1", "uid": 42, "seqid": "s", "results": [3.0, 6.0, -5.0], "msg": "ok"}


def test_ping_live_and_metrics(start_server, affine_model):
    server = start_server(handler="fixture_handlers:Affine", model_path=str(affine_model), ins_num_per_gpu=2)
    ping = requests.get(server.url("/api/ping"), timeout=5)
    assert ping.status_code == 200 and ping.json()["results"] == {"ready": True, "instances": 2}
    assert requests.get(server.url("/api/live"), timeout=5).status_code == 200
    server.post({"data": [1.0]})
    metrics = server.metrics()
    assert metrics['podserve_requests_total{origin="live",route="/api/example",service="example",status="200"}'] == 1
    assert metrics['podserve_instance_ready{model_instance="cpu-0",service="example"}'] == 1
    assert metrics['podserve_instance_ready{model_instance="cpu-1",service="example"}'] == 1
    assert server.metric_sum("podserve_batch_size_count") == 1
    for name in ("podserve_queue_wait_seconds_count", "podserve_inference_seconds_count",
                 "podserve_request_duration_seconds_count"):
        assert server.metric_sum(name) == 1, name
    assert any(k.startswith("podserve_model_load_seconds") for k in metrics)
    assert any(k.startswith("podserve_warmup_seconds") for k in metrics)
    assert "podserve_queue_depth" in "".join(metrics) and "podserve_in_flight_requests" in "".join(metrics)
    # A service's own metric, added with podserve.service_metrics, sits beside the platform's.
    assert metrics['service_inputs_decoded_total{service="example"}'] == 1


def test_the_cpu_of_each_handler_verb_is_counted_apart_from_the_servers(start_server, affine_model):
    """podserve_verb_cpu_seconds_total splits a pod's CPU into the service's verbs and the server's own: a decode that
    spins 50 ms of CPU counts at least that; an encode that sleeps 50 ms counts next to nothing."""
    server = start_server(handler="fixture_handlers:CpuThenSleep", model_path=str(affine_model))
    before = {verb: server.metric_sum(f'podserve_verb_cpu_seconds_total{{service="example",verb="{verb}"}}')
              for verb in ("decode", "predict", "encode")}
    for _ in range(3):
        assert server.post({"data": [1.0]}).status_code == 200
    spent = {verb: server.metric_sum(f'podserve_verb_cpu_seconds_total{{service="example",verb="{verb}"}}')
             - before[verb] for verb in before}
    assert spent["decode"] >= 3 * 0.05, spent
    assert spent["encode"] < 0.05, spent  # 150 ms asleep in encode, almost no CPU
    assert 0 < spent["predict"] < 0.05, spent  # three tiny onnxruntime runs


def test_ping_is_503_with_a_reason_until_loaded(start_server, affine_model, tmp_path):
    # The model path exists but is not a model: loading fails, and ping says why.
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"not an onnx model")
    server = start_server(wait=False, handler="fixture_handlers:Affine", model_path=str(broken))
    reply = None
    for _ in range(600):  # at most ~30 s
        time.sleep(0.05)
        try:
            reply = requests.get(server.url("/api/ping"), timeout=1)
        except requests.ConnectionError:
            continue
        if "failed to load" in reply.json()["msg"]:
            break
    assert reply is not None, server.log()
    assert reply.status_code == 503
    assert "instance cpu-0 failed to load" in reply.json()["msg"]
    # Liveness is about a wedged process, not a model that is not loaded.
    assert requests.get(server.url("/api/live"), timeout=5).status_code == 200
    assert server.post({"data": [1]}).status_code == 503


def test_example_model_classifies_text_upright_and_upside_down(start_server, example_model, repo):
    server = start_server(handler="server:TextDirection", model_path=str(example_model),
                          service_name="text-direction")
    upright = (repo / "examples" / "text-line.png").read_bytes()
    flipped = (repo / "examples" / "text-line-upside-down.png").read_bytes()
    as_json = server.post({"postid": "1", "image": base64.b64encode(upright).decode()})
    assert as_json.status_code == 200 and as_json.json()["results"]["angle"] == 0
    raw = server.post(data=flipped, headers={"Content-Type": "application/octet-stream"},
                      params={"postid": "2", "uid": "u"})
    assert raw.status_code == 200
    assert raw.json()["results"]["angle"] == 180 and raw.json()["postid"] == "2" and raw.json()["uid"] == "u"


def test_one_json_log_line_per_request_with_ids_and_timings(start_server, affine_model):
    server = start_server(handler="fixture_handlers:Affine", model_path=str(affine_model))
    server.post({"postid": "log-me", "uid": "u", "seqid": 7, "data": [1]})
    server.post({"postid": "bad", "data": "nope"})
    lines = server.access_records(2)
    assert [r["postid"] for r in lines] == ["log-me", "bad"]
    ok, bad = lines
    assert ok["status"] == 200 and ok["seqid"] == 7 and ok["batch"] == 1 and ok["total_ms"] >= ok["infer_ms"] > 0
    assert bad["status"] == 400 and "'data'" in bad["error"]


def test_image_healthcheck_follows_ping(start_server, affine_model):
    import os
    import subprocess
    import sys

    from serving import REPO, free_port

    server = start_server(handler="fixture_handlers:Affine", model_path=str(affine_model))

    def healthcheck(port: int) -> int:
        env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "PODSERVE_PORT": str(port)}
        return subprocess.run([sys.executable, "-m", "podserve.runtime.healthcheck"], env=env,
                              capture_output=True, timeout=30).returncode

    assert healthcheck(server.port) == 0
    assert healthcheck(free_port()) == 1
