"""KEDA, built from its Go module, scales a production Rollout on the pods' own series from a real Prometheus,
through the apiserver's aggregation layer.

Real: KEDA's operator and metrics API server (`make keda`), registered as external.metrics.k8s.io with the
apiserver (front-proxy flags, the adapter's certificate checked by the aggregator), the HPA controller of the
controller-manager, Argo Rollouts' controller (the Rollout's scale subresource and selector), a Prometheus
evaluating the PromQL. Simulated: the series' values (a recording rule of the test's Prometheus writes the
recorded series render's query reads, instead of pods' scrapes) and the nodes (kwok).

The team's ResourceQuota holds 3 pods: the HPA asks 4, the ReplicaSet creates 3 and the apiserver refuses the
fourth (FailedCreate), and the same Prometheus, scraping Argo's controller, shows it as the platform's alert
PodserveScaleUpRefused reads it (one pod not created).
"""

from __future__ import annotations

import copy
import time

import yaml

from podserve.testbed.prometheus import Prometheus, ScrapeTarget
from podserve.tooling import scaling
from podserve.tooling.conf import load_observability
from podserve.tooling.observability.queries import pods_not_created
from waiting import wait_for

ARGO = ("argoproj.io", "v1alpha1")
KEDA = ("keda.sh", "v1alpha1")
#: In flight per pod, summed over the stage (what the test's Prometheus records): 10 over a target of 2.5 per pod
#: asks for 4 replicas, reachable from 2 in one step of the platform's scale-up policy (+100% or +4 a minute).
IN_FLIGHT_SUM = 10
#: The team's quota of pods in the test's namespace: one short of what the HPA asks.
QUOTA_PODS = 3


def moved(obj: dict, namespace: str) -> dict:
    found = copy.deepcopy(obj)
    found["metadata"]["namespace"] = namespace
    return found


def test_keda_serves_the_rendered_query_through_the_apiserver_and_its_hpa_scales_the_rollout_to_the_quota(
        keda, rollouts_controller, applier, services, scratch_namespace, api, tmp_path):
    from kubernetes import client

    namespace = scratch_namespace("keda")
    by_kind = {o["kind"]: o for o in services["autoscaled"].stages["hk"]}
    scaled = moved(by_kind["ScaledObject"], namespace)
    name = scaled["metadata"]["name"]
    (trigger,) = scaled["spec"]["triggers"]
    rendered_namespace = by_kind["ScaledObject"]["metadata"]["namespace"]
    query = trigger["metadata"]["query"].replace(f'namespace="{rendered_namespace}"', f'namespace="{namespace}"')
    assert query == scaling.query(scaling.IN_FLIGHT_SERIES, namespace, name)
    rules = tmp_path / "rules.yaml"
    series = (f'label_replace(label_replace(label_replace(vector({IN_FLIGHT_SUM}), "namespace", "{namespace}", "", ""), '
              f'"service", "{name}", "", ""), "pod", "{name}-0", "", "")')
    rules.write_text(yaml.safe_dump({"groups": [{"name": "pods", "rules": [
        {"record": scaling.IN_FLIGHT_SERIES, "expr": series}]}]}))
    core = client.CoreV1Api(api)
    core.create_namespaced_resource_quota(namespace, {"metadata": {"name": "team"}, "spec": {"hard": {
        "pods": str(QUOTA_PODS)}}})
    wait_for(lambda: (core.read_namespaced_resource_quota("team", namespace).status.hard or {}).get("pods"),
             "the quota controller counting the namespace's pods", timeout=30)
    rollouts_job = load_observability().rollouts_selector
    argo = ScrapeTarget(f"127.0.0.1:{rollouts_controller.metrics_port}", {"job": rollouts_job.split('"')[1]})
    prometheus = Prometheus(tmp_path / "prometheus", [argo], rule_files=[rules]).start()
    try:
        # KEDA asks Prometheus for the query at the current second (RFC 3339, its fraction dropped): a series younger
        # than that second reads empty there, which KEDA answers as 0 (ignoreNullValues)
        wait_for(lambda: prometheus.query(query, at=time.time() - 2), "the recorded series 2 s old", timeout=30)
        trigger["metadata"].update(serverAddress=prometheus.url, query=query)  # the test's Prometheus, not the region's
        for kind in ("Service", "DestinationRule", "VirtualService", "Rollout", "ScaledObject"):
            applier.apply(moved(by_kind[kind], namespace) if kind != "ScaledObject" else scaled)
        autoscaling = client.AutoscalingV2Api(api)
        hpa_name = scaling.HPA_PREFIX + name
        hpa = wait_for(lambda: _read_hpa(autoscaling, namespace, hpa_name), f"KEDA's HPA {hpa_name}", timeout=60)
        assert (hpa.spec.scale_target_ref.kind, hpa.spec.scale_target_ref.name) == ("Rollout", name)
        assert (hpa.spec.min_replicas, hpa.spec.max_replicas) == (2, 8)
        assert hpa.spec.behavior.scale_down.stabilization_window_seconds == 300
        (metric,) = hpa.spec.metrics
        selector = ",".join(f"{k}={v}" for k, v in metric.external.metric.selector.match_labels.items())

        items = wait_for(lambda: keda.external_metric(namespace, metric.external.metric.name, selector),
                         "the external metric through the apiserver", timeout=60)
        assert [item["value"] for item in items] == [str(IN_FLIGHT_SUM)]  # Prometheus' value, as a quantity
        objects = client.CustomObjectsApi(api)
        wait_for(lambda: objects.get_namespaced_custom_object(*ARGO, namespace, "rollouts", name)["spec"].get(
            "replicas") == IN_FLIGHT_SUM / 2.5, "the HPA scaling the Rollout from 2 to 4", timeout=120,
            explain=lambda: str(autoscaling.read_namespaced_horizontal_pod_autoscaler(hpa_name, namespace).status))
        ready = objects.get_namespaced_custom_object(*KEDA, namespace, "scaledobjects", name)["status"]["conditions"]
        assert {c["type"]: c["status"] for c in ready}.get("Ready") == "True", ready

        # at the quota: the fourth pod refused, and what the alert reads from Argo's controller says so
        _, not_created = pods_not_created("", f'{rollouts_job}, namespace="{namespace}"')
        shown = lambda: [(r["metric"]["deployment"], r["value"][1]) for r in prometheus.query(not_created)]  # noqa: E731
        wait_for(lambda: shown() == [(name, str(4 - QUOTA_PODS))], "Argo's series showing the pod the quota refused",
                 timeout=60, explain=lambda: f"{shown()}; pods: {[p.metadata.name for p in core.list_namespaced_pod(namespace).items]}")
        refused = [e for e in core.list_namespaced_event(namespace).items
                   if e.reason == "FailedCreate" and e.involved_object.kind == "ReplicaSet"]
        assert refused and "exceeded quota: team" in refused[0].message, [e.message for e in refused]
        conditions = objects.get_namespaced_custom_object(*ARGO, namespace, "rollouts", name)["status"]["conditions"]
        assert any(c["type"] == "ReplicaFailure" and c["status"] == "True" for c in conditions), conditions
    finally:
        prometheus.stop()
    assert not keda.log_lines("forbidden"), keda.log_lines("forbidden")[:5]


def _read_hpa(autoscaling, namespace: str, name: str):
    from kubernetes.client.exceptions import ApiException

    try:
        return autoscaling.read_namespaced_horizontal_pod_autoscaler(name, namespace)
    except ApiException as exc:
        if exc.status == 404:
            return None
        raise
