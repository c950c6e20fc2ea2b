"""The per-request context reaches `encode` for each message in the offline worker too, whatever the batches."""

from __future__ import annotations

import json

from podserve import metric_names as names
from podserve.testbed.topics import TopicReader, send
from test_stream import wait_for


def test_each_result_is_encoded_with_its_own_messages_context(kafka, topics, start_worker):
    messages = [(f"m-{i}".encode(), json.dumps({"postid": f"p-{i}", "data": [i] * (1 + i % 3)}).encode())
                for i in range(60)]
    worker = start_worker(topics, handler="context_handler:Summer")
    send(kafka.bootstrap, topics["source_topic"], messages)
    results = wait_for(TopicReader(kafka.bootstrap, topics["sink_topic"]), len(messages), timeout=60, worker=worker)
    assert {r.key: json.loads(r.value)["results"] for r in results} == {
        f"m-{i}".encode(): {"sum": float(i * (1 + i % 3)), "postid": f"p-{i}", "count": 1 + i % 3} for i in range(60)}
    batches = worker.metric(names.BATCH_SIZE + "_count")
    print(f"{len(messages)} messages in {batches:.0f} batches")
    assert batches < len(messages)  # some messages shared a batch
