"""Every series of ours that a dashboard or an alert rule reads is on a pod's /metrics from the start, at 0.

A labelled series that appears only once what it counts first happens (a 503, a batch held open for
more) leaves its panels empty and its ratios without data until then: on a CPU pod, whose batches
never wait, for ever. Real: one server process started as `make serve` starts it (value.py's settings,
the example model); its /metrics is read before it has served a single request. No Prometheus: the
selectors are matched here, on the labels the server sets (those Prometheus or the PodMonitor add,
such as pod and stage, are not the server's to set).
"""

from __future__ import annotations

import re
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from podserve.metric_names import OFFLINE_METRICS
from podserve.testbed.served_pods import start_pods, stop_pods
from podserve.tooling.observability import dashboards, rules
from podserve.tooling.observability.queries import expand

NAME = r"podserve_[a-zA-Z0-9_:]*"  # with a colon: a recorded series, checked through its recording rule's reads
SELECTOR = re.compile(rf"\b({NAME})\s*(?:\{{([^{{}}]*)\}})?")
MATCHER = re.compile(r'(\w+)\s*(=~|!~|!=|=)\s*"((?:[^"\\]|\\.)*)"')


def _reads(models, obs, selectors) -> list[tuple[str, str]]:
    """(where, expression) of every dashboard target and annotation and every rule."""
    found = [(f"{name}: {where}", expr) for name, where, expr in dashboards.queries(models)]
    for group in rules.rule_groups(obs, selectors)["groups"]:
        found += [(f"rule {r.get('record') or r.get('alert')}", r["expr"]) for r in group["rules"]]
    return found


def _matches(labels: dict[str, str], matchers: list[tuple[str, str, str]]) -> bool:
    for label, op, value in matchers:
        have = labels.get(label, "")
        hit = re.fullmatch(value, have) is not None if "~" in op else have == value
        if hit != (op in ("=", "=~")):
            return False
    return True


@pytest.fixture(scope="module")
def fresh_pod(tmp_path_factory):
    """One pod that has answered nothing but its readiness probe: its samples, and its service's name."""
    pods = start_pods(tmp_path_factory.mktemp("fresh"), {"grey": 1})
    try:
        with urllib.request.urlopen(pods[0].url("/metrics"), timeout=10) as reply:
            text = reply.read().decode()
        samples = [(s.name, s.labels, s.value) for family in text_string_to_metric_families(text)
                   for s in family.samples]
        yield samples, pods[0].route.rsplit("/", 1)[1]
    finally:
        stop_pods(pods)


def test_every_series_a_dashboard_or_rule_reads_exists_before_the_first_request(fresh_pod, models, obs, selectors):
    samples, service = fresh_pod
    assert sum(value for name, _, value in samples if name == "podserve_requests_total") == 0, "not a fresh pod"
    server_labels = {label for _, labels, _ in samples for label in labels}
    variables = {"cluster": ".*", "stage": ".*", "namespace": ".*", "pod": ".*", "service": service}
    missing, checked = [], 0
    for where, expr in _reads(models, obs, selectors):
        for name, matchers in SELECTOR.findall(expand(expr, variables, 9, 1, 300)):
            if ":" in name or name in OFFLINE_METRICS:  # a worker's: tests/offline/test_offline_observability.py
                continue
            ours = [(label, op, value) for label, op, value in MATCHER.findall(matchers) if label in server_labels]
            checked += 1
            if not any(sample == name and _matches(labels, ours) for sample, labels, _ in samples):
                missing.append(f"{where}: {name}{{{', '.join(f'{l}{o}{v!r}' for l, o, v in ours)}}}")
    assert sorted(set(missing)) == []
    assert checked >= 60
    print(f"{checked} selectors of our metrics in the dashboards and rules, each with a series before any request")
