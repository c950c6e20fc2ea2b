"""The runtime's parts on their own: settings, device planning, providers, the batcher, the wire format."""

from __future__ import annotations

import base64
import binascii
import os
import threading
import time

import numpy as np
import pytest
from hypothesis import given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from podserve.errors import DeadlineExceeded, HandlerFailed, InvalidInput, Overloaded, PayloadTooLarge
from podserve.handler import Device, Handler, OnnxHandler, Payload, gpu_padded_size, onnx_providers
from podserve.runtime.batching.batcher import RUNNING, BatchWorker, WorkItem
from podserve.runtime.core.devices import cpu_share, plan_devices
from podserve.runtime.http.probe_lane import request_line
from podserve.runtime.protocols import api
from podserve.settings import ServingSettings, SettingsError
from podserve.testbed.processes import poll_until

from fixture_handlers import record_runs


def test_settings_round_trip_through_the_environment():
    settings = ServingSettings(service_name="ocr", max_batch_size=32, max_batch_delay_ms=3.5, gpu_num=2)
    assert ServingSettings.from_env(settings.to_env()) == settings
    assert settings.to_env()["PODSERVE_MAX_BATCH_SIZE"] == "32"


@pytest.mark.parametrize("env, message", [
    ({"PODSERVE_MAX_BATCH_SIZE": "lots"}, "PODSERVE_MAX_BATCH_SIZE='lots' is not a valid int"),
    ({"PODSERVE_QUEUE_SIZE": "0"}, "PODSERVE_QUEUE_SIZE=0 must be above 0"),
    ({"PODSERVE_DRAIN_SECONDS": "-1"}, "PODSERVE_DRAIN_SECONDS=-1.0 must be 0 or more"),
    ({"PODSERVE_HANDLER": "server.Handler"}, "must be 'module:Class'"),
])
def test_bad_settings_name_the_variable(env, message):
    with pytest.raises(SettingsError, match=message.replace("(", r"\(").replace(")", r"\)")):
        ServingSettings.from_env(env)


def test_gpu_plan_puts_instances_on_each_visible_gpu_with_the_memory_limit():
    settings = ServingSettings(gpu_num=2, ins_num_per_gpu=2, gpu_memory=10)
    devices = plan_devices(settings, {"CUDA_VISIBLE_DEVICES": "3,5"}, cuda_available=True,
                           device_files=["/dev/nvidia3", "/dev/nvidia5"])
    assert [(d.kind, d.index) for d in devices] == [("cuda", 0), ("cuda", 0), ("cuda", 1), ("cuda", 1)]
    assert {d.memory_limit_bytes for d in devices} == {10 * 1024 ** 3}
    providers = onnx_providers(devices[2], ["CUDAExecutionProvider", "CPUExecutionProvider"])
    assert providers == [("CUDAExecutionProvider", {"device_id": 1, "gpu_mem_limit": 10 * 1024 ** 3,
                                                     "arena_extend_strategy": "kSameAsRequested",
                                                     "cudnn_conv_use_max_workspace": "0",
                                                     "cudnn_conv_algo_search": "HEURISTIC"}),
                         "CPUExecutionProvider"]
    # No memory limit asked (gpu_memory = 0): none passed, the arena still grows only by what is asked.
    unlimited = onnx_providers(Device("cuda", 0), ["CUDAExecutionProvider"])[0][1]
    assert "gpu_mem_limit" not in unlimited and unlimited["arena_extend_strategy"] == "kSameAsRequested"


def test_a_gpu_session_pads_runs_to_max_batch_size_or_to_the_batch_its_model_fixes():
    assert gpu_padded_size(["N", 3, 48, 192], 16) == 16
    assert gpu_padded_size([None, 3], 8) == 8
    assert gpu_padded_size([1, 3, 48, 192], 16) == 1  # a batch of 1 fixed: runs of 1, one after another
    assert gpu_padded_size([8, 3], 4) == 8  # the model's 8 rows even when max_batch_size gives a call fewer


@pytest.mark.parametrize("padded_size, max_batch_size, largest", [(16, 16, 16), (1, 16, 1), (8, 4, 4)])
def test_where_runs_are_padded_a_call_gets_at_most_one_run(padded_size, max_batch_size, largest):
    """On a GPU (runs padded to one size, no run size) the batcher's largest call is one padded run: a model whose
    batch axis is fixed at 1 gets one input a call, not max_batch_size inputs run one after another."""
    from podserve.runtime.batching.batcher import largest_batch

    handler = Recorder()
    handler.padded_size = padded_size
    assert largest_batch(handler, max_batch_size, 0.005) == largest


def test_padded_runs_are_one_shape_and_each_input_gets_its_own_answer(affine_model):
    """With `padded_size` (a GPU's), a batch of 3 runs as 4 rows and one of 6 as two runs of 4; the padding's
    outputs are dropped, and every input gets its own y = 2x + 1."""
    class Affine(OnnxHandler):
        input_shape = (2,)

    handler = Affine()
    handler.load(str(affine_model), Device("cpu", 0, cpu_threads=1))
    handler.run_size, handler.padded_size = None, 4
    shapes = record_runs(handler)
    for size in (1, 3, 4, 6):
        batch = [np.full(2, float(i), dtype=np.float32) for i in range(size)]
        outputs = handler.predict(batch)
        assert [o.tolist() for o in outputs] == [[2 * i + 1.0] * 2 for i in range(size)]
    assert set(shapes) == {(4, 2)} and len(shapes) == 5


def test_without_cuda_the_plan_falls_back_to_the_cpu_and_splits_its_threads(tmp_path):
    settings = ServingSettings(gpu_num=1, ins_num_per_gpu=2, cpu=64)
    devices = plan_devices(settings, {}, cuda_available=False)
    assert [d.kind for d in devices] == ["cpu", "cpu"]
    assert devices[0].cpu_threads == max(1, int(cpu_share(settings) // 2))
    assert onnx_providers(devices[0], ["CUDAExecutionProvider", "CPUExecutionProvider"]) == ["CPUExecutionProvider"]
    (tmp_path / "cpu.max").write_text("150000 100000\n")
    assert cpu_share(ServingSettings(cpu=0), cgroup_root=tmp_path) == min(1.5, cpu_share(ServingSettings(cpu=64)))
    assert plan_devices(settings, {"CUDA_VISIBLE_DEVICES": ""}, cuda_available=True,
                        device_files=["/dev/nvidia0"])[0].kind == "cpu"


class Recorder(Handler):
    """Records every batch it is given; returns each input's negation."""

    def __init__(self, drop_one: bool = False):
        self.batches: list[list] = []
        self.drop_one = drop_one

    def predict(self, batch):
        self.batches.append(list(batch))
        outputs = [-x for x in batch]
        return outputs[:-1] if self.drop_one else outputs


def _worker(handler, **kwargs) -> BatchWorker:
    options = {"max_batch_size": 8, "max_batch_delay": 0.05, "capacity": 64, **kwargs}
    worker = BatchWorker("test", handler, **options)
    worker.start()
    return worker


def test_batcher_groups_by_shape_and_answers_every_item_in_order():
    handler = Recorder()
    worker = BatchWorker("test", handler, max_batch_size=8, max_batch_delay=0.05, capacity=64)
    inputs = [np.full(1 + i % 2, float(i)) for i in range(8)]
    items = [WorkItem(x, handler.batch_key(x), time.monotonic() + 5) for x in inputs]
    for item in items:  # queued before the batch thread looks, so it finds all eight however slowly they came
        worker.submit(item)
    worker.start()
    outputs = [item.wait() for item in items]
    worker.stop(5)
    assert all(np.array_equal(out, -x) for out, x in zip(outputs, inputs))
    assert sorted(len(b) for b in handler.batches) == [4, 4]
    assert all(len({x.shape for x in batch}) == 1 for batch in handler.batches)


def test_batcher_checks_the_contract_and_names_the_handler():
    worker = _worker(Recorder(drop_one=True))
    item = WorkItem(1.0, None, time.monotonic() + 5)
    worker.submit(item)
    with pytest.raises(HandlerFailed, match="Recorder.predict returned 0 outputs for a batch of 1"):
        item.wait()
    worker.stop(5)


def test_batcher_refuses_when_full_and_withdraws_at_the_deadline():
    release = threading.Event()

    class Blocked(Recorder):
        def predict(self, batch):
            release.wait(5)
            return super().predict(batch)

    worker = _worker(Blocked(), max_batch_size=1, max_batch_delay=0.0, capacity=1)
    running = WorkItem(1.0, None, time.monotonic() + 5)
    worker.submit(running)
    poll_until(lambda: worker.running == 1, "the batch thread running the first item", timeout=5, every=0.001)
    queued = WorkItem(2.0, None, time.monotonic() + 0.1)
    worker.submit(queued)
    with pytest.raises(Overloaded):
        worker.submit(WorkItem(3.0, None, time.monotonic() + 5))
    with pytest.raises(DeadlineExceeded):
        queued.wait()
    release.set()
    assert running.wait() == -1.0
    worker.stop(5)
    assert worker.handler.batches == [[1.0]]


def test_json_and_raw_requests_become_the_same_payload():
    as_json = api.parse_request("application/json", b'{"postid": "p", "uid": 3, "image": "aGk="}', {}, 100)
    raw = api.parse_request("application/octet-stream", b"hi", {"postid": "p", "uid": 3}, 100)
    assert (as_json.image, as_json.postid, as_json.uid) == (raw.image, raw.postid, raw.uid) == (b"hi", "p", 3)
    wrapped = "aGVsbG8g\nd29ybGQ=\n"  # base64 as `base64` prints it, wrapped
    assert api.parse_json_request(f'{{"image": "{wrapped.replace(chr(10), chr(92) + "n")}"}}'.encode(), 100).image \
        == b"hello world"
    with pytest.raises(InvalidInput) as error:
        api.parse_json_request(b'{"image": "aGk=", "video": "x"}', 100)
    assert error.value.field == "video"


@given(st.text(alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/=\n -_é", max_size=24))
@hypothesis_settings(max_examples=3000, deadline=None)
def test_an_image_field_decodes_exactly_as_the_standard_librarys_strict_base64(text):
    """The fast decoder (pybase64) never accepts what the standard library's strict mode refuses, nor decodes to
    other bytes: what it refuses falls back to the standard library, whose answer stands (issue 70)."""
    try:
        expected = base64.b64decode(text.encode("ascii"), validate=True)
    except (ValueError, binascii.Error):
        try:
            expected = base64.b64decode(b"".join(text.encode("ascii").split()), validate=True)  # line-wrapped
        except (ValueError, binascii.Error):
            expected = None
    if expected is None:
        with pytest.raises(InvalidInput, match="'image' is not valid base64") as error:
            api._decode_base64(text)
        assert error.value.field == "image"
    else:
        assert api._decode_base64(text) == expected


def test_a_json_body_over_max_body_bytes_is_parsed_only_when_it_is_little_more_than_a_videos_base64():
    """The front end lets JSON in as large as a base64 video's; one whose bytes beside that string could be millions of
    JSON values is refused 413 before it is parsed (parsed, the 500,000 `{}` below held 38 MB for a 1.5 MB body)."""
    import tracemalloc

    limits = api.InputLimits(max_body_bytes=64 * 1024, max_video_bytes=1024 * 1024)
    junk = b'{"video": "AAAA", "x": [' + b"{}," * 500_000 + b"{}]}"
    tracemalloc.start()
    try:
        with pytest.raises(PayloadTooLarge) as error:
            api.parse_json_request(junk, limits)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert error.value.field == "body" and "1500015 bytes of other JSON" in error.value.message, error.value.message
    assert peak < 2 * len(junk), peak
    # A video's JSON as encoders write it (line-wrapped base64, "/" escaped as "\/") is parsed, however large.
    video = os.urandom(300_000)
    wrapped = "\\n".join(base64.b64encode(video).decode()[i:i + 76] for i in range(0, 400_000, 76))
    body = ('{"postid": "p-1", "uid": "u_2", "video": "' + wrapped.replace("/", "\\/") + '"}').encode()
    assert len(body) > limits.max_body_bytes
    assert api.parse_json_request(body, limits).video == video


def test_payload_refuses_images_over_the_pixel_limit_before_decoding():
    import io

    from PIL import Image

    png = io.BytesIO()
    Image.new("RGB", (100, 100)).save(png, "PNG")
    with pytest.raises(InvalidInput, match="100x100 = 10000 pixels, over the limit of 9999"):
        Payload(image=png.getvalue(), max_image_pixels=9999).open_image()
    assert Payload(image=png.getvalue(), max_image_pixels=10000).open_image().size == (100, 100)


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")  # Pillow's own, before we refuse
def test_an_image_over_pillows_bomb_threshold_is_refused_even_when_the_pixel_limit_allows_it():
    from malformed import png_claiming
    from PIL import Image

    # Between Pillow's warning threshold and twice it, Pillow only warns; a server must refuse, from any thread.
    side = int((1.5 * Image.MAX_IMAGE_PIXELS) ** 0.5)
    payload = Payload(image=png_claiming(side, side), max_image_pixels=10 * Image.MAX_IMAGE_PIXELS)
    errors: list = []

    def open_it() -> None:
        try:
            payload.open_image()
        except InvalidInput as exc:
            errors.append(exc)

    threads = [threading.Thread(target=open_it) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(errors) == 4 and all("decompression bomb" in e.message and e.field == "image" for e in errors)


def test_device_labels():
    assert Device("cuda", 1).label == "cuda1" and Device("cpu").label == "cpu"


def test_the_handler_docstring_example_runs_as_written():
    import textwrap

    doc = textwrap.dedent(Handler.__doc__.split("\n", 1)[1])
    lines = doc[doc.index("::\n") + 3:].splitlines()
    example = []
    for line in lines:
        if line and not line.startswith(" "):
            break  # the first unindented line ends the literal block
        example.append(line)
    namespace: dict = {}
    exec(compile(textwrap.dedent("\n".join(example)), "Handler.__doc__", "exec"), namespace)
    assert "Doubler" in namespace


def test_warm_up_runs_every_batch_size_the_batcher_can_form():
    from prometheus_client import CollectorRegistry

    from podserve.runtime.batching.pool import InstancePool
    from podserve.runtime.core.metrics import Metrics

    sizes: list[int] = []

    class Recorder(Handler):
        def warmup_inputs(self):
            return [np.zeros(3, dtype=np.float32)]

        def predict(self, batch):
            sizes.append(len(batch))
            return list(batch)

    settings = ServingSettings(max_batch_size=6, ins_num_per_gpu=2)
    pool = InstancePool(Recorder, [Device("cpu"), Device("cpu")], settings, Metrics("warm", CollectorRegistry()))
    pool.load()
    try:
        assert pool.ready, pool.status()
        # Each instance: every size once, no batch padded; then three timed runs of the smallest and the largest
        # (the batch policy's first measure of a call's cost).
        assert sizes == ([1, 2, 3, 4, 5, 6] + [1] * 3 + [6] * 3) * 2
    finally:
        pool.stop()


def test_a_pool_loaded_in_the_background_sets_start_up_objects_aside_from_garbage_collection():
    """Later full collections skip what start-up left alive (the pod's entry points load in the background)."""
    import gc

    from prometheus_client import CollectorRegistry

    from podserve.runtime.batching.pool import InstancePool
    from podserve.runtime.core.metrics import Metrics

    class Node:
        me = None

    class Echo(Handler):
        def warmup_inputs(self):
            return [np.zeros(3, dtype=np.float32)]

        def predict(self, batch):
            return list(batch)

    alive = Node()
    alive.me = alive  # a cycle alive at start-up: full collections would scan it every time
    pool = InstancePool(Echo, [Device("cpu")], ServingSettings(), Metrics("settle", CollectorRegistry()))
    try:
        pool.load_in_background().join(timeout=30)
        assert pool.ready, pool.status()
        assert gc.get_freeze_count() > 0
        assert not any(tracked is alive for tracked in gc.get_objects())
        later = Node()
        later.me = later  # allocated while serving: still collected as usual
        assert any(tracked is later for tracked in gc.get_objects())
    finally:
        gc.unfreeze()
        pool.stop()


@pytest.mark.parametrize("run_size, run_seconds, limit", [
    (None, 0.0, 16),   # GPU-like: one call takes a full max_batch_size
    (2, 0.002, 4),     # CPU: two runs of 2 fit in max_batch_delay_ms (5 ms)
    (8, 0.009, 8),     # CPU: one run of 8 is already past the delay
])
def test_each_instance_exports_the_batch_limit_its_batcher_uses(run_size, run_seconds, limit):
    """The dashboard's batch panel compares the mean batch with `podserve_batch_limit`, not max_batch_size alone:
    on the CPU the batcher gives a call fewer inputs, and a mean far under max_batch_size is no fault there."""
    from prometheus_client import CollectorRegistry

    from podserve.runtime.batching.pool import InstancePool
    from podserve.runtime.core.metrics import Metrics

    class Runs(Handler):
        def warmup_inputs(self):
            return [np.zeros(3, dtype=np.float32)]

        def predict(self, batch):
            return list(batch)

    Runs.run_size, Runs.run_seconds = run_size, run_seconds
    registry = CollectorRegistry()
    settings = ServingSettings(max_batch_size=16, max_batch_delay_ms=5)
    pool = InstancePool(Runs, [Device("cpu")], settings, Metrics("limits", registry))
    pool.load()
    try:
        assert pool.ready, pool.status()
        exported = registry.get_sample_value("podserve_batch_limit",
                                             {"service": "limits", "model_instance": pool.names[0]})
        assert exported == limit == pool.workers[0].largest
    finally:
        pool.stop()


def test_run_sizes_are_timed_by_the_threads_cpu_clock_not_time_spent_preempted():
    """Runs of 2 that cost less CPU per input than runs of 1 but spend longer off the CPU (as a run preempted
    by another process does) are still the cheapest: a neighbour's load must not pick the run size."""
    from fixture_handlers import spin_cpu

    class Preempted(OnnxHandler):
        def warmup_inputs(self):
            return [np.zeros(3, dtype=np.float32)]

        def _run(self, batch, all_outputs=False):
            spin_cpu(0.002 if len(batch) == 1 else 0.001 * len(batch))  # CPU per input: 2 ms in a run of 1, 1 ms in 2
            if len(batch) == 2:
                time.sleep(0.006)  # off the CPU: by the wall clock a run of 2 costs 4 ms per input
            return list(batch)

    handler = Preempted()
    assert handler._cheapest_run_size([1, 2], rounds=1) == 2
    assert 0.0015 < handler.run_seconds < 0.004  # one run of 2: its CPU time, not its 8 ms of wall time


@pytest.mark.parametrize("relative_cost, picked", [
    ({1: 1.00, 2: 0.995, 4: 1.05}, 1),  # 2 timed 0.5% cheaper: a tie, the smaller run wins (the detector's case)
    ({1: 1.06, 2: 1.00, 4: 0.995}, 2),  # 1 clearly costlier, 2 and 4 tied (the classifier's case)
    ({1: 1.10, 2: 1.05, 4: 1.00}, 4),  # each larger size clearly cheaper: the cheapest
])
def test_run_sizes_within_the_tie_of_the_cheapest_go_to_the_smallest(relative_cost, picked):
    """Start-up timing cannot tell sizes apart within RUN_SIZE_TIE, and served the larger of such a tie costs more
    (bench/optimisations.json): the smallest size within it of the cheapest is picked, never a clearly costlier one."""
    from fixture_handlers import spin_cpu

    class Timed(OnnxHandler):
        def warmup_inputs(self):
            return [np.zeros(3, dtype=np.float32)]

        def _run(self, batch, all_outputs=False):
            spin_cpu(relative_cost[len(batch)] * 0.004 * len(batch))  # CPU per input: 4 ms for a cost of 1.00
            return list(batch)

    assert Timed.RUN_SIZE_TIE == 0.02
    assert Timed()._cheapest_run_size(list(relative_cost), rounds=2) == picked


@pytest.mark.parametrize("run_size, lowered", [(1, True), (None, False)])
def test_a_cpu_instances_batch_threads_run_below_the_request_threads_and_a_gpus_do_not(run_size, lowered):
    """On the CPU the lanes yield a core to the threads that feed them (bench/optimisations.json); a GPU's lane
    (no run size) keeps the process's priority, as its device idles whenever it waits for a core."""
    from podserve.runtime.batching.batcher import CPU_LANE_NICENESS

    handler = Recorder()
    handler.run_size, handler.concurrent_batches = run_size, 2
    worker = _worker(handler)
    try:
        deadline = time.monotonic() + 10
        while worker._idle_lanes < 2 and time.monotonic() < deadline:  # a lane sets its priority before it waits
            time.sleep(0.01)
        own = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
        lanes = [os.getpriority(os.PRIO_PROCESS, thread.native_id) for thread in worker._threads]
        assert lanes == [min(19, own + CPU_LANE_NICENESS) if lowered else own] * 2
    finally:
        worker.stop(timeout=5)


def test_a_batch_is_counted_before_any_of_its_items_is_answered():
    """The batch metrics are observed before the items are finished, so /metrics read by a caller that has its
    answer always counts that answer's batch (a lane at nice +5 may be preempted between the two)."""
    seen: list[list[str]] = []
    worker = _worker(Recorder(), on_batch=lambda _w, _size, _s, items, _cpu: seen.append([i.state for i in items]))
    try:
        item = WorkItem(1.0, None, time.monotonic() + 5)
        worker.submit(item)
        assert item.wait() == -1.0
        assert seen == [[RUNNING]]
    finally:
        worker.stop(timeout=5)


@pytest.mark.parametrize("name", ["chars_read\n", "Chars", "", 7])
def test_a_service_metric_name_that_is_not_a_whole_metric_name_is_refused(name):
    from podserve import service_metrics

    with pytest.raises(ValueError, match="must match"):
        service_metrics.counter(name, "Characters read.")


@pytest.mark.parametrize("line, parsed", [
    (b"GET /api/ping HTTP/1.1\r", ("/api/ping", "GET")),
    (b"HEAD /api/live?from=kubelet HTTP/1.0", ("/api/live", "HEAD")),
    (b"GET /api/ping", None),                       # HTTP/0.9: no version
    (b"GET /api/ping HTTP/2.0\r", None),            # not HTTP/1.x
    (b"GET  /api/ping HTTP/1.1\r", None),           # two spaces
    (b"GET api/ping HTTP/1.1\r", None),             # not an origin-form path
    (b"G3T /api/ping HTTP/1.1\r", None),            # not a method
    (b"\x16\x03\x01\x02\x00\x01\x00\x01", None),  # a TLS ClientHello
])
def test_the_probe_lane_reads_only_an_http_1_request_line(line, parsed):
    assert request_line(line) == parsed
