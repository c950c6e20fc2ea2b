"""Offline workers follow their backlog on the real node: KEDA scales production's workers 1 -> 3 on the consumer
group's lag and back to 1 after the stabilisation window; every message ends in the sink or the dead-letter topic,
none lost, duplicates counted (issue 67, It must show 2).

Real: the control plane with its HPA controller; the real node (kubelet, containerd, runc) running our image as CI's
jobs built it (tests/pipeline/conftest.py grey_service) as offline workers (`python -m podserve.runtime.offline`); the
deploy tool applying hk as render makes it for an offline service (the Deployment, KEDA's ScaledObject with its kafka
trigger and the platform's HPA behaviour); a Kafka broker with the platform's access on (SASL/SCRAM, the
StandardAuthorizer, every team's ACLs: real_node_kafka) holding the source topic's partitions, the group's offsets,
the sink and the dead-letter topic; KEDA's operator (the session's, `make keda`) reading the group's lag from that
broker as the team's production principal through the namespace's TriggerAuthentication, its metrics API server
answering the HPA through the apiserver's aggregation layer; the workers' SIGTERM stop as the HPA removes them
(finish the fetch in hand, write, commit, leave the group). Simulated: what a message's decode waits on. The handler
is the example's with a decode that waits STORAGE_WAIT_SECONDS off the CPU (real_node_service's WaitsOnStorage), and a
worker decodes one message at a time, so a worker's rate is fixed (WORKER_RATE) whatever else the 2-core machine runs.

Load and bounds, stated: TRICKLE_RATE messages a second throughout (under one worker's rate: lag stays far under
LAG_TARGET), and a backlog of BACKLOG messages written at once (POISON of them poison) on a topic of PARTITIONS
partitions: KEDA reports the lag capped at PARTITIONS x LAG_TARGET (a worker past the partitions would idle) and the
HPA asks for PARTITIONS workers. The test conf shortens the scale-down stabilisation window to SCALE_DOWN_WINDOW (the
platform's is 300 s) and the probes and preStop (FAST's); every other part of the HPA's behaviour is the platform's.
"""

from __future__ import annotations

import json
import math
import threading
import time
from contextlib import ExitStack
from dataclasses import dataclass

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from real_node_kafka import region_brokers, start_node_broker
from real_node_service import COMMIT, NAME, POD_CPU, REPO, STORAGE_WAIT_SECONDS, TEAM, fast_conf
from scaling_watch import (SAMPLE_SECONDS, Timeline, distinct, read_or_none, remove_scaled_hk, scaled_object,
                           shorten_scale_down, since, wait_for_no_hk_pods)

from podserve import kafka_access
from podserve.runtime.offline.records import ERROR_HEADER
from podserve.testbed.cluster.controlplane import HPA_SYNC_SECONDS, HPA_TOLERANCE
from podserve.testbed.processes import poll_until
from podserve.testbed.prometheus import Prometheus, ScrapeTarget
from podserve.testbed.topics import TopicReader, image_message, send
from podserve.tooling import scaling
from podserve.tooling.conf import load_observability
from podserve.tooling.observability.queries import keda_trigger_values

WAITS_ON_STORAGE = "real_node_recipes:WaitsOnStorage"
SOURCE, SINK, DEAD = f"{TEAM}.backlog", f"{TEAM}.backlog-directions", f"{TEAM}.backlog-dead"
PARTITIONS = MAX_WORKERS = 3
MIN_WORKERS = 1
#: The lag per worker the HPA keeps (value.py lag_target).
LAG_TARGET = 40
#: A fetch: queue_size messages (one instance), decoded one after another, then written and committed together.
QUEUE_SIZE = 8
VALUES = {"mode": "offline", "handler": WAITS_ON_STORAGE, "cpu": POD_CPU, "hk_replicas": MIN_WORKERS,
          "max_replicas": MAX_WORKERS, "lag_target": LAG_TARGET, "source_topic": SOURCE, "sink_topic": SINK,
          "dead_letter_topic": DEAD, "queue_size": QUEUE_SIZE, "max_batch_size": QUEUE_SIZE}
#: The most messages a second one worker handles: each decode waits STORAGE_WAIT_SECONDS, one at a time.
WORKER_RATE = 1 / STORAGE_WAIT_SECONDS
TRICKLE_RATE = 2
BACKLOG, POISON = 720, 9
#: The scale-down stabilisation window of the test conf (the platform's is 300 s).
SCALE_DOWN_WINDOW = 30
#: A sample's age (SAMPLE_SECONDS), the HPA's status write and KEDA's query of the broker at the HPA's ask: how far
#: what the HPA read can be from what the test read of the group's offsets.
READ_SLACK_SECONDS = 5
#: From the HPA's new desired count to the new workers consuming: the ReplicaSet, the scheduler, the sandbox and the
#: container (the image already on the node), the worker's start and model load, its readiness probe (1 s).
POD_START_SECONDS = 30
#: From a new member's join to every member assigned: the others rejoin at their next fetch (a fetch is QUEUE_SIZE
#: decodes, 1.2 s), the broker delays no rebalance (group.initial.rebalance.delay.ms=0).
REBALANCE_SECONDS = 10
#: From the HPA's scale-down to the removed workers gone: preStop (1 s), the fetch in hand finished, written and
#: committed, the group left, the process's exit.
POD_STOP_SECONDS = 20
#: The stated bound on scale-up: the backlog is there at once, so the HPA's next sync asks for 3, then the workers start
#: and the group rebalances onto them.
SCALE_UP_BOUND = HPA_SYNC_SECONDS + READ_SLACK_SECONDS + POD_START_SECONDS + REBALANCE_SECONDS


@dataclass(frozen=True)
class Sample:
    """One look at the workers, the HPA and the group, every SAMPLE_SECONDS."""

    at: float  # time.monotonic()
    lag: int  # the group's lag over the source's partitions, from the broker's offsets (the admin's reading)
    metric: float | None  # what the HPA last read from KEDA, summed over the workers (average x current)
    desired: int  # the HPA's desiredReplicas
    current: int  # the HPA's currentReplicas
    ready: int  # the Deployment's ready replicas
    pods: int  # the service's pods, stopping ones too
    members: tuple[int, ...]  # the group's members: how many partitions each is assigned


def hpa_asks(lag: float, current: int) -> int:
    """What the HPA controller asks for an AverageValue external metric (replica_calculator.go), KEDA reporting the
    lag capped at PARTITIONS x LAG_TARGET: `current` within HPA_TOLERANCE of the target, else ceil(lag / target),
    within MIN_WORKERS and MAX_WORKERS."""
    lag = min(lag, PARTITIONS * LAG_TARGET)
    if abs(lag / (LAG_TARGET * current) - 1) <= HPA_TOLERANCE:
        return current
    return min(MAX_WORKERS, max(MIN_WORKERS, math.ceil(lag / LAG_TARGET)))


class OfflineScalingBench:
    """hk's workers of the WaitsOnStorage build on the real node, KEDA's HPA and the consumer group, sampled."""

    def __init__(self, service, namespace: str, broker, group: str, prometheus: Prometheus):
        from kubernetes import client

        api = service.plane.api_client()
        self.namespace, self.broker, self.group, self.prometheus = namespace, broker, group, prometheus
        self.core, self.apps = client.CoreV1Api(api), client.AppsV1Api(api)
        self.autoscaling = client.AutoscalingV2Api(api)
        self.hpa_name = scaling.HPA_PREFIX + NAME
        self.admin = AdminClient(broker.admin)
        # the group's committed offsets, read as the broker's admin: a consumer named by the group that never
        # subscribes asks the coordinator (OffsetFetch) without joining
        self.offsets = Consumer({**broker.admin, "group.id": group, "enable.auto.commit": False})
        self.partitions = [TopicPartition(SOURCE, p) for p in range(PARTITIONS)]
        self._lock = threading.Lock()

    def hpa(self):
        return self.autoscaling.read_namespaced_horizontal_pod_autoscaler(self.hpa_name, self.namespace)

    def lag(self) -> int:
        with self._lock:
            committed = self.offsets.committed(self.partitions, timeout=5)
            ends = [self.offsets.get_watermark_offsets(tp, timeout=5)[1] for tp in self.partitions]
        return sum(end - max(0, tp.offset) for tp, end in zip(committed, ends))

    def members(self) -> tuple[int, ...]:
        (description,) = self.admin.describe_consumer_groups([self.group], request_timeout=5).values()
        return tuple(sorted(len(m.assignment.topic_partitions) for m in description.result().members))

    def sample(self) -> Sample:
        from kubernetes.utils import parse_quantity

        hpa = self.hpa()
        current = hpa.status.current_replicas or 0
        read = hpa.status.current_metrics or []
        metric = (float(parse_quantity(read[0].external.current.average_value)) * current
                  if read and read[0].external and read[0].external.current.average_value is not None else None)
        deployment = self.apps.read_namespaced_deployment(NAME, self.namespace)
        pods = self.core.list_namespaced_pod(self.namespace, label_selector=f"service={NAME}").items
        return Sample(time.monotonic(), self.lag(), metric, hpa.status.desired_replicas or 0, current,
                      deployment.status.ready_replicas or 0, len(pods), self.members())

    def close(self) -> None:
        self.offsets.close()
        del self.admin  # a client left after the broker stops retries it in the log


class Trickle:
    """`rate` messages a second to SOURCE as the broker's admin (production's stream), keyed trickle-<n>, until the
    `with` ends; `acknowledged` holds the keys the broker took."""

    def __init__(self, broker, rate: int, image: bytes):
        self.producer = Producer({**broker.admin, "acks": "all", "enable.idempotence": True, "linger.ms": 5})
        self.rate, self.image = rate, image
        self.acknowledged: list[bytes] = []
        self.failed: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._send, daemon=True)

    def __enter__(self) -> "Trickle":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=30)
        left = self.producer.flush(30)
        self.producer.close()
        assert left == 0, f"{left} trickled message(s) unsent"

    def _delivered(self, error, message) -> None:
        if error is None:
            self.acknowledged.append(message.key())
        else:
            self.failed.append(str(error))

    def _send(self) -> None:
        started = time.monotonic()
        for number in range(100_000):
            if self._stop.wait(max(0.0, started + number / self.rate - time.monotonic())):
                return
            key = f"trickle-{number}".encode()
            self.producer.produce(SOURCE, image_message(self.image, postid=key.decode(), seqid=number), key,
                                  on_delivery=self._delivered)
            self.producer.poll(0)


def backlog(image: bytes) -> list[tuple[bytes, bytes]]:
    """BACKLOG messages keyed backlog-<n>, POISON of them (spread among the rest) not JSON at all."""
    every = BACKLOG // POISON
    return [(f"backlog-{n}".encode(), b"not json: poison" if n % every == every - 1 else
             image_message(image, postid=f"backlog-{n}", seqid=n)) for n in range(BACKLOG)]


@pytest.fixture(scope="module")
def offline_bench(grey_service, keda, tmp_path_factory):
    """hk's workers of the WaitsOnStorage build (1, KEDA scaling them up to 3) consuming SOURCE's partitions from a
    broker on the node, as the team's production principal."""
    began = time.monotonic()
    work = tmp_path_factory.mktemp("real-node-offline-scaling")
    namespace = grey_service.conf.stages["hk"].namespace_for(TEAM)
    with ExitStack() as stack:
        broker = start_node_broker(REPO / ".tools", work / "kafka")
        stack.callback(broker.stop)
        topics = AdminClient(broker.admin)
        created = topics.create_topics([NewTopic(SOURCE, num_partitions=PARTITIONS, replication_factor=-1)]
                                       + [NewTopic(t, num_partitions=1, replication_factor=-1) for t in (SINK, DEAD)])
        for future in created.values():
            future.result(30)
        del topics  # a client left after the broker stops retries it in the log
        stack.enter_context(region_brokers(grey_service.plane, {namespace: kafka_access.username(TEAM)}, broker))
        # the region's Prometheus scraping KEDA's operator as the platform's does (conf/observability.yaml's job)
        job = load_observability().keda_selector.split('"')[1]
        prometheus = Prometheus(work / "prometheus", [ScrapeTarget(f"127.0.0.1:{keda.metrics_port}", {"job": job})])
        stack.callback(prometheus.start().stop)
        conf_dir = shorten_scale_down(fast_conf(grey_service.checkout / "conf", work / "conf"), SCALE_DOWN_WINDOW)
        manifests = grey_service.render(NAME, COMMIT, stage="hk", conf=conf_dir, variant="-offline-scaling", **VALUES)
        (trigger,) = scaled_object(manifests)["spec"]["triggers"]
        assert (trigger["type"], trigger["metadata"]["lagThreshold"]) == ("kafka", str(LAG_TARGET))
        stack.callback(remove_scaled_hk, grey_service, namespace)
        wait_for_no_hk_pods(grey_service, namespace)
        bench = OfflineScalingBench(grey_service, namespace, broker, trigger["metadata"]["consumerGroup"], prometheus)
        stack.callback(bench.close)
        deployed = grey_service.deploy("apply", manifests=manifests, stage="hk", conf=conf_dir, timeout=600)
        assert deployed.returncode == 0, deployed.output
        hpa = poll_until(lambda: read_or_none(bench.hpa), f"KEDA's HPA {bench.hpa_name}", 60)
        assert (hpa.spec.min_replicas, hpa.spec.max_replicas) == (MIN_WORKERS, MAX_WORKERS)
        assert (hpa.spec.scale_target_ref.kind, hpa.spec.scale_target_ref.name) == ("Deployment", NAME)
        assert hpa.spec.behavior.scale_down.stabilization_window_seconds == SCALE_DOWN_WINDOW
        poll_until(lambda: read_or_none(bench.hpa).status.current_metrics, "the HPA reading the lag from KEDA", 90)
        poll_until(lambda: bench.members() == (PARTITIONS,), "the one worker holding every partition", 60)
        print(f"\nhk's offline workers deployed, KEDA's HPA reading the group's lag, in "
              f"{time.monotonic() - began:.1f} s")
        yield bench


def test_a_backlog_scales_the_workers_1_to_3_on_lag_and_back_to_1_and_every_message_is_answered(offline_bench,
                                                                                                tmp_path):
    bench = offline_bench
    image = (REPO / "examples" / "text-line.png").read_bytes()
    with Timeline(bench.sample) as timeline, Trickle(bench.broker, TRICKLE_RATE, image) as trickle:
        poll_until(lambda: len(trickle.acknowledged) >= TRICKLE_RATE, "a second of the trickle", 30)
        start = time.monotonic()
        written = backlog(image)
        send(bench.broker.admin, SOURCE, written)
        sent = time.monotonic()
        poll_until(lambda: timeline.last.members == (1,) * MAX_WORKERS and timeline.last.ready == MAX_WORKERS,
                   f"{MAX_WORKERS} workers each holding a partition", 3 * SCALE_UP_BOUND, every=SAMPLE_SECONDS)
        drain_bound = BACKLOG / WORKER_RATE  # one worker's time for it all: three take a third
        poll_until(lambda: timeline.last.lag < LAG_TARGET, "the backlog drained", drain_bound, every=SAMPLE_SECONDS)
        drained = time.monotonic()
        poll_until(lambda: (timeline.last.pods, timeline.last.members, timeline.last.desired) == (1, (PARTITIONS,), 1),
                   "back to one worker holding every partition", 3 * (SCALE_DOWN_WINDOW + HPA_SYNC_SECONDS
                                                                      + POD_STOP_SECONDS), every=SAMPLE_SECONDS)
        count = len(trickle.acknowledged)
        poll_until(lambda: len(trickle.acknowledged) >= count + 2 * TRICKLE_RATE, "the trickle on the one worker", 30)
    seconds = time.monotonic() - start
    (tmp_path / "timeline.txt").write_text("".join(f"{s.at - start:8.1f} {s}\n" for s in timeline.samples))
    acknowledged = {key for key, _ in written} | set(trickle.acknowledged)
    poll_until(lambda: bench.lag() == 0, "every message committed", 120)
    results, dead = read_all(bench.broker, SINK), read_all(bench.broker, DEAD)

    desired_three = timeline.first(lambda s: s.desired == MAX_WORKERS, start)
    three_consuming = timeline.first(lambda s: s.members == (1,) * MAX_WORKERS and s.ready == MAX_WORKERS, start)
    asks_one = timeline.first(lambda s: s.metric is not None and hpa_asks(s.metric, s.current) == MIN_WORKERS, drained)
    desired_one = timeline.first(lambda s: s.desired == MIN_WORKERS, drained)
    # the HPA's reads after the drain that asked for fewer workers than it desired: the window holding a higher count
    held = [s for s in timeline.samples if drained <= s.at < desired_one.at and s.metric is not None
            and hpa_asks(s.metric, s.current) < s.desired]
    one_left = timeline.first(lambda s: s.pods == 1 and s.members == (PARTITIONS,),
                              desired_one.at if desired_one else drained)
    desired = distinct([s.desired for s in timeline.samples if s.desired])
    highest = max(s.metric for s in timeline.samples if s.metric is not None)
    poison = {key for key, value in written if not value.startswith(b"{")}
    # what the dashboard's scaling panel reads: KEDA's own series of the trigger's value, through the platform's job
    trigger = keda_trigger_values(f'{load_observability().keda_selector}, namespace="{bench.namespace}", '
                                  f'scaledObject="{NAME}"')
    (reported,) = bench.prometheus.query(f"max_over_time(({trigger})[{seconds + 10:.0f}s:1s])")
    reported = float(reported["value"][1])
    answered = [r.key for r in results]
    duplicates = len(answered) - len(set(answered))
    print(f"\nscale-up: {BACKLOG} messages written in {sent - start:.1f} s; the HPA desired {MAX_WORKERS} "
          f"{since(desired_three, sent):.1f} s after, {MAX_WORKERS} workers each holding a partition "
          f"{since(three_consuming, desired_three):.1f} s after that: {since(three_consuming, sent):.1f} s "
          f"(bound {SCALE_UP_BOUND} s); highest lag the HPA read {highest:.0f}, KEDA's series {reported:.0f} (its "
          f"cap {PARTITIONS * LAG_TARGET}); backlog drained {drained - sent:.1f} s after it was written")
    print(f"scale-down: the lag asked for 1 {since(asks_one, drained):.1f} s after the drain, the HPA desired 1 "
          f"{since(desired_one, asks_one):.1f} s later (window {SCALE_DOWN_WINDOW} s), one worker left "
          f"{since(one_left, desired_one):.1f} s after; desired {desired}")
    print(f"messages: {len(acknowledged)} acknowledged ({len(trickle.acknowledged)} trickled over {seconds:.0f} s), "
          f"{len(results)} results ({len(set(answered))} distinct, {duplicates} duplicates), {len(dead)} dead letters "
          f"({len({r.key for r in dead})} distinct); {len(timeline.samples)} samples ({tmp_path / 'timeline.txt'}), "
          f"{len(timeline.errors)} failed {timeline.errors[:3]}")

    # up: the HPA's next sync after the backlog asks for every partition's worker; the group rebalances onto them
    assert timeline.samples[0].desired == MIN_WORKERS and timeline.samples[0].members == (PARTITIONS,)
    assert since(desired_three, sent) <= HPA_SYNC_SECONDS + READ_SLACK_SECONDS, timeline.samples
    assert since(three_consuming, sent) <= SCALE_UP_BOUND, timeline.samples
    # KEDA read the lag as the team's principal and capped it at the partitions' worth: no worker left idle
    assert 2 * LAG_TARGET < highest <= PARTITIONS * LAG_TARGET, highest
    assert reported == highest, (reported, highest)
    # up to 3 (through 2 where a sync fell on a lower lag), then down to 1, no flapping, never past the partitions
    assert desired[0] == desired[-1] == MIN_WORKERS and max(desired) == MAX_WORKERS, desired
    top = desired.index(MAX_WORKERS)
    assert desired[:top + 1] == sorted(desired[:top + 1]) and desired[top:] == sorted(desired[top:], reverse=True)
    assert max(s.pods for s in timeline.samples) <= MAX_WORKERS, timeline.samples
    # down: held by the window once the lag asks for 1 (the HPA keeps the highest recommendation its syncs made within
    # the window: the last that asked for more came a sync before the first that asked for 1), holding a higher count
    # than the lag asked meanwhile; then the removed workers left the group
    waited = since(desired_one, asks_one)
    assert SCALE_DOWN_WINDOW - HPA_SYNC_SECONDS - READ_SLACK_SECONDS <= waited, timeline.samples
    assert waited <= SCALE_DOWN_WINDOW + HPA_SYNC_SECONDS + READ_SLACK_SECONDS, timeline.samples
    assert held, timeline.samples
    assert since(one_left, desired_one) <= POD_STOP_SECONDS, timeline.samples
    # every message the broker took: a result, or (the poison) a dead letter naming its error; none lost
    assert trickle.failed == []
    assert set(answered) == acknowledged - poison, (sorted(acknowledged - poison - set(answered))[:10],
                                                    sorted(set(answered) - acknowledged)[:10])
    assert {r.key for r in dead} == poison and all(r.headers.get(ERROR_HEADER) for r in dead), dead[:3]
    assert all(json.loads(r.value)["postid"] == r.key.decode() for r in results), results[:3]


def read_all(broker, topic: str) -> list:
    """Every record of `topic` so far, as the broker's admin."""
    reader = TopicReader(broker.admin, topic)
    try:
        reader.read_new(60)
        return reader.records
    finally:
        reader.close()
