"""The per-request context: what `decode` returns in WithContext reaches `encode` for that request, batched or not."""

from __future__ import annotations

import threading

import numpy as np
from load import burst

from podserve import Handler, WithContext, metric_names
from podserve.handler import Device, Payload
from podserve.testbed.processes import poll_until


def test_each_answer_gets_its_own_requests_context_when_requests_are_batched(start_server, affine_model, tmp_path):
    gate = tmp_path / "gate"  # while it is there, predict waits: the burst queues behind the first batch
    server = start_server(handler="fixture_handlers:GatedScaledAffine", model_path=str(affine_model),
                          max_batch_size=16, max_batch_delay_ms=50, ins_num_per_gpu=1,
                          TEST_PREDICT_GATE=str(gate))  # ready: the warm-up ran on decode's results
    vectors = [[float(i + 1), -2.0 * (i + 1), 0.5, float(i % 7)] for i in range(48)]
    gate.touch()
    replies: list = []
    sender = threading.Thread(target=lambda: replies.extend(
        burst(server.api, [{"json": {"postid": str(i), "data": v}} for i, v in enumerate(vectors)])))
    sender.start()
    try:
        # However slowly the callers arrive, the first batch runs only once all 48 are in flight: the rest are
        # queued behind it and batched together.
        poll_until(lambda: server.metric_sum(metric_names.IN_FLIGHT) == 48, "all 48 callers in flight", timeout=60,
                   every=0.01)
    finally:
        gate.unlink(missing_ok=True)
        sender.join(60)
    assert [r.status_code for r in replies] == [200] * 48
    for i, (reply, vector) in enumerate(zip(replies, vectors)):
        results = reply.json()["results"]
        assert results["postid"] == str(i)
        assert results["y"] == [round(2 * x + 1, 3) for x in vector]
    batches, items = server.metric_sum("podserve_batch_size_count"), server.metric_sum("podserve_batch_size_sum")
    assert items / batches > 1, "the requests were never batched: the test proves nothing about batching"


def test_warm_up_runs_on_decode_results_with_the_context_set_aside():
    from prometheus_client import CollectorRegistry

    from podserve.runtime.batching.pool import InstancePool
    from podserve.runtime.core.metrics import Metrics
    from podserve.settings import ServingSettings

    seen: list = []

    class Recorder(Handler):
        def decode(self, payload):
            return WithContext(np.zeros(3, dtype=np.float32), {"size": (640, 480)})

        def warmup_inputs(self):
            return [self.decode(Payload(data=[0]))]

        def predict(self, batch):
            seen.extend(type(item) for item in batch)
            return list(batch)

    pool = InstancePool(Recorder, [Device("cpu")], ServingSettings(max_batch_size=3),
                        Metrics("warm", CollectorRegistry()))
    pool.load()
    try:
        assert pool.ready, pool.status()
        # Batches of 1, 2 and 3 bare inputs, three timed runs of 1 and of 3, then the contract check's synthetic
        # request (runtime/batching/contract.py): predict never sees a context.
        assert seen == [np.ndarray] * (6 + 3 * 1 + 3 * 3 + 1)
    finally:
        pool.stop()
