"""Where the worker writes: a Kafka topic (results or dead letters) or a JSON-lines file, and the topics it needs.

A sink's `send(records)` returns the records it could NOT get acknowledged (empty when
all were): the worker backs off and sends those again, and commits nothing until the list
is empty. A Kafka record is acknowledged when the broker confirmed it with acks=all (the
producer is idempotent, so its own retries add no duplicates); a file record when its line
was written and fsync'd.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from confluent_kafka import KafkaException, Producer
from confluent_kafka.admin import AdminClient, NewTopic

from podserve.kafka_access import KafkaRefused, is_refusal, refusal, user_of
from podserve.runtime.offline.records import Outgoing

log = logging.getLogger(__name__)

#: How long the producer tries to deliver one record before reporting it failed (the worker then retries).
DELIVERY_TIMEOUT_MS = 10_000


#: Kafka's own default largest message (broker message.max.bytes, the producer's too): about 1 MB.
KAFKA_DEFAULT_MESSAGE_BYTES = 1_000_000
#: Room beyond the largest input message for what a dead letter adds (its error in the headers).
DEAD_LETTER_MARGIN_BYTES = 64 * 1024


def max_message_bytes(settings) -> int:
    """The largest record the worker reads or writes: a video's JSON (max_video_bytes in base64), or its dead
    letter. Topics the worker creates get it as max.message.bytes, and its producer as message.max.bytes; the
    brokers' message.max.bytes must allow it (docs/offline.md)."""
    return max(KAFKA_DEFAULT_MESSAGE_BYTES, settings.video_json_bytes() + DEAD_LETTER_MARGIN_BYTES)


def producer_config(connection: dict, message_bytes: int = KAFKA_DEFAULT_MESSAGE_BYTES) -> dict:
    """A producer on `connection` (OfflineSettings.client_config(): the brokers and the principal)."""
    return {**connection, "acks": "all", "enable.idempotence": True, "linger.ms": 5,
            "message.timeout.ms": DELIVERY_TIMEOUT_MS, "client.id": "podserve-offline",
            "message.max.bytes": message_bytes}


class KafkaSink:
    """Produce records to one topic and wait for every acknowledgement."""

    def __init__(self, connection: dict, topic: str, producer: Producer | None = None):
        self.connection = connection
        self.topic = topic
        self.producer = producer or Producer(producer_config(connection))
        self.last_error: str | None = None

    def send(self, records: list[Outgoing]) -> list[Outgoing]:
        failed: list[Outgoing] = []
        fatal: list[bool] = []
        refused: list[str] = []

        def on_delivery(record: Outgoing):
            def report(error, _message) -> None:
                if error is not None:
                    failed.append(record)
                    self.last_error = str(error)
                    fatal.append(error.fatal())
                    if is_refusal(error.name()):
                        refused.append(error.name())
            return report

        for record in records:
            while True:
                try:
                    self.producer.produce(self.topic, record.value, record.key, headers=list(record.headers) or None,
                                          on_delivery=on_delivery(record))
                    break
                except BufferError:  # the producer's queue is full: let it deliver some first
                    self.producer.poll(0.05)
                except KafkaException as exc:
                    failed.append(record)
                    self.last_error = str(exc)
                    break
        while self.producer.flush(1.0) > 0:  # every record gets its report within DELIVERY_TIMEOUT_MS
            pass
        if refused:  # no retry changes what this principal may write: stop, committing nothing
            raise KafkaRefused(refusal("topic", self.topic, user_of(self.connection), refused[0]))
        if any(fatal):  # an idempotent producer that hit a fatal error must be replaced
            log.warning("the producer for %s hit a fatal error (%s); starting a new one", self.topic, self.last_error)
            self.producer = Producer(producer_config(self.connection))
        return failed

    def close(self) -> None:
        self.producer.flush(5.0)


class FileSink:
    """Append each record as one JSON line `{"key": ..., <result>}`; acknowledged once written and fsync'd."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.topic = str(self.path)
        self.last_error: str | None = None

    def send(self, records: list[Outgoing]) -> list[Outgoing]:
        lines = []
        for record in records:
            line = {"key": record.key.decode(errors="replace") if record.key is not None else None,
                    **json.loads(record.value)}
            lines.append(json.dumps(line) + "\n")
        try:
            with open(self.path, "a", encoding="utf-8") as file:
                file.write("".join(lines))
                file.flush()
                os.fsync(file.fileno())
        except OSError as exc:
            self.last_error = f"{type(exc).__name__}: {exc}"
            return list(records)
        return []

    def close(self) -> None:
        pass


def missing_topics(admin: AdminClient, topics: list[str], timeout: float = 10.0) -> list[str]:
    existing = admin.list_topics(timeout=timeout).topics
    return [topic for topic in dict.fromkeys(topics) if topic not in existing]


def ensure_topics(connection: dict, topics: list[str], timeout: float = 10.0,
                  message_bytes: int | None = None) -> list[str]:
    """Create those of `topics` that do not exist (broker's default partitions and replication); return them.

    The worker, not the broker, creates missing topics: production brokers (and the testbed's)
    run with auto.create.topics.enable=false. A topic created meanwhile by someone else is fine.
    A topic the principal may not see or create (another team's), or a principal the brokers do not
    take, raises KafkaRefused naming it: the platform's ACLs (podserve.kafka_access), not the network.
    """
    user = user_of(connection)
    failed_auth: list[str] = []
    admin = AdminClient({**connection, "error_cb": lambda error: failed_auth.append(error.name())
                         if error.name() in ("_AUTHENTICATION", "SASL_AUTHENTICATION_FAILED") else None})
    try:
        missing = missing_topics(admin, topics, timeout)
    except KafkaException:
        admin.poll(0)  # serves the error callback: an authentication failure only shows there
        if failed_auth:
            raise KafkaRefused(refusal("topic", topics[0], user, failed_auth[0])) from None
        raise
    if not missing:
        return []
    config = {"max.message.bytes": str(message_bytes)} if message_bytes else {}
    futures = admin.create_topics([NewTopic(topic, num_partitions=-1, replication_factor=-1, config=config)
                                   for topic in missing],
                                  operation_timeout=timeout, request_timeout=timeout)
    for topic, future in futures.items():
        try:
            future.result()
            log.info("created missing topic %s", topic)
        except KafkaException as exc:
            if is_refusal(exc.args[0].name()):
                raise KafkaRefused(refusal("topic", topic, user, exc.args[0].name())) from None
            if exc.args[0].name() != "TOPIC_ALREADY_EXISTS":
                raise
    return missing
