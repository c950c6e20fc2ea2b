"""Fixtures for the offline worker's tests: one real Kafka broker (KRaft, one node) for the session.

The broker is Apache Kafka itself (podserve.testbed.kafka), on free loopback ports, with the
platform's access on: SASL/SCRAM, KRaft's StandardAuthorizer, every team's principals and ACLs
from conf/teams.yaml (podserve.tooling.kafka_acls). The only thing simulated is the cluster's
size (one node, replication factor 1). The worker runs as a subprocess with the real example
model, exactly as in a pod, as team imo's production principal; the tests feed and read topics
as the broker's admin (the platform, playing production's stream).
"""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from kafka_workers import REPO, TEAM, Worker
from podserve.testbed.kafka import KafkaBroker, install_dir, installed


@pytest.fixture(scope="session")
def kafka(tmp_path_factory) -> KafkaBroker:
    tools = REPO / ".tools"
    assert installed(tools), (f"Kafka is not installed in {install_dir(tools)}: run `make kafka-install` "
                              f"(make test does it first)")
    broker = KafkaBroker(tools, tmp_path_factory.mktemp("kafka")).start()
    broker.team_access()
    print(f"kafka broker started in {broker.start_seconds:.1f}s on {broker.bootstrap}, every team's ACLs set")
    yield broker
    broker.stop()


@pytest.fixture
def topics() -> dict[str, str]:
    """Fresh topic and group names for one test (source, sink, dead letters, group), under team imo's prefix."""
    run = uuid.uuid4().hex[:8]
    return {"source_topic": f"{TEAM}.lines-{run}", "sink_topic": f"{TEAM}.directions-{run}",
            "dead_letter_topic": f"{TEAM}.lines-dead-{run}", "consumer_group": f"{TEAM}.group-{run}"}


@pytest.fixture
def start_worker(tmp_path: Path, kafka: KafkaBroker):
    """Start a worker on the session's broker; every worker is stopped after the test."""
    workers: list[Worker] = []

    def start(topics: dict[str, str], wait: bool = True, user: str = TEAM, **settings) -> Worker:
        worker = Worker(tmp_path / f"worker-{len(workers)}.log", kafka.environment(user), topics, **settings)
        workers.append(worker)
        return worker.wait_ready() if wait else worker

    yield start
    for worker in workers:
        worker.stop()
