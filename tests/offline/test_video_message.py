"""A video on Kafka: the offline worker answers each sampled frame, as /api/<service> does, in one sink record."""

from __future__ import annotations

import base64
import json
import sys
from pathlib import Path

import numpy as np
from test_stream import wait_for

from podserve.runtime.offline.records import ERROR_HEADER
from podserve.testbed.topics import TopicReader, send

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "runtime"))
from videos import encode, flipping_video, latin1_titled, text_frame  # noqa: E402  (the runtime tests' video maker)


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


def test_a_video_in_a_container_not_read_is_dead_lettered_and_one_with_latin_1_tags_answered(kafka, topics,
                                                                                             start_worker):
    """Before fb7bc43 each of the first two raised out of PyAV with an error that was not the platform's: the worker
    exited, restarted, read the same message again and exited again, holding its partition."""
    frames = [text_frame(False)] * 2 + [text_frame(True)] * 2
    messages = [(b"flv", _message(encode(frames, 1, fmt="flv", codec="flv"), "flv")),
                (b"latin-1", _message(latin1_titled(frames, 1), "latin-1")),
                (b"flip", _message(flipping_video(seconds=4, rate=5, flip_at=2), "flip"))]
    worker = start_worker(topics)
    send(kafka.admin, topics["source_topic"], messages, message_bytes=8 * 1024 * 1024)
    records = wait_for(TopicReader(kafka.admin, topics["sink_topic"]), 2, timeout=60, worker=worker)
    dead = wait_for(TopicReader(kafka.admin, topics["dead_letter_topic"]), 1, timeout=60, worker=worker)
    angles = {r.key: [f["angle"] for f in json.loads(r.value)["results"]["frames"]] for r in records}
    assert angles == {b"latin-1": [0, 0, 180, 180], b"flip": [0, 0, 180, 180]}
    assert [(r.key, r.headers[ERROR_HEADER]) for r in dead] == [(b"flv", "invalid_input")]
