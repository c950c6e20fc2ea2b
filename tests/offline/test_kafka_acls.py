"""Kafka per team (issue 68, It must show 3): on the real broker, with the platform's ACLs from conf/teams.yaml, team
imo's credentials cannot read or write another team's topics nor join its groups, grey's cannot write production's
topics nor join production's groups, and the worker names each refusal and exits 2 (a restart changes nothing).

Real: Apache Kafka 4.1 (KRaft) with SASL/SCRAM-SHA-512 and the StandardAuthorizer, the principals and prefixed ACLs set
by the platform's own tool (podserve.tooling.kafka_acls), librdkafka as the worker's clients. Team imo's own pipeline
passing with the same ACLs on is every other test of this folder (their workers run as User:imo)."""

from __future__ import annotations

import time
import uuid

import pytest
from confluent_kafka import Consumer, KafkaException, Producer
from confluent_kafka.admin import AdminClient

from kafka_workers import TEAM, create_topic, line_messages
from podserve import kafka_access
from podserve.testbed.topics import TopicReader, send

OTHER = "like"


def _names() -> dict[str, str]:
    run = uuid.uuid4().hex[:8]
    return {"source_topic": f"{OTHER}.lines-{run}", "sink_topic": f"{OTHER}.directions-{run}",
            "dead_letter_topic": f"{OTHER}.lines-dead-{run}", "consumer_group": f"{OTHER}.group-{run}"}


def _produce(connection: dict, topic: str) -> str | None:
    """Produce one record; return the delivery error's name (None when acknowledged)."""
    errors: list = []
    producer = Producer({**connection, "acks": "all", "enable.idempotence": True, "message.timeout.ms": 10_000})
    producer.produce(topic, b"x", on_delivery=lambda error, _m: errors.append(error))
    producer.flush(20)
    return errors[0].name() if errors and errors[0] else None


def _consume_errors(connection: dict, group: str, topic: str, seconds: float = 8.0) -> set[str]:
    """Join `group` on `topic` and consume for a while; return the names of the errors the brokers answered."""
    consumer = Consumer({**connection, "group.id": group, "auto.offset.reset": "earliest"})
    consumer.subscribe([topic])
    seen, deadline = set(), time.monotonic() + seconds
    try:
        while time.monotonic() < deadline and not seen:
            seen |= {m.error().name() for m in consumer.consume(10, 0.5) if m.error()}
    finally:
        consumer.close()
    return seen


def test_a_team_s_credentials_cannot_read_write_or_join_another_team_s(kafka):
    own, theirs = f"{TEAM}.acl-{uuid.uuid4().hex[:8]}", f"{OTHER}.acl-{uuid.uuid4().hex[:8]}"
    for topic in (own, theirs):
        create_topic(kafka.admin, topic, partitions=1)
    send(kafka.admin, theirs, [(b"k", b"their record")])
    imo = kafka.client_config(TEAM)
    visible = AdminClient(imo).list_topics(timeout=10).topics
    assert own in visible and theirs not in visible  # not even its name is described
    assert _produce(imo, theirs) == "TOPIC_AUTHORIZATION_FAILED"
    assert _consume_errors(imo, f"{TEAM}.reader", theirs) == {"TOPIC_AUTHORIZATION_FAILED"}
    assert _consume_errors(imo, f"{OTHER}.group", own) == {"GROUP_AUTHORIZATION_FAILED"}  # their group, its own topic
    assert _produce(imo, own) is None  # the allowed variant: its own prefix
    reader = TopicReader(kafka.admin, theirs)
    try:  # the refused write left nothing in their topic
        assert [r.value for r in reader.read_new()] == [b"their record"]
    finally:
        reader.close()


def test_grey_cannot_read_write_or_join_production_s_topics_and_reads_its_own_stream(kafka):
    """Grey runs any branch's code: production's stream is production's data, out of its reach (issue 68, item 4)."""
    run = uuid.uuid4().hex[:8]
    stream, sink = f"{TEAM}.stream-{run}", f"{TEAM}.results-{run}"
    grey_stream, grey_sink = kafka_access.grey_name(stream, TEAM), kafka_access.grey_name(sink, TEAM)
    for topic in (stream, sink):
        create_topic(kafka.admin, topic, partitions=1)
    send(kafka.admin, stream, [(b"k", b"production's record")])
    grey = kafka.client_config(kafka_access.username(TEAM, grey=True))
    group = kafka_access.grey_name(f"{TEAM}.text-direction", TEAM)
    assert _consume_errors(grey, group, stream) == {"TOPIC_AUTHORIZATION_FAILED"}  # not even with its own group
    assert _produce(grey, sink) == "TOPIC_AUTHORIZATION_FAILED"  # a branch's code never writes production's results
    assert _consume_errors(grey, f"{TEAM}.text-direction", grey_stream) == {"GROUP_AUTHORIZATION_FAILED"}
    with pytest.raises(KafkaException, match="TOPIC_AUTHORIZATION_FAILED"):
        create_topic(grey, f"{TEAM}.made-by-grey-{run}", partitions=1)  # nor creates them
    for topic in (grey_stream, grey_sink):
        create_topic(grey, topic, partitions=1)
    assert _produce(grey, grey_sink) is None  # grey's own topics...
    send(grey, grey_stream, [(b"k", b"the team's record for grey")])  # ... its stream, which the team feeds ...
    consumer = Consumer({**grey, "group.id": group, "auto.offset.reset": "earliest"})
    consumer.subscribe([grey_stream])  # ... read with a group of its own
    try:
        read, deadline = [], time.monotonic() + 30
        while not read and time.monotonic() < deadline:
            read = [m for m in consumer.consume(10, 0.5) if m.error() is None]
        assert [m.value() for m in read] == [b"the team's record for grey"]
    finally:
        consumer.close()


@pytest.mark.parametrize("kind", ["another team's source", "another team's sink", "another team's group"])
def test_the_worker_names_the_refusal_and_exits_2(kafka, topics, start_worker, kind):
    """Team imo's worker pointed at team like's names: it says which topic or group, which principal, what error, and
    what the platform grants instead; it exits 2 at once (no retry loop), nothing written anywhere."""
    theirs = _names()
    if kind == "another team's source":
        topics = {**topics, "source_topic": theirs["source_topic"]}
        create_topic(kafka.admin, theirs["source_topic"])
        refused = f"topic {theirs['source_topic']!r}"
    elif kind == "another team's sink":
        topics = {**topics, "sink_topic": theirs["sink_topic"]}
        refused = f"topic {theirs['sink_topic']!r}"
    else:
        topics = {**topics, "consumer_group": theirs["consumer_group"]}
        create_topic(kafka.admin, topics["source_topic"])
        send(kafka.admin, topics["source_topic"], line_messages(2, "acl")[0])
        refused = f"consumer group {theirs['consumer_group']!r}"
    worker = start_worker(topics, wait=False)
    assert worker.program.process.wait(90) == 2, worker.program.log_tail(30)
    said = worker.program.log_path.read_text()
    error = "GROUP_AUTHORIZATION_FAILED" if "group" in kind else "TOPIC_AUTHORIZATION_FAILED"
    assert (f"Kafka refused {refused} to principal 'User:{TEAM}': {error}; the platform grants team '{TEAM}' only "
            f"topics '{TEAM}.*' and consumer groups '{TEAM}.*'") in said, said[-3000:]
    assert "retrying" not in said


def test_wrong_credentials_are_named_not_retried_as_an_unreachable_broker(kafka, topics, tmp_path):
    from kafka_workers import Worker

    env = {**kafka.environment(TEAM), kafka_access.PASSWORD_ENV: "not-the-password"}
    worker = Worker(tmp_path / "worker.log", env, topics)
    try:
        assert worker.program.process.wait(90) == 2, worker.program.log_tail(30)
        said = worker.program.log_path.read_text()
        assert f"Kafka refused principal 'User:{TEAM}'" in said and "wrong user name or password" in said, said[-2000:]
        assert kafka_access.CREDENTIALS_SECRET in said and "not-the-password" not in said
    finally:
        worker.stop()


def test_without_credentials_the_brokers_serve_nothing(kafka):
    plain = {"bootstrap.servers": kafka.bootstrap, "socket.timeout.ms": 3000}
    with pytest.raises(KafkaException):
        AdminClient(plain).list_topics(timeout=5)  # the listener speaks SASL only


def test_grey_s_worker_makes_its_own_stream_and_is_refused_production_s(kafka, topics, start_worker):
    """Grey's names are all under its prefix (value.py's worker_settings): its worker creates what is missing, its
    source included, and is ready; pointed at production's stream (a worker config of a branch's making), the brokers
    refuse it, and the worker names the refusal and exits 2 at once."""
    grey_topics = {key: kafka_access.grey_name(value, TEAM) for key, value in topics.items()}
    worker = start_worker(grey_topics, wait=False, user=kafka_access.username(TEAM, grey=True))
    worker.wait_ready(120)
    said = worker.program.log_path.read_text()
    assert "TOPIC_AUTHORIZATION_FAILED" not in said and "created missing topic(s)" in said, said[-2000:]
    assert grey_topics["source_topic"] in said.split("created missing topic(s)")[1].splitlines()[0]
    worker.stop()
    create_topic(kafka.admin, topics["source_topic"])  # production's stream
    reader = start_worker({**grey_topics, "source_topic": topics["source_topic"]}, wait=False,
                          user=kafka_access.username(TEAM, grey=True))
    assert reader.program.process.wait(90) == 2, reader.program.log_tail(30)
    said = reader.program.log_path.read_text()
    assert (f"Kafka refused topic {topics['source_topic']!r} to principal 'User:{TEAM}-grey': "
            f"TOPIC_AUTHORIZATION_FAILED; the platform grants grey of team {TEAM!r} only its own stream") in said, \
        said[-3000:]
