"""The pod's memory plan (podserve/memory_plan.py) holds: what does not fit gets a 503 or a 413, never an OOM.

A pod whose memory holds no request body does not start (exit 2, naming the least memory that would hold). In both
layouts: a JSON body whose parse would take more than one parse's share of the pod's memory is refused 413
before it is parsed (no process of the pod ever holds its tree), and request bodies beyond the pod's budget for
them get a 503 while the pod still takes ordinary requests (large bodies may use only three quarters of it).
"""

from __future__ import annotations

import base64
import io
import json
import os
import re
import threading
from pathlib import Path

import numpy as np
import pytest
import requests
from PIL import Image

from podserve import memory_plan
from podserve.tooling import quantity
from podserve.runtime.processes import layout
from podserve.settings import ServingSettings
from podserve.testbed.processes import poll_until

from hostile import metric_value, peak_rss_bytes
from load import burst
from test_split_layout import _children

LAYOUTS = pytest.mark.parametrize("decoders", [0, 2], ids=["one-process", "split"])


def _plan(settings: dict, decoders: int, model) -> memory_plan.MemoryPlan:
    return memory_plan.plan(ServingSettings(**settings), decoders, False, layout.model_bytes(str(model)))


@LAYOUTS
def test_a_pod_whose_memory_holds_no_body_does_not_start_and_names_the_least_that_would(start_server, example_model,
                                                                                      decoders):
    settings = {"handler": "server:TextDirection", "model_path": str(example_model), "memory_bytes": 256 << 20,
                "decode_processes": decoders}
    assert _plan(settings, decoders, example_model).takes_no_body
    server = start_server(wait=False, **settings)
    assert server.process.wait(60) == 2, server.log()
    said = server.log()
    assert "memory: 256 MiB does not hold what the pod needs before any request body" in said, said
    least = int(re.search(r'this pod needs memory = "(\d+)Mi" at least', said).group(1)) << 20
    assert _plan({**settings, "memory_bytes": least}, decoders, example_model).problems() == []
    # the search is to the MiB and the answer rounded up: two MiB less never holds
    assert _plan({**settings, "memory_bytes": least - (2 << 20)}, decoders, example_model).problems()


def junk_body(image: str, size: int) -> bytes:
    """A JSON request with an image and, beside it, `size` bytes of tiny values: a tree many times its size."""
    head = json.dumps({"postid": "junk", "image": image})[:-1].encode() + b', "junk": ['
    values = (size - len(head)) // 2
    return head + b"0," * (values - 1) + b"0]}"


@LAYOUTS
def test_a_json_body_whose_parse_would_not_fit_gets_413_before_it_is_parsed(start_server, example_model, repo,
                                                                          decoders):
    # memory whose plan holds its processes and decodes, and leaves each parse less than this body's tree
    settings = {"handler": "server:TextDirection", "model_path": str(example_model),
                "memory_bytes": (2 if decoders else 1) << 30,
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
    # the plan the pod logged at start says what each share is (the supervisor's, in the split layout)
    logged = next(json.loads(line)["memory_plan"] for line in server.log().splitlines() if '"memory_plan"' in line)
    assert set(logged) == {"memory", *_plan(settings, decoders, example_model).shares()}
    assert "threads each decoding the largest image admitted" in logged["pixels"]


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


RESULTS = Path(__file__).resolve().parents[2] / "bench" / "results" / "pod-memory"


def test_every_thread_that_may_decode_is_counted_with_its_largest_image_and_parse():
    """Real thread counts (http_threads = 0 is one a core, each process's event loop too), and per thread the largest
    image at the measured bytes a pixel."""
    for http_threads, cores, threads in ((1, 4, 2), (0, 4, 5), (3, 1, 4)):
        settings = ServingSettings(http_threads=http_threads, max_image_pixels=1_000_000, memory_bytes=64 << 30)
        for decoders in (0, 3):
            plan = memory_plan.plan(settings, decoders, False, 0, cores=cores)
            assert plan.threads == threads and plan.parsers == max(1, decoders) * threads
            assert plan.pixels == max(1, decoders) * threads * 1_000_000 * memory_plan.DECODED_PIXEL_BYTES
            assert plan.parses == plan.per_parse * (plan.parsers - max(1, decoders)) + plan.loop_parse * max(1, decoders)
    bigger = memory_plan.plan(ServingSettings(memory_bytes=8 << 30, max_image_pixels=2_000_000), 0, False, 0, cores=1)
    smaller = memory_plan.plan(ServingSettings(memory_bytes=8 << 30, max_image_pixels=1_000_000), 0, False, 0, cores=1)
    assert bigger.pixels - smaller.pixels == 2 * 1_000_000 * memory_plan.DECODED_PIXEL_BYTES
    assert bigger.per_parse < smaller.per_parse  # what decodes take, the parses do not get


def test_the_shares_add_up_to_the_memory_and_each_is_said():
    for decoders, on_gpu in ((0, False), (2, False), (4, True)):
        plan = memory_plan.plan(ServingSettings(memory_bytes=8 << 30, gpu_num=int(on_gpu)), decoders, on_gpu, 600_000,
                                cores=4)
        assert plan.problems() == [] and 0.99 * (8 << 30) <= sum(plan.shares().values()) <= 8 << 30
        assert (plan.replacement > 0) == bool(decoders)  # a replaced decoder's successor, beside it
        described = plan.describe()
        assert set(described) == {"memory", *plan.shares()}
        assert all(described[name].startswith(f"{size / (1 << 20):,.0f} MiB") for name, size in plan.shares().items())


def test_the_arenas_the_processes_map_are_within_the_plans_share_and_a_successors_are_counted():
    from podserve.arena_sizing import arena_file_bytes
    from podserve.runtime.processes.transport.arena import Arena

    for memory, decoders in ((1 << 30, 1), (3 << 30, 2), (8 << 30, 4)):
        plan = memory_plan.plan(ServingSettings(memory_bytes=memory), decoders, False, 0, cores=decoders)
        sizes = plan.arena_sizes  # what decoder_process.py and model_process.py create (layout.pod_arena_sizes)
        mapped = []
        for capacity in [sizes.inputs, sizes.outputs] * decoders:
            arena = Arena(capacity, "podserve-test-arena")
            try:
                mapped.append(os.fstat(arena.fd).st_size)
            finally:
                os.close(arena.fd)
        assert sum(mapped) == sizes.allocated <= plan.arenas
        assert sizes.allocated > 0.99 * plan.arenas  # the share is used, not rounded down to a power of two
        successor = arena_file_bytes(sizes.inputs) + arena_file_bytes(sizes.outputs)
        assert plan.replacement >= successor + memory_plan.measured(memory_plan.PROCESS_MIB["decoder"][0] * memory_plan.MIB)


def test_the_body_budgets_come_from_the_pods_memory():
    from podserve.runtime.http.messages import HttpLimits

    settings = ServingSettings()
    small, large = (memory_plan.plan(ServingSettings(memory_bytes=m), 0, False, 0, cores=1) for m in (2 << 30, 8 << 30))
    assert large.uploads > small.uploads > 40 << 20 and large.bodies > small.bodies
    assert HttpLimits.from_settings(settings, large.uploads).max_pending_body_bytes == large.uploads
    # at least one largest image body, whatever the plan says
    assert HttpLimits.from_settings(settings, 1).max_pending_body_bytes * memory_plan.LARGE_BODY_SHARE >= \
        settings.max_body_bytes
    # a plan that does not hold gives no body room rather than none counted (0 would read as "no limit")
    failed = memory_plan.plan(ServingSettings(memory_bytes=256 << 20), 0, False, 0, cores=1)
    assert failed.problems() and min(failed.uploads, failed.bodies, failed.per_parse) >= 1


def test_the_plan_counts_at_least_what_each_decode_was_measured_to_hold():
    """bench/results/pod-memory/decode.json (python -m bench.decode_memory): every image format at most
    DECODED_PIXEL_BYTES a pixel, videos at most what a video thread is counted, JSON within its parse bound."""
    measured = json.loads((RESULTS / "decode.json").read_text())["rows"]
    images = [row for row in measured if row["kind"] == "image"]
    # each at most what is counted a pixel, but for the allocator's slack (a few KiB)
    assert all(row["peak"] <= memory_plan.DECODED_PIXEL_BYTES * row["size"] + (1 << 20) for row in images)
    assert max(row["per_unit"] for row in images) > 0.9 * memory_plan.DECODED_PIXEL_BYTES
    one = [row["per_unit"] for row in measured if row["kind"] == "video" and ", 1 FFmpeg" in row["case"]]
    threaded = [row["per_unit"] for row in measured if row["kind"] == "video" and ", 1 FFmpeg" not in row["case"]]
    assert max(one) <= memory_plan.VIDEO_PIXEL_BYTES and max(threaded) <= memory_plan.VIDEO_PIXEL_BYTES_THREADED
    # every JSON byte counted as a value: 2 bytes a byte and JSON_VALUE_BYTES more
    assert max(row["per_unit"] for row in measured if row["kind"] == "json") <= 2 + memory_plan.JSON_VALUE_BYTES


#: The committed measurements (python -m bench.pod_memory) and the processes each judges, against the figures of the
#: plan the measured pod ran with (it admitted by its budgets): under the plan's worst admitted load, every process of
#: the split layout; on the GPU, under ordinary load, the model process (with the CUDA context the run measured, so
#: against today's plan: the run's own counted a guessed one) and the supervisor, which hold nothing more under load.
#: Peaks as sampled at 20 Hz: the front's VmHWM went above its figure, which this does not catch (issue 69 left open;
#: bench/results/pod-memory/README.md).
MEASURED = {"pod-memory-split": ({"supervisor", "front", "decoder", "model"}, "recorded"),
            "pod-memory-split-gpu": ({"supervisor", "model"}, "today")}


@pytest.mark.parametrize("name", MEASURED)
def test_each_process_s_figure_is_within_a_quarter_of_its_measured_peak(name):
    """Issue 69's item 5, on the committed measurements of the example model: each process's plan figure at least
    its measured peak (its own memory and the shared memory it mapped), and at most a quarter over it."""
    result = json.loads((RESULTS / f"{name}.json").read_text())
    roles, which = MEASURED[name]
    figures = result["plan_processes"]
    if which == "today":
        run = result["settings"]
        settings = ServingSettings(memory_bytes=quantity.memory_bytes(run["memory"]), cpu=run["cpu"],
                                   http_threads=run["http_threads"], gpu_num=int(run["gpu"]))
        model = (Path(__file__).resolve().parents[2] / "model" / "ch_ppocr_mobile_v2.0_cls_mobile.onnx").stat().st_size
        figures = memory_plan.plan(settings, run["decoders"], run["gpu"], model, cores=run["cpu"]).process_figures()
    judged = set()
    for peak in result["peak"].values():
        role = "supervisor" if peak["role"] == "main" else peak["role"]
        if role in roles:
            measured = peak["peak_own"] + peak["peak_shmem"]
            assert measured <= figures[role] <= 1.25 * measured, (role, measured >> 20, figures[role] >> 20)
            judged.add(role)
    assert judged == roles
