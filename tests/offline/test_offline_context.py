"""The per-request context reaches `encode` for each message in the offline worker too, whatever the batches.

How the broker's messages are batched here depends on how fast one decode thread feeds the batch threads; that
results keep their own context inside shared batches is shown deterministically by test_fetch_batching.py.
"""

from __future__ import annotations

import json

from podserve import metric_names as names
from podserve.testbed.topics import TopicReader, send
from test_stream import wait_for


def test_each_result_is_encoded_with_its_own_messages_context(kafka, topics, start_worker):
    messages = [(f"m-{i}".encode(), json.dumps({"postid": f"p-{i}", "data": [i] * (1 + i % 3)}).encode())
                for i in range(60)]
    worker = start_worker(topics, handler="context_handler:Summer")
    send(kafka.admin, topics["source_topic"], messages)
    results = wait_for(TopicReader(kafka.admin, topics["sink_topic"]), len(messages), timeout=60, worker=worker)
    assert {r.key: json.loads(r.value)["results"] for r in results} == {
        f"m-{i}".encode(): {"sum": float(i * (1 + i % 3)), "postid": f"p-{i}", "count": 1 + i % 3} for i in range(60)}
    print(f"{len(messages)} messages in {worker.metric(names.BATCH_SIZE + '_count'):.0f} batches")
