"""The offline worker queues a whole fetch for the batcher before it waits for any output: a fetch is batched,
and each result is encoded with its own message's context (WithContext) although its batch held others.

In process, without a broker: `OfflineWorker.process` on a fetch of messages (podserve.testbed.topics.StandInMessage:
confluent_kafka's Message only a broker can make) against a real InstancePool whose handler holds every predict
call until the test opens its gate. The fetch is decoded and queued whole behind the held calls, so how it is
batched does not depend on how fast one decode thread feeds the batch threads (the 10,000-message test on the
real broker measures that, and on a CPU the batch policy runs small batches at once where waiting would not pay).
"""

from __future__ import annotations

import json
import threading
import time

import numpy as np
from prometheus_client import CollectorRegistry

from podserve import Handler, WithContext
from podserve.handler import Device
from podserve.runtime.batching.pool import InstancePool
from podserve.runtime.core.metrics import Metrics
from podserve.runtime.offline.metrics import MessageMetrics
from podserve.runtime.offline.worker import OfflineWorker
from podserve.settings import ServingSettings
from podserve.testbed.topics import StandInMessage

FETCH = 64


class HeldSummer(Handler):
    """Sums each input, keeping its postid as the context; while `opened` is clear, every predict call records
    its size and waits for it."""

    opened = threading.Event()
    held: list[int] = []
    sizes: list[int] = []

    def load(self, model_path, device):
        pass

    def warmup_inputs(self):
        return [np.zeros(3)]

    def decode(self, payload):
        return WithContext(np.asarray(payload.data, dtype=np.float64), {"postid": payload.postid})

    def predict(self, batch):
        if not self.opened.is_set():
            self.held.append(len(batch))
            assert self.opened.wait(30), "the test never opened the gate"
        self.sizes.append(len(batch))
        return [float(item.sum()) for item in batch]

    def encode(self, total, context):
        return {"sum": total, **context}


def summing_worker() -> tuple[InstancePool, OfflineWorker]:
    """A loaded pool of HeldSummer (its gate open) and a worker on it with no broker: only `process` is called."""
    settings = ServingSettings(service_name="summer", max_batch_size=16, max_batch_delay_ms=5, queue_size=FETCH)
    pool = InstancePool(HeldSummer, [Device("cpu")], settings, Metrics("summer", CollectorRegistry()))
    HeldSummer.opened.set()
    pool.load()
    assert pool.ready, pool.status()
    return pool, OfflineWorker(settings, "lines", pool, consumer=None, sink=None, dead_letters=None,
                               metrics=MessageMetrics("summer", "lines", CollectorRegistry()))


def test_a_fetch_is_queued_whole_and_run_in_batches_each_result_with_its_own_context():
    pool, worker = summing_worker()
    fetch = [StandInMessage(i, json.dumps({"postid": f"p-{i}", "data": [i, 1]}).encode()) for i in range(FETCH)]
    HeldSummer.sizes.clear()
    HeldSummer.held.clear()
    HeldSummer.opened.clear()
    done: list = []
    processing = threading.Thread(target=lambda: done.append(worker.process(fetch)))
    try:
        processing.start()
        deadline = time.monotonic() + 30
        while sum(HeldSummer.held) + sum(w.depth for w in pool.workers) < FETCH and time.monotonic() < deadline:
            time.sleep(0.005)
        assert sum(HeldSummer.held) + sum(w.depth for w in pool.workers) == FETCH, "the fetch was not queued whole"
    finally:
        HeldSummer.opened.set()
        processing.join(30)
        pool.stop()
    results, dead = done[0]
    assert dead == []
    assert [(r.key, json.loads(r.value)["results"]) for r in results] == [
        (f"m-{i}".encode(), {"sum": float(i + 1), "postid": f"p-{i}"}) for i in range(FETCH)]
    assert sum(HeldSummer.sizes) == FETCH
    print(f"batches of {HeldSummer.sizes}")
    assert FETCH / len(HeldSummer.sizes) > 4, f"mean batch {FETCH / len(HeldSummer.sizes):.2f} for a fetch of {FETCH}"


def test_a_bug_of_the_runtime_on_one_message_dead_letters_it_and_answers_the_rest(monkeypatch):
    """A stand-in for a platform bug: the worker's own submit raises on one message. That message is dead-lettered as
    internal_error (and logged as a fault of the runtime's own); the fetch's others are answered; process returns,
    where the worker used to exit and read the same message again on restart."""
    from podserve.runtime.offline import records

    pool, worker = summing_worker()
    submit = worker._submit

    def buggy(model_input, key):
        if model_input[0] == 13:
            raise AttributeError("a bug of the runtime's own")
        return submit(model_input, key)

    monkeypatch.setattr(worker, "_submit", buggy)
    fetch = [StandInMessage(i, json.dumps({"postid": f"p-{i}", "data": [i, 1]}).encode()) for i in range(20)]
    try:
        results, dead = worker.process(fetch)
    finally:
        pool.stop()
    assert [r.key for r in results] == [f"m-{i}".encode() for i in range(20) if i != 13]
    (letter,) = dead
    headers = records.headers_dict(letter.headers)
    assert (letter.key, headers[records.ERROR_HEADER]) == (b"m-13", "internal_error")
    assert "AttributeError" in headers[records.MESSAGE_HEADER]
