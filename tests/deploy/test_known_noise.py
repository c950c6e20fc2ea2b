"""Warnings that say nothing wrong are named once, not repeated on every line (issue 59): the kubelet's
MissingClusterDNS on make cluster's real node, and a startup probe that failed while the server loaded on a pod
that became ready. Pure functions on API-shaped objects (tests/deploy/api_objects.py)."""

from __future__ import annotations

from api_objects import event, pod
from podserve.tooling.deploy import diagnosis


def test_missing_cluster_dns_is_noise_and_left_out_of_a_pods_story():
    waiting = pod(ready=False)
    dns = event(waiting, "MissingClusterDNS", "pod: \"x\". kubelet does not have ClusterDNS IP configured", 1)
    pulled = event(waiting, "Pulling", "Pulling image", kind="Normal", seconds_ago=3)
    assert diagnosis.known_noise(dns, pod_ready=False) == diagnosis.MISSING_CLUSTER_DNS
    story = diagnosis.last_events(waiting, [pulled, dns])
    assert "MissingClusterDNS" not in story and "Pulling" in story, story


def test_a_startup_probe_failure_is_noise_only_once_the_pod_is_ready():
    failing = event(pod(), "Unhealthy", "Startup probe failed: HTTP probe failed with statuscode: 503")
    assert diagnosis.known_noise(failing, pod_ready=True) == diagnosis.STARTUP_WHILE_LOADING
    assert diagnosis.known_noise(failing, pod_ready=False) is None  # still starting: worth reading
    readiness = event(pod(), "Unhealthy", "Readiness probe failed: HTTP probe failed with statuscode: 503")
    assert diagnosis.known_noise(readiness, pod_ready=True) is None


def test_the_noise_of_many_events_is_each_summary_once():
    ready, starting = pod(name="a", ready=True), pod(name="b", ready=False)
    events = [event(ready, "MissingClusterDNS", "no DNS", seconds_ago=s) for s in (1, 2, 3)] + \
        [event(ready, "Unhealthy", "Startup probe failed: 503"), event(starting, "Unhealthy", "Startup probe failed: 503")]
    assert diagnosis.noise_in([ready, starting], events) == {diagnosis.MISSING_CLUSTER_DNS,
                                                             diagnosis.STARTUP_WHILE_LOADING}
