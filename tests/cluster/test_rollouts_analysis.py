"""The verdict's AnalysisTemplate metrics run by Argo Rollouts' controller against a real Prometheus: Prometheus
stopped mid-analysis is an error, retried, then the run errors naming Prometheus; never a pass.

Real: the controller (`make argo-rollouts`) as the chart's account, the apiserver with Argo's CRDs, Prometheus
(Debian's), the rendered queries and conditions (podserve.tooling.analysis_template). Nothing is scraped: no pod
serves, so the first measurement is inconclusive (too few requests), which is what it must be.
"""

from __future__ import annotations

import dataclasses
from datetime import datetime

import pytest

from podserve.testbed.prometheus import Prometheus
from podserve.tooling import analysis_template as at
from podserve.tooling.conf import load_deploy_policy
from waiting import wait_for

ARGO = ("argoproj.io", "v1alpha1")
#: A shorter window than production's (the sample is not full at the first measurement, taken at once; the next one,
#: a window later, finds Prometheus stopped); errors are retried every 10 s whatever the window.
WINDOW = 15
#: Argo's wait before measuring again after an error (DefaultErrorRetryInterval)
ERROR_RETRY_SECONDS = 10


@pytest.fixture
def objects(api):
    from kubernetes import client

    return client.CustomObjectsApi(api)


def test_prometheus_stopped_during_an_analysis_errors_then_aborts_naming_it(rollouts_controller, objects,
                                                                           scratch_namespace, tmp_path):
    namespace = scratch_namespace("analysis")
    prometheus = Prometheus(tmp_path / "prometheus", []).start()
    try:
        thresholds = dataclasses.replace(at.Thresholds.of(load_deploy_policy().verdict), window_seconds=WINDOW)
        comparison = at.canary(namespace, "like", "text-direction", "hk", thresholds, 15)
        metrics = [dict(metric, initialDelay="0s") for metric in at.metrics(comparison, prometheus.url, 0)]
        run = {"apiVersion": "argoproj.io/v1alpha1", "kind": "AnalysisRun",
               "metadata": {"name": "verdict", "namespace": namespace},
               "spec": {"args": [{"name": at.CANARY_HASH_ARG, "value": "c0ffee"},
                                 {"name": at.STABLE_HASH_ARG, "value": "5ab1e"}],
                        "metrics": metrics}}
        objects.create_namespaced_custom_object(*ARGO, namespace, "analysisruns", run)

        def status() -> dict:
            return objects.get_namespaced_custom_object(*ARGO, namespace, "analysisruns", "verdict").get("status") \
                or {}

        def measured() -> bool:
            results = status().get("metricResults") or []
            return len(results) == len(at.CHECKS) and all(r.get("measurements") for r in results)

        wait_for(measured, "a first measurement of every check", timeout=60)
        first = {r["name"]: r["measurements"][0] for r in status()["metricResults"]}
        # nothing counted (no pod serves): too few requests; the queue wait is not judged at rates not comparable
        assert {name: m["phase"] for name, m in first.items()} == \
            {"errors": "Inconclusive", "latency": "Inconclusive", "queue-wait": "Successful"}, first
        assert first["errors"]["value"] == "[0,0,0,0,0]"
    finally:
        prometheus.stop()
    wait_for(lambda: status().get("phase") in ("Error", "Failed", "Successful"), "the run's end", timeout=120)
    ended = status()
    assert ended["phase"] == "Error", ended
    address = prometheus.url.removeprefix("http://")
    # The run ends Error once one check has erred once past the limit: Argo then measures no check again (its
    # utils/analysis IsTerminating), so a check whose retries fell into a later reconcile than that one's (their times
    # drift apart by how long each measurement took) stops one error short: a fresh clone's run ended with the errors
    # check at 4, so the latency check's fifth had ended it.
    counts = {}
    for result in ended["metricResults"]:
        if result["name"] == "queue-wait":
            continue  # it had passed already: not measured again
        errors = [m for m in result["measurements"] if m["phase"] == "Error"]
        counts[result["name"]] = len(errors)
        assert len(errors) in (at.CONSECUTIVE_ERROR_LIMIT, at.CONSECUTIVE_ERROR_LIMIT + 1), result
        assert address in errors[-1]["message"], errors[-1]
        assert not any(m["phase"] == "Successful" for m in result["measurements"])
        # retried, not given up at once: each error measured Argo's retry interval after the last one ended (the
        # controller's own timestamps, in whole seconds: a 10 s gap reads 9 at least)
        started = [_seconds(m["startedAt"]) for m in errors]
        ended_at = [_seconds(m["finishedAt"]) for m in errors]
        assert all(b - a >= ERROR_RETRY_SECONDS - 1 for a, b in zip(ended_at, started[1:])), errors
    assert max(counts.values()) == at.CONSECUTIVE_ERROR_LIMIT + 1, (counts, ended)  # the one that ended the run
    assert address in ended.get("message", "") or any(address in (r.get("message") or "")
                                                      for r in ended["metricResults"]), ended


def _seconds(stamp: str) -> float:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()
