"""The GPU stand-in looks to the batcher like a GPU instance, and decodes and encodes as the example does."""

import time

import numpy as np
from prometheus_client import CollectorRegistry

from bench.standin import OUTPUT, PREDICT_SECONDS, GpuStandIn
from bench.workloads import CALLER_MIX, STANDIN, text_line_mix
from podserve.handler import Device, Payload
from podserve.runtime.batching.pool import InstancePool
from podserve.runtime.core.metrics import Metrics
from podserve.settings import ServingSettings
from server import TextDirection


def test_the_batcher_sees_one_lane_full_batches_and_a_fixed_cost_per_call():
    settings = ServingSettings(max_batch_size=16, max_batch_delay_ms=5)
    pool = InstancePool(GpuStandIn, [Device("cpu")], settings, Metrics("standin", CollectorRegistry()))
    try:
        pool.load()
        assert pool.ready, pool.status()
        worker = pool.workers[0]
        assert worker.handler.run_size is None and worker.lanes == 1 and worker.largest == 16
        # The warm-up's timed calls of 1 and 16 inputs (the least of three each): a call's cost is fixed, as a GPU's
        # is (a sleep never ends early; a busy machine may only make the larger call look dearer)...
        assert worker.cost.fixed >= 0.9 * PREDICT_SECONDS and worker.cost.per_item < worker.cost.fixed
        # ...so a batch of 4 waits for more (within the delay) and a lane holds it open up to one call's cost.
        assert worker.cost.worth_waiting(4, 16) and not worker.cost.worth_waiting(16, 16)
        assert worker.cost.longest_worth_holding(0.005) >= 0.9 * PREDICT_SECONDS
    finally:
        pool.stop()


def test_predict_waits_its_fixed_cost_without_a_core_and_answers_one_output_per_input():
    handler = GpuStandIn()
    handler.load("unused", Device("cpu"))
    batch = [np.zeros(handler.input_shape, dtype=np.float32)] * 16
    calls = 20
    began, cpu_began = time.perf_counter(), time.thread_time()
    for _ in range(calls):
        outputs = handler.predict(batch)
    wall, cpu = time.perf_counter() - began, time.thread_time() - cpu_began
    # Slept: the core (and so the GIL) was free. A loop spinning out the time would use the core for as long as the
    # machine let it run: all of the wall time on an idle machine, a fifth of it on this busy one.
    assert wall >= calls * PREDICT_SECONDS and cpu < 0.1 * wall, (wall, cpu)
    assert len(outputs) == 16 and all(o.shape == (2,) and o.dtype == np.float32 for o in outputs)
    outputs[0][0] = -1.0
    assert handler.predict(batch[:1])[0][0] == OUTPUT[0]  # each output its own array: no caller changes another's


def test_decode_and_encode_are_the_example_s_own():
    stand_in, example = GpuStandIn(), TextDirection()
    assert STANDIN.handler == "bench.standin:GpuStandIn" and STANDIN.concurrencies == (64,)
    for image in text_line_mix():
        decoded = stand_in.decode(Payload(image=image))
        assert decoded.shape == (3, 48, 192) and np.array_equal(decoded, example.decode(Payload(image=image)))
    assert stand_in.encode(OUTPUT) == {"angle": 0, "score": 0.9}


def test_the_callers_mix_is_text_lines_from_narrow_crops_to_camera_frames_in_png_and_jpeg():
    from io import BytesIO

    from PIL import Image

    images = text_line_mix()
    assert images == text_line_mix()  # the same bytes every time: runs compare
    opened = [Image.open(BytesIO(image)) for image in images]
    assert [(i.width, i.height, i.format) for i in opened] == [(w, h, f) for w, h, f, _ in CALLER_MIX]
    assert {i.format for i in opened} == {"PNG", "JPEG"} and opened[0].width < 100 and opened[-1].width >= 1920
    # drawn text in both directions: the example's model reads some upright and some upside down
    classifier = TextDirection()
    classifier.load("model/ch_ppocr_mobile_v2.0_cls_mobile.onnx", Device("cpu"))
    angles = [classifier.encode(classifier.predict([classifier.decode(Payload(image=image))])[0])["angle"]
              for image in images]
    upside_down = [180 if turned else 0 for _, _, _, turned in CALLER_MIX]
    assert sum(a == b for a, b in zip(angles, upside_down)) >= 0.9 * len(images), (angles, upside_down)
