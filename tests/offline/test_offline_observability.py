"""The service dashboard's offline panels and the offline alerts, through a real Prometheus scraping a real worker.

The online pods of tests/observability export none of an offline worker's metrics (metric_names.OFFLINE_METRICS), so
their queries are checked here: a worker on the session's broker answers good messages and dead-letters poison while
Prometheus scrapes its /metrics every second, with the target labels the worker's PodMonitor gives it (set here: no
Kubernetes). Every dashboard query that reads only a worker's metrics must return data; PodserveDeadLettering's
expression must hold at this worker's dead-letter share and PodserveConsumerStalled's must not (it consumed all).
"""

from __future__ import annotations

import time

from kafka_workers import TEAM, line_messages
from test_stream import POISON, wait_for

from podserve import metric_names as m
from podserve.testbed.prometheus import Prometheus, ScrapeTarget
from podserve.testbed.topics import TopicReader, send
from podserve.tooling.conf import load_conf, load_observability
from podserve.tooling.observability import dashboards, rules
from podserve.tooling.observability.queries import Selectors, expand

GOOD = 40
SERVICE = "text-direction"  # kafka_workers.Worker's service_name


def worker_target(port: int, cluster_label: str) -> ScrapeTarget:
    """The worker's /metrics with the target labels its PodMonitor gives a worker of hk (pod_monitor_labels')."""
    return ScrapeTarget(f"127.0.0.1:{port}", {cluster_label: "hk", "namespace": f"podserve-{TEAM}", "stage": "hk",
                                              "service": SERVICE, "pod": f"{SERVICE}-0", "job": f"podserve-{TEAM}/{SERVICE}"})


def test_the_offline_panels_show_a_worker_and_its_alerts_judge_it(kafka, topics, start_worker, tmp_path):
    obs = load_observability()
    selectors = Selectors.from_conf(obs, load_conf())
    worker = start_worker(topics)
    prom = Prometheus(tmp_path / "prometheus", [worker_target(worker.port, obs.cluster_label)]).start()
    try:
        prom.wait_for(m.CONSUMER_LAG)
        good, _ = line_messages(GOOD, "good")
        poison = [(f"poison-{i}".encode(), value) for i, value in enumerate(POISON)]
        send(kafka.admin, topics["source_topic"], good + poison)
        wait_for(TopicReader(kafka.admin, topics["sink_topic"]), GOOD, timeout=120, worker=worker)
        wait_for(TopicReader(kafka.admin, topics["dead_letter_topic"]), len(poison), timeout=60, worker=worker)
        prom.wait_for(f"sum({m.MESSAGES_CONSUMED}) >= {GOOD + len(poison)}")
        time.sleep(3)  # three more scrapes
        at = time.time()
        variables = {"cluster": ".*", "stage": ".*", "namespace": ".*", "pod": ".*", "service": SERVICE}
        checked, empty = 0, []
        for dashboard, where, expr in dashboards.queries(dashboards.build(obs, selectors)):
            if not any(name in expr for name in m.OFFLINE_METRICS):
                continue
            checked += 1
            if not prom.query(expand(expr, variables, 9, 1, 300), at):
                empty.append(f"{dashboard}: {where}: {expr}")
        assert empty == [] and checked >= 5
        offline = {a.name: a for a in rules.alerts(obs, selectors) if a.source == "offline"}
        assert set(offline) == {"PodserveDeadLettering", "PodserveConsumerStalled"}
        for alert in offline.values():
            assert prom.query(alert.probe, at), f"{alert.name}: {alert.probe} returned nothing"
        share = len(poison) / (GOOD + len(poison))
        assert share > obs.thresholds.dead_letter_ratio  # so the dead-letter alert's condition must hold
        assert prom.query(offline["PodserveDeadLettering"].expr, at)
        assert prom.query(offline["PodserveConsumerStalled"].expr, at) == []  # it consumed everything
    finally:
        prom.stop()
