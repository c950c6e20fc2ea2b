"""The split layout (docs/processes.md) serves what one process serves, counts it once for the pod, and outlives its
own processes: a front, decoders and a model process under a supervisor."""

from __future__ import annotations

import base64
import os
import signal
import threading
import time

import pytest
import requests

from podserve.testbed.processes import poll_until

from hostile import metric_value
from load import burst

EXAMPLES = ("text-line.png", "text-line-upside-down.png")


@pytest.fixture(scope="module")
def pods(start_module_server, example_model):
    """The example in one process and split (two decoders), side by side."""
    settings = {"handler": "server:TextDirection", "model_path": str(example_model), "max_batch_size": 8}
    return start_module_server(decode_processes=0, **settings), start_module_server(decode_processes=2, **settings)


def _children(server) -> dict[str, int]:
    """The supervisor's children by role (front, decoder, model) from their command lines."""
    found: dict[str, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as stat:
                parent = int(stat.read().rsplit(")", 1)[1].split()[1])
            with open(f"/proc/{entry}/cmdline", "rb") as cmdline:
                command = cmdline.read().replace(b"\0", b" ").decode()
        except (OSError, ValueError, IndexError):
            continue
        if parent == server.process.pid:
            role = command.rsplit("podserve.runtime.processes.", 1)[-1].split("_")[0].strip()
            found.setdefault(role, []).append(int(entry))
    return found


def test_both_layouts_give_the_same_answers(pods, repo):
    one, split = pods
    images = [(repo / "examples" / name).read_bytes() for name in EXAMPLES]
    video = (repo / "examples" / "text-line.mp4").read_bytes()
    for server in pods:
        assert requests.get(server.url("/api/ping"), timeout=5).status_code == 200
    for image in images:
        as_json = {"postid": "1", "uid": "u", "seqid": "s", "image": base64.b64encode(image).decode()}
        assert one.post(as_json).json() == split.post(as_json).json()
        raw = {"data": image, "headers": {"Content-Type": "application/octet-stream"}}
        assert one.post(**raw).json() == split.post(**raw).json()
    raw_video = {"data": video, "headers": {"Content-Type": "video/mp4"}}
    answers = [server.post(**raw_video).json() for server in pods]
    assert answers[0] == answers[1] and [f["angle"] for f in answers[1]["results"]["frames"]] == [0, 0, 0, 180, 180, 180]
    for bad in ({"postid": "1", "image": "not base64!"}, {"postid": "1"}, [1, 2]):
        replies = [server.post(bad) for server in pods]
        assert replies[0].status_code == replies[1].status_code == 400
        assert replies[0].json() == replies[1].json()


def test_a_mirrored_copy_is_counted_as_origin_mirror_in_both_layouts(pods, repo):
    """Istio's mirror appends -shadow to the Host of the copy it sends grey (docs/deploy.md): the door counts that
    request as origin="mirror", a caller's as origin="live", both from the start at 0 (dashboards' selectors)."""
    image = base64.b64encode((repo / "examples" / EXAMPLES[0]).read_bytes()).decode()
    for server in pods:
        before = {origin: metric_value(server, "podserve_requests_total", status="200", origin=origin)
                  for origin in ("live", "mirror")}
        assert metric_value(server, "podserve_requests_total", status="503", origin="mirror") == 0
        assert f'origin="mirror"' in "".join(k for k in server.metrics() if k.startswith("podserve_requests_total"))
        for host in ("infer-hk.example.com-shadow", "infer-hk.example.com-shadow:80"):
            reply = requests.post(server.api, json={"postid": "m", "image": image}, headers={"Host": host}, timeout=30)
            assert reply.status_code == 200
        for host in ("infer-hk.example.com", "shadow.example.com"):
            assert requests.post(server.api, json={"postid": "l", "image": image}, headers={"Host": host},
                                 timeout=30).status_code == 200
        after = {origin: metric_value(server, "podserve_requests_total", status="200", origin=origin)
                 for origin in ("live", "mirror")}
        assert {o: after[o] - before[o] for o in after} == {"live": 2, "mirror": 2}, server
        assert metric_value(server, "podserve_request_duration_seconds_count", status="200", origin="mirror") >= 2


def test_one_metrics_page_sums_the_pods_processes(pods, repo):
    _one, split = pods
    image = base64.b64encode((repo / "examples" / EXAMPLES[0]).read_bytes()).decode()
    before = metric_value(split, "podserve_requests_total", status="200")
    replies = burst(split.api, [{"json": {"postid": str(n), "image": image}} for n in range(40)])
    assert [r.status_code for r in replies] == [200] * 40
    metrics = split.metrics()
    assert metric_value(split, "podserve_requests_total", status="200") - before == 40  # counted once, by the front
    assert metric_value(split, "podserve_batch_size_count") > 0  # the model process's
    assert metric_value(split, "podserve_verb_cpu_seconds_total", verb="decode") > 0  # the decoders'
    assert metric_value(split, "podserve_in_flight_requests") == 0
    processes = {key for key in metrics if key.startswith("podserve_process_up{")}
    roles = sorted(key.split('role="')[1].split('"')[0] for key in processes)
    assert roles == ["decoder", "decoder", "front", "model"], processes
    assert all(metrics[key] == 1 for key in processes)
    assert "process_start_time_seconds" in metrics
    # Series names are the same as in one process: the dashboards read both layouts alike.
    one_names = {key.split("{")[0] for key in pods[0].metrics() if key.startswith("podserve_")}
    split_names = {key.split("{")[0] for key in metrics if key.startswith("podserve_")}
    assert one_names <= split_names, one_names - split_names


def test_a_full_pod_answers_503_at_the_door(start_server, example_model, repo, tmp_path):
    gate = tmp_path / "gate"
    server = start_server(handler="fixture_handlers:GatedTextDirection", model_path=str(example_model),
                          max_batch_size=4, queue_size=8, decode_processes=2, TEST_PREDICT_GATE=str(gate))
    gate.touch()
    image = base64.b64encode((repo / "examples" / EXAMPLES[0]).read_bytes()).decode()
    replies: list = []
    sender = threading.Thread(target=lambda: replies.extend(
        burst(server.api, [{"json": {"postid": str(n), "image": image}} for n in range(24)], timeout=60)))
    sender.start()
    poll_until(lambda: metric_value(server, "podserve_requests_total", status="503") >= 16, "16 refused at the door",
               timeout=30)
    assert metric_value(server, "podserve_in_flight_requests") == 8  # what the pod holds, not one more
    gate.unlink()
    sender.join(60)
    statuses = sorted(reply.status_code for reply in replies)
    assert statuses == [200] * 8 + [503] * 16, statuses


def test_the_model_process_ended_is_started_again_and_the_pod_serves_again(start_server, example_model, repo):
    server = start_server(handler="server:TextDirection", model_path=str(example_model), decode_processes=1)
    image = base64.b64encode((repo / "examples" / EXAMPLES[0]).read_bytes()).decode()
    assert server.post({"postid": "before", "image": image}).status_code == 200
    [model] = _children(server)["model"]
    os.kill(model, signal.SIGKILL)
    poll_until(lambda: requests.get(server.url("/api/ping"), timeout=5).status_code == 503, "not ready while the "
               "model process is started again", timeout=10, every=0.01)
    reply = server.post({"postid": "meanwhile", "image": image})
    assert reply.status_code == 503 and reply.headers.get("Retry-After"), reply.text  # never lost, never hung
    server.wait_ready(60)
    assert server.post({"postid": "after", "image": image}).json()["results"]["angle"] == 0
    assert metric_value(server, "podserve_process_restarts_total", role="model") == 1
    assert "ended (signal SIGKILL); starting another" in server.log()


def test_the_front_ended_is_started_again_on_the_same_port(start_server, example_model, repo):
    server = start_server(handler="server:TextDirection", model_path=str(example_model), decode_processes=1)
    image = base64.b64encode((repo / "examples" / EXAMPLES[0]).read_bytes()).decode()
    [front] = _children(server)["front"]
    os.kill(front, signal.SIGKILL)
    # The supervisor holds the listening socket: callers wait in its backlog for the next front, never refused.
    reply = requests.post(server.api, json={"postid": "after", "image": image}, timeout=60)
    assert reply.status_code == 200, reply.text
    assert metric_value(server, "podserve_process_restarts_total", role="front") == 1


def test_an_output_that_cannot_cross_to_its_decoder_fails_its_request_alone(start_server, affine_model):
    server = start_server(handler="fixture_handlers:UnsendableOnSeven", model_path=str(affine_model),
                          decode_processes=1, max_batch_size=8)
    replies = burst(server.api, [{"json": {"postid": str(n), "data": [n, 0, 0, 0]}} for n in range(5, 10)])
    statuses = {json_reply["postid"]: (reply.status_code, json_reply.get("msg")) for reply in replies
                for json_reply in [reply.json()]}
    assert statuses["7"][0] == 500 and "cannot be sent to the decoder" in statuses["7"][1], statuses
    assert all(statuses[str(n)][0] == 200 for n in (5, 6, 8, 9)), statuses
