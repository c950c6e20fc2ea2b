"""Helpers for the offline tests: a worker subprocess, the messages fed to it, and what it wrote."""

from __future__ import annotations

import io
import json
import os
import sys
import urllib.error
import urllib.request
from pathlib import Path

from confluent_kafka import Consumer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic
from PIL import Image

from podserve.offline_settings import OfflineSettings
from podserve.settings import ServingSettings
from podserve.testbed.processes import Program, free_port
from podserve.testbed.topics import image_message

REPO = Path(__file__).resolve().parents[2]
EXAMPLE_MODEL = REPO / "model" / "ch_ppocr_mobile_v2.0_cls_mobile.onnx"
HERE = Path(__file__).resolve().parent
PARTITIONS = 3


def small_png(path: Path, size: tuple[int, int] = (123, 29)) -> bytes:
    """The example's text line shrunk to `size` (half size: a ~1 KB message), as PNG bytes."""
    buffer = io.BytesIO()
    Image.open(path).convert("RGB").resize(size, Image.BILINEAR).save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


def line_messages(count: int, prefix: str) -> tuple[list[tuple[bytes, bytes]], dict[bytes, int]]:
    """`count` messages alternating an upright and an upside-down line: [(key, value)], and {key: expected angle}."""
    upright = small_png(REPO / "examples" / "text-line.png")
    upside_down = small_png(REPO / "examples" / "text-line-upside-down.png")
    messages, angles = [], {}
    for i in range(count):
        key = f"{prefix}-{i}".encode()
        image, angle = (upright, 0) if i % 2 == 0 else (upside_down, 180)
        messages.append((key, image_message(image, postid=f"{prefix}-{i}", uid="u", seqid=i)))
        angles[key] = angle
    return messages, angles


#: The team whose principal the tests' workers run as (the brokers' ACLs on): every topic and group is under its prefix.
TEAM = "imo"


def create_topic(connection: dict, topic: str, partitions: int = PARTITIONS) -> None:
    admin = AdminClient(connection)
    admin.create_topics([NewTopic(topic, partitions, 1)])[topic].result(30)


def topic_exists(connection: dict, topic: str) -> bool:
    return topic in AdminClient(connection).list_topics(timeout=10).topics


class CommittedOffsets:
    """Ask the group's coordinator what a group committed, without joining the group (no subscribe)."""

    def __init__(self, connection: dict, group: str, topic: str):
        self.consumer = Consumer({**connection, "group.id": group, "enable.auto.commit": False})
        partitions = self.consumer.list_topics(topic, timeout=10).topics[topic].partitions
        self.partitions = [TopicPartition(topic, p) for p in sorted(partitions)]

    def now(self) -> dict[int, int]:
        """The committed offset per partition (-1001, Kafka's 'none', where nothing is committed)."""
        return {tp.partition: tp.offset for tp in self.consumer.committed(self.partitions, timeout=10)}

    def total(self) -> int:
        return sum(max(offset, 0) for offset in self.now().values())

    def close(self) -> None:
        self.consumer.close()


def committed(connection: dict, group: str, topic: str) -> dict[int, int]:
    """The group's committed offset per partition (-1001, Kafka's 'none', where it committed nothing)."""
    offsets = CommittedOffsets(connection, group, topic)
    try:
        return offsets.now()
    finally:
        offsets.close()


class Worker:
    """`python -m podserve.runtime.offline` as a subprocess, its settings from the environment as in a pod: `kafka` is
    the brokers and the principal's credentials (KafkaBroker.environment(user)), as the pod's ConfigMap and Secret
    give them."""

    def __init__(self, log_path: Path, kafka: dict[str, str], topics: dict[str, str], *, handler: str = "server:TextDirection",
                 model_path: Path = EXAMPLE_MODEL, **serving):
        self.port = free_port()
        settings = ServingSettings(service_name="text-direction", handler=handler, model_path=str(model_path),
                                   host="127.0.0.1", port=self.port, **{"max_batch_size": 16,
                                                                        "max_batch_delay_ms": 5.0, **serving})
        worker = OfflineSettings(**topics)
        env = {**os.environ, **settings.to_env(), **worker.to_env(), **kafka,
               "PYTHONPATH": os.pathsep.join([str(REPO / "src"), str(HERE)])}
        self.program = Program("offline-worker", [sys.executable, "-m", "podserve.runtime.offline"], log_path,
                               env=env, cwd=REPO)

    def wait_ready(self, timeout: float = 90.0) -> "Worker":
        self.program.wait_until(lambda: self.get("/api/ping")[0] == 200, timeout, "GET /api/ping answers 200")
        return self

    def get(self, path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=5) as response:
                return response.status, response.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()

    def metrics(self) -> dict[str, float]:
        """Every sample of /metrics, by its name with labels."""
        samples = {}
        for line in self.get("/metrics")[1].splitlines():
            if line and not line.startswith("#"):
                name, _, value = line.rpartition(" ")
                samples[name] = float(value)
        return samples

    def metric(self, prefix: str) -> float:
        """The sum of the samples whose name (with labels) starts with `prefix`."""
        return sum(v for k, v in self.metrics().items() if k.startswith(prefix))

    def final_counts(self) -> dict:
        """The counts the worker logged when it stopped cleanly."""
        for line in reversed(self.program.log_path.read_text().splitlines()):
            if line.startswith("{") and "stopped cleanly" in line:
                return json.loads(line)["counts"]
        raise AssertionError(f"the worker never logged a clean stop:\n{self.program.log_tail(30)}")

    def stop(self) -> int | None:
        return self.program.stop(timeout=60)
