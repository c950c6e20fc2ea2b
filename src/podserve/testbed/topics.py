"""Feed images to a topic and read a topic back, for trying an offline worker by hand and for the tests.

    python -m podserve.testbed.topics send TOPIC IMAGE...   # one message per image, keyed by its file name
    python -m podserve.testbed.topics read TOPIC            # every record so far: key, headers, value; then exit

`send` creates the topic when it is missing (the broker does not). Both connect as a platform client does
(podserve.kafka_access): PODSERVE_KAFKA_BOOTSTRAP (default 127.0.0.1:9092, where `make kafka` listens) and the
principal of PODSERVE_KAFKA_USERNAME / PODSERVE_KAFKA_PASSWORD (by default the topic's team's, which `make kafka`
writes to build/kafka/), so the brokers' ACLs apply to them as to the team's workers. A message is the JSON body `POST /api/<service>` takes:
`{"postid", "uid", "seqid", "image"}`.
"""

from __future__ import annotations

import base64
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from podserve import kafka_access
from podserve.offline_settings import BOOTSTRAP_ENV, LOCAL_KAFKA_BOOTSTRAP


class StandInMessage:
    """What the offline worker reads of a confluent_kafka Message, which only a broker can make: `value` at `offset`
    of partition 0 of `topic`, keyed m-<offset>."""

    def __init__(self, offset: int, value: bytes, topic: str = "lines"):
        self._offset, self._value, self._topic = offset, value, topic

    def key(self) -> bytes:
        return f"m-{self._offset}".encode()

    def value(self) -> bytes:
        return self._value

    def topic(self) -> str:
        return self._topic

    def partition(self) -> int:
        return 0

    def offset(self) -> int:
        return self._offset


@dataclass(frozen=True)
class Record:
    """One record read back from a topic."""

    key: bytes | None
    value: bytes | None
    headers: dict[str, str]
    partition: int
    offset: int


def image_message(image: bytes, postid, uid="u", seqid=1) -> bytes:
    """The message value for one image, as `/api/<service>` takes it in JSON."""
    return json.dumps({"postid": postid, "uid": uid, "seqid": seqid,
                       "image": base64.b64encode(image).decode()}).encode()


def send(connection: dict, topic: str, messages: list[tuple[bytes | None, bytes]], timeout: float = 60.0,
         message_bytes: int = 1_000_000) -> None:
    """Produce (key, value) pairs on `connection` (librdkafka's settings: the brokers and the principal) and wait until
    the broker acknowledged every one; raise if any failed."""
    producer = Producer({**connection, "acks": "all", "enable.idempotence": True,
                         "linger.ms": 10, "message.max.bytes": message_bytes})
    failures: list[str] = []
    for key, value in messages:
        while True:
            try:
                producer.produce(topic, value, key, on_delivery=lambda err, _m: err and failures.append(str(err)))
                break
            except BufferError:
                producer.poll(0.1)
    left = producer.flush(timeout)
    if failures or left:
        raise RuntimeError(f"{len(failures)} message(s) to {topic} failed ({failures[:3]}), {left} unsent")


class TopicReader:
    """Read a whole topic, every partition from its start, up to its end at each `read_new()` call (assigned, never
    joining a group: its group, under the topic's team prefix, is only named)."""

    def __init__(self, connection: dict, topic: str):
        self.topic = topic
        team = topic.split(kafka_access.SEPARATOR, 1)[0]
        config = {**connection, "group.id": f"{kafka_access.team_prefix(team)}podserve-reader-{os.getpid()}",
                  "enable.auto.commit": False, "enable.partition.eof": False}
        self.consumer = Consumer(config)
        partitions = self.consumer.list_topics(topic, timeout=10).topics[topic].partitions
        self.consumer.assign([TopicPartition(topic, p, 0) for p in partitions])
        # The partitions' ends are asked with a client of their own: the reading one's connection is held by its
        # fetch's long poll (fetch.wait.max.ms, 500 ms), and each of its own queries would wait behind that.
        self.end_offsets = Consumer(config)
        self.partitions = sorted(partitions)
        self.records: list[Record] = []

    def read_new(self, timeout: float = 10.0) -> list[Record]:
        """Consume up to the current end of every partition; return the records read this time."""
        ends = {p: self.end_offsets.get_watermark_offsets(TopicPartition(self.topic, p), timeout=5)[1]
                for p in self.partitions}
        done = {p: -1 for p in self.partitions}
        for record in self.records:
            done[record.partition] = max(done[record.partition], record.offset)
        new: list[Record] = []
        deadline = time.monotonic() + timeout
        while any(done[p] + 1 < ends[p] for p in self.partitions) and time.monotonic() < deadline:
            for message in self.consumer.consume(500, 0.05):  # waits the whole timeout for fewer than 500
                if message.error():
                    continue
                record = Record(message.key(), message.value(),
                                {k: (v or b"").decode(errors="replace") for k, v in (message.headers() or [])},
                                message.partition(), message.offset())
                new.append(record)
                done[record.partition] = max(done[record.partition], record.offset)
        self.records += new
        return new

    def close(self) -> None:
        self.consumer.close()
        self.end_offsets.close()


def main(argv: list[str]) -> int:
    team = argv[1].split(kafka_access.SEPARATOR, 1)[0] if len(argv) > 1 else ""
    connection = kafka_access.client_config(kafka_access.with_local_credentials(team, os.environ),
                                            bootstrap=os.environ.get(BOOTSTRAP_ENV) or LOCAL_KAFKA_BOOTSTRAP)
    if len(argv) >= 3 and argv[0] == "send":
        topic, images = argv[1], [Path(p) for p in argv[2:]]
        admin = AdminClient(connection)
        if topic not in admin.list_topics(timeout=10).topics:  # brokers here create no topic on first use
            admin.create_topics([NewTopic(topic, num_partitions=-1, replication_factor=-1)])[topic].result(30)
        send(connection, topic, [(p.name.encode(), image_message(p.read_bytes(), p.stem, seqid=i))
                                for i, p in enumerate(images, 1)])
        print(f"sent {len(images)} message(s) to {topic}")
        return 0
    if len(argv) == 2 and argv[0] == "read":
        reader = TopicReader(connection, argv[1])
        for record in reader.read_new():
            key = record.key.decode(errors="replace") if record.key is not None else None
            headers = f" {json.dumps(record.headers)}" if record.headers else ""
            print(f"{key}{headers} {(record.value or b'').decode(errors='replace')[:300]}")
        reader.close()
        return 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
