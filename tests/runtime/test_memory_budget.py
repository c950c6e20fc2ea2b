"""The pod's memory plan (podserve/memory_plan.py) holds: what does not fit gets a 503 or a 413, never an OOM.

In both layouts: a JSON body whose parse would take more than one parse's share of the pod's memory is refused 413
before it is parsed (no process of the pod ever holds its tree), and request bodies beyond the pod's budget for
them get a 503 while the pod still takes ordinary requests (large bodies may use only three quarters of it).
"""

from __future__ import annotations

import base64
import io
import json
import threading

import numpy as np
import pytest
import requests
from PIL import Image

from podserve import memory_plan
from podserve.runtime.processes import layout
from podserve.settings import ServingSettings
from podserve.testbed.processes import poll_until

from hostile import metric_value, peak_rss_bytes
from load import burst
from test_split_layout import _children

LAYOUTS = pytest.mark.parametrize("decoders", [0, 2], ids=["one-process", "split"])


def _plan(settings: dict, decoders: int, model) -> memory_plan.MemoryPlan:
    return memory_plan.plan(ServingSettings(**settings), decoders, False, layout.model_bytes(str(model)))


def junk_body(image: str, size: int) -> bytes:
    """A JSON request with an image and, beside it, `size` bytes of tiny values: a tree many times its size."""
    head = json.dumps({"postid": "junk", "image": image})[:-1].encode() + b', "junk": ['
    values = (size - len(head)) // 2
    return head + b"0," * (values - 1) + b"0]}"


@LAYOUTS
def test_a_json_body_whose_parse_would_not_fit_gets_413_before_it_is_parsed(start_server, example_model, repo,
                                                                          decoders):
    settings = {"handler": "server:TextDirection", "model_path": str(example_model), "memory_bytes": 1 << 30,
                "decode_processes": decoders, "max_batch_size": 8}
    server = start_server(**settings)
    image = base64.b64encode((repo / "examples" / "text-line.png").read_bytes()).decode()
    body = junk_body(image, 10 << 20)  # max_body_bytes of 5 million values: a tree of about 300 MB
    assert memory_plan.json_parse_bytes(len(body), len(body) // 2) > _plan(settings, decoders, example_model).per_parse
    pids = [server.process.pid] + _children(server).get("decoder", [])
    reply = requests.post(server.api, data=body, headers={"Content-Type": "application/json"}, timeout=60)
    assert reply.status_code == 413, reply.text
    answer = reply.json()
    assert answer["field"] == "body" and "to parse" in answer["msg"] and "memory in value.py" in answer["msg"]
    assert max(peak_rss_bytes(pid) for pid in pids) < 200 << 20  # none of the pod's processes held the tree
    ordinary = requests.post(server.api, json={"postid": "after", "image": image}, timeout=30)
    assert ordinary.status_code == 200 and ordinary.json()["results"]["angle"] == 0


@LAYOUTS
def test_bodies_beyond_the_pods_budget_get_503_and_ordinary_requests_still_get_in(start_server, example_model, repo,
                                                                                 tmp_path, decoders):
    large = _noise_png(8 << 20)
    # A pod whose large bodies may hold about five of these at once (the memory its plan gives them).
    probe = {"handler": "fixture_handlers:GatedTextDirection", "model_path": str(example_model),
             "decode_processes": decoders, "max_batch_size": 4}
    def room(memory: int) -> int:
        return int(_plan({**probe, "memory_bytes": memory}, decoders, example_model).bodies *
                   memory_plan.LARGE_BODY_SHARE)
    memory = 256 << 20
    while room(memory) < 5.5 * len(large):
        memory += 1 << 20
    room = room(memory)
    assert 5 * len(large) <= room < 6 * len(large), (room, len(large))
    gate = tmp_path / "gate"
    server = start_server(**probe, memory_bytes=memory, TEST_PREDICT_GATE=str(gate))
    gate.touch()  # every batch waits: the admitted requests stay held, their bodies with them
    raw = {"headers": {"Content-Type": "application/octet-stream"}}
    replies: list = []
    senders = []
    for number in range(8):  # one after the other: each upload is read whole before the next begins
        sender = threading.Thread(target=lambda: replies.append(requests.post(server.api, data=large, timeout=120,
                                                                              **raw)))
        sender.start()
        senders.append(sender)
        poll_until(lambda: metric_value(server, "podserve_in_flight_requests") + sum(
            1 for r in replies if r.status_code == 503) >= number + 1, f"upload {number} admitted or refused",
                   timeout=60, every=0.02)
    refused = [r for r in replies if r.status_code == 503]
    assert len(refused) == 3 and all("request bodies" in r.json()["msg"] and r.headers.get("Retry-After")
                                     for r in refused), [r.text[:200] for r in replies]
    # Small requests still get in (three quarters of the budget is all large bodies may use); they wait with the
    # rest at the gate and are answered when it opens.
    image = base64.b64encode((repo / "examples" / "text-line.png").read_bytes()).decode()
    small: list = []
    sender = threading.Thread(target=lambda: small.extend(
        burst(server.api, [{"json": {"postid": str(n), "image": image}} for n in range(4)], timeout=120)))
    sender.start()
    poll_until(lambda: metric_value(server, "podserve_in_flight_requests") == 9, "the small requests admitted",
               timeout=30, every=0.02)
    gate.unlink()
    for thread in senders + [sender]:
        thread.join(120)
    assert sorted(r.status_code for r in replies) == [200] * 5 + [503] * 3
    assert [r.status_code for r in small] == [200] * 4


def _noise_png(size: int) -> bytes:
    """A PNG of random pixels about `size` bytes long (noise does not compress)."""
    side = int((size / 3) ** 0.5)
    pixels = np.random.default_rng(7).integers(0, 256, (side, side, 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="PNG", compress_level=0)
    return out.getvalue()
