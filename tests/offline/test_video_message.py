"""A video on Kafka: the offline worker answers each sampled frame, as /api/<service> does, in one sink record."""

from __future__ import annotations

import base64
import json
import sys
from pathlib import Path

import numpy as np
from test_stream import wait_for

from podserve.testbed.topics import TopicReader, send

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "runtime"))
from videos import encode, flipping_video  # noqa: E402  (the runtime tests' video maker)


def _message(video: bytes, postid: str) -> bytes:
    return json.dumps({"postid": postid, "uid": "u", "video": base64.b64encode(video).decode()}).encode()


def test_a_video_message_gets_its_frames_on_the_sink_topic_even_over_kafka_s_default_size(kafka, topics, start_worker):
    noise = np.random.default_rng(29).integers(0, 255, (60, 144, 144, 3), dtype=np.uint8)
    large = encode(list(noise), 10)  # 6 s of noise: over Kafka's default ~1 MB message once in base64
    messages = [(b"flip", _message(flipping_video(seconds=6, rate=5, flip_at=3), "flip")),
                (b"large", _message(large, "large"))]
    assert len(messages[1][1]) > 1_000_000
    worker = start_worker(topics)  # creates the topics with room for a video (max.message.bytes)
    send(kafka.admin, topics["source_topic"], messages, message_bytes=8 * 1024 * 1024)
    records = wait_for(TopicReader(kafka.admin, topics["sink_topic"]), 2, timeout=60, worker=worker)
    results = {record.key: json.loads(record.value) for record in records}
    frames = results[b"flip"]["results"]["frames"]
    assert [f["timestamp"] for f in frames] == [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]
    assert [f["angle"] for f in frames] == [0, 0, 0, 180, 180, 180]
    assert results[b"flip"]["postid"] == "flip" and len(results[b"large"]["results"]["frames"]) == 6
