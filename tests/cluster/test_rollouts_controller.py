"""Argo Rollouts' controller, built from its Go module, runs a canary on the test control plane as the platform
chart's ServiceAccount: Istio subset-level routing on the service's VirtualService and DestinationRule, the
`track` label from stableMetadata/canaryMetadata, promotion by its kubectl plugin.

Real: the controller and its plugin (`make argo-rollouts`), the apiserver with Argo's and Istio's CRDs as their
modules ship them, the chart's RBAC, the ReplicaSet controller, the scheduler. Simulated: the nodes (kwok) and their
containers, Ready at once.
"""

from __future__ import annotations

import copy

import pytest

from podserve.tooling import analysis_template as at
from podserve.tooling import release
from podserve.tooling import rollout as rollouts
from podserve.tooling.conf import load_deploy_policy
from waiting import wait_for

ARGO = ("argoproj.io", "v1alpha1")
ISTIO = ("networking.istio.io", "v1")
HASH_LABEL = at.HASH_POD_LABEL
SCALE_DOWN_DELAY_SECONDS = 5


def moved(obj: dict, namespace: str) -> dict:
    found = copy.deepcopy(obj)
    found["metadata"]["namespace"] = namespace
    return found


def weights(objects, namespace: str, name: str) -> set[tuple]:
    found = objects.get_namespaced_custom_object(*ISTIO, namespace, "virtualservices", name)
    return {tuple((d["destination"]["subset"], d.get("weight", 0)) for d in http["route"])
            for http in found["spec"]["http"] if len(http["route"]) == 2}


def with_steps(rollout: dict, steps: list[dict]) -> dict:
    """The Rollout render wrote for hk, with these steps and a short scale-down delay."""
    found = copy.deepcopy(rollout)
    canary = found["spec"]["strategy"]["canary"]
    canary.update(steps=steps, scaleDownDelaySeconds=SCALE_DOWN_DELAY_SECONDS)
    return found


@pytest.fixture
def objects(api):
    from kubernetes import client

    return client.CustomObjectsApi(api)


def test_a_canary_runs_on_the_controller_with_the_charts_rbac(rollouts_controller, applier, objects, core, services,
                                                               scratch_namespace):
    namespace = scratch_namespace("argo", {"pod-security.kubernetes.io/enforce": "restricted"})
    stage = services["example"].stages["hk"]
    by_kind = {o["kind"]: o for o in stage}
    name = by_kind["Rollout"]["metadata"]["name"]
    assert len(rollouts.weighted_routes(by_kind["VirtualService"])) == 2, \
        "the production route has its exact path and its sub-paths, both weighted"
    for kind in ("Service", "DestinationRule", "VirtualService"):
        applier.apply(moved(by_kind[kind], namespace))
    # the old stable's pods serve SCALE_DOWN_DELAY_SECONDS after the switch; the Rollout is complete once they are gone
    rollout = moved(with_steps(by_kind["Rollout"], [{"setWeight": 20}, {"pause": {}}]), namespace)
    applier.apply(rollout)

    def phase() -> str:
        found = objects.get_namespaced_custom_object(*ARGO, namespace, "rollouts", name)
        status = found.get("status") or {}
        return status.get("phase", "") if status.get("observedGeneration") == str(found["metadata"]["generation"]) \
            else ""

    wait_for(lambda: phase() == "Healthy", "the first revision Healthy (no steps on a first revision)", timeout=90)
    assert weights(objects, namespace, name) == {(("stable", 100), ("canary", 0))}

    changed = copy.deepcopy(rollout)
    changed["spec"]["template"]["spec"]["containers"][0]["image"] += "-2"
    applier.apply(changed)
    wait_for(lambda: phase() == "Paused", "the second revision paused at its pause step", timeout=90)
    assert weights(objects, namespace, name) == {(("stable", 80), ("canary", 20))}
    rule = objects.get_namespaced_custom_object(*ISTIO, namespace, "destinationrules", name)
    subset_hashes = {s["name"]: s["labels"].get(HASH_LABEL) for s in rule["spec"]["subsets"]}
    assert subset_hashes["stable"] and subset_hashes["canary"] and subset_hashes["stable"] != subset_hashes["canary"]
    pods = core.list_namespaced_pod(namespace).items
    tracks = {(p.metadata.labels.get(HASH_LABEL), p.metadata.labels.get(release.TRACK_LABEL)) for p in pods
              if p.metadata.deletion_timestamp is None}
    assert (subset_hashes["canary"], release.CANARY) in tracks and (subset_hashes["stable"], release.STABLE) in tracks

    promoted = rollouts_controller.plugin("promote", name, "-n", namespace)
    assert promoted.returncode == 0, promoted.stderr
    wait_for(lambda: phase() == "Healthy", "the second revision Healthy after promote", timeout=90)
    # at the end Argo sends the canary 100%, then makes its ReplicaSet stable (both subsets on its hash) and the
    # weights stable 100 again
    wait_for(lambda: weights(objects, namespace, name) == {(("stable", 100), ("canary", 0))},
             "stable 100 after the promotion", timeout=30)
    rule = objects.get_namespaced_custom_object(*ISTIO, namespace, "destinationrules", name)
    assert {s["labels"].get(HASH_LABEL) for s in rule["spec"]["subsets"]} == {subset_hashes["canary"]}
    status = rollouts_controller.plugin("status", name, "-n", namespace)
    assert status.returncode == 0 and "Healthy" in status.stdout, status.stdout + status.stderr
    # its metrics, which the chart's PodMonitor has Prometheus scrape and the platform's alert reads
    # (rollout_info's phases are its own: Completed, Progressing, Paused, Abort, Timeout, Error, InvalidSpec)
    def reported_completed() -> bool:
        return any(line.startswith("rollout_info{") and f'namespace="{namespace}"' in line
                   and 'phase="Completed"' in line and line.endswith(" 1")
                   for line in rollouts_controller.metrics().splitlines())

    wait_for(reported_completed, "rollout_info says Completed (the old ReplicaSet scaled down)",
             timeout=SCALE_DOWN_DELAY_SECONDS + 45)


def test_a_canary_step_runs_the_services_analysis_on_both_pod_template_hashes(rollouts_controller, applier, objects,
                                                                              core, services, scratch_namespace,
                                                                              tmp_path):
    """The Rollout's analysis step (rollout.steps) starts an AnalysisRun of the service's AnalysisTemplate
    (rollout.analysis_template) with the canary's and stable's pod template hashes as Argo resolves them, and every
    query of the run selects those hashes in the Rollout's namespace. Prometheus is real and empty: the first
    measurement has nothing to count (inconclusive), which is not a pass."""
    from podserve.testbed.prometheus import Prometheus

    namespace = scratch_namespace("argo-analysis", {"pod-security.kubernetes.io/enforce": "restricted"})
    by_kind = {o["kind"]: moved(o, namespace) for o in services["example"].stages["hk"]}
    meta = by_kind["Rollout"]["metadata"]
    name = meta["name"]
    for kind in ("Service", "DestinationRule", "VirtualService"):
        applier.apply(by_kind[kind])
    prometheus = Prometheus(tmp_path / "prometheus", []).start()
    try:
        thresholds = at.Thresholds.of(load_deploy_policy().verdict)
        comparison = at.canary(namespace, meta["labels"]["team"], name, "hk", thresholds, 15)
        template = rollouts.analysis_template(name, namespace, meta["labels"], comparison, prometheus.url, 0)
        for metric in template["spec"]["metrics"]:  # measured at once (production waits out slow start and a window)
            metric["initialDelay"] = "0s"
        applier.apply(template)
        rollout = with_steps(by_kind["Rollout"], rollouts.steps([20], rollouts.template_name(name)))
        applier.apply(rollout)

        def status() -> dict:
            return objects.get_namespaced_custom_object(*ARGO, namespace, "rollouts", name).get("status") or {}

        wait_for(lambda: status().get("phase") == "Healthy", "the first revision Healthy", timeout=90)
        stable_hash = status()["stableRS"]
        changed = copy.deepcopy(rollout)
        changed["spec"]["template"]["spec"]["containers"][0]["image"] += "-2"
        applier.apply(changed)

        def runs() -> list[dict]:
            return objects.list_namespaced_custom_object(*ARGO, namespace, "analysisruns")["items"]

        wait_for(lambda: any((r.get("status") or {}).get("metricResults") for r in runs()),
                 "the step's AnalysisRun measured", timeout=90)
        (run,) = runs()
        canary_hash = status()["currentPodHash"]
        assert canary_hash != stable_hash
        args = {a["name"]: a.get("value") for a in run["spec"]["args"]}
        assert args == {at.CANARY_HASH_ARG: canary_hash, at.STABLE_HASH_ARG: stable_hash}
        # the run keeps the template's queries; Argo puts the arguments in at each measurement
        for metric in run["spec"]["metrics"]:
            query = metric["provider"]["prometheus"]["query"]
            assert f'{at.HASH_SERIES_LABEL}="{{{{args.{at.CANARY_HASH_ARG}}}}}"' in query, metric["name"]
            assert f'{at.HASH_SERIES_LABEL}="{{{{args.{at.STABLE_HASH_ARG}}}}}"' in query, metric["name"]
            assert f'namespace="{namespace}"' in query
        assert weights(objects, namespace, name) == {(("stable", 80), ("canary", 20))}
        # Prometheus took the queries with the hashes in them (an Error otherwise) and counted nothing: not a pass
        errors = next(r for r in run["status"]["metricResults"] if r["name"] == "errors")
        assert errors["measurements"][0]["phase"] == "Inconclusive", errors
        assert errors["measurements"][0]["value"] == "[0,0,0,0,0]", errors
    finally:
        prometheus.stop()
