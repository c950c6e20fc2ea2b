"""A production stage as Argo Rollouts runs it: the rendered Deployment as a Rollout, and its AnalysisTemplate.

    steps = rollout.steps([10, 50], rollout.template_name("text-direction"))   # setWeight + analysis per step
    found = rollout.rollout(deployment, virtual_service, destination_rule, steps, scale_down_delay_seconds=30)
    template = rollout.analysis_template("text-direction", namespace, labels, comparison, address, slow_start)

render writes every production stage this way (`production`): the Deployment the templates render becomes the Rollout,
the service's AnalysisTemplate joins it, and an autoscaler scales the Rollout. The Rollout keeps the Deployment's pod
template and metadata; what changes:
- the selector and the pod template lose `track` (one ReplicaSet per revision, not one Deployment per track); Argo
  stamps `track: stable|canary` on the pods through stableMetadata/canaryMetadata, the labels the DestinationRule's
  subsets select (with the pod template hash Argo adds to them);
- traffic is Istio subset-level routing on the VirtualService's weighted routes (stable and canary destinations:
  the exact path and its sub-paths) and the DestinationRule's `stable`/`canary` subsets;
- no dynamicStableScale: stable keeps its full size through every step, so promotion never sends everything to a
  shrunk stable (the canary's extra pods are what the capacity check must fit);
- each canary step is setWeight then an analysis run of the service's AnalysisTemplate, the two pod template hashes
  passed as arguments (analysis_template.py tells the sides apart by them); no steps: still a Rollout (one path for
  status and rollback), straight to the new revision.
"""

from __future__ import annotations

import copy

from podserve.tooling import analysis_template as at
from podserve.tooling import release

API_VERSION = "argoproj.io/v1alpha1"
#: The Deployment fields a Rollout has no place for (its strategy is the canary below).
DEPLOYMENT_ONLY = ("strategy",)
_TEMPLATE_SUFFIX = "-verdict"


#: The kinds that run a stage's pods: a Deployment (grey, ab, offline workers), a Rollout (production).
WORKLOAD_KINDS = ("Deployment", "Rollout")


def workload_of(docs) -> dict | None:
    """The document among `docs` that runs the stage's pods (its Deployment or Rollout), or None."""
    return next((d for d in docs if d.get("kind") in WORKLOAD_KINDS), None)


def stable_pod_labels(workload: dict) -> dict:
    """The labels a stable pod of `workload` (a Deployment or Rollout) carries: its template's, and a Rollout's
    stableMetadata labels, which Argo adds to its stable ReplicaSet's pods (`track: stable`). Argo's pod template hash
    label is left out: it names a ReplicaSet Argo made."""
    labels = dict(workload["spec"]["template"]["metadata"].get("labels") or {})
    canary = ((workload["spec"].get("strategy") or {}).get("canary") or {}) if workload.get("kind") == "Rollout" else {}
    return dict(labels, **((canary.get("stableMetadata") or {}).get("labels") or {}))


def workload_kind(stage) -> str:
    """The kind that runs a stage's pods: a Rollout in production (Argo releases it), else a Deployment."""
    return "Rollout" if stage.production else "Deployment"


def production(docs: list[dict], platform, verdict, scale_down_delay_seconds: int) -> list[dict]:
    """A production stage's rendered documents as Argo releases them: the Deployment replaced (in place, same order)
    by its Rollout, whose steps are the release annotation's canary_steps, and the service's AnalysisTemplate after
    it, judging with `verdict` (conf/deploy.yaml's VerdictPolicy) tightened by value.py's fields.

    `platform` is conf/platform.yaml (its Prometheus address and scrape interval)."""
    by_kind = {doc["kind"]: doc for doc in docs}
    deployment, rule = by_kind["Deployment"], by_kind["DestinationRule"]
    meta = deployment["metadata"]
    policy = release.read_release_policy(deployment)
    name = template_name(meta["name"])
    found = rollout(deployment, by_kind["VirtualService"], rule, steps(policy["canary_steps"], name),
                    scale_down_delay_seconds)
    labels = meta["labels"]
    comparison = at.canary(meta["namespace"], labels["team"], labels["service"], labels["stage"],
                           at.Thresholds.of(release.verdict_policy(verdict, policy["verdict"])),
                           seconds(platform.monitoring.scrape_interval))
    template = analysis_template(meta["name"], meta["namespace"], labels, comparison,
                                 platform.monitoring.prometheus_address, release.slow_start_seconds(rule))
    out = []
    for doc in docs:
        out += [found, template] if doc is deployment else [doc]
    return out


def seconds(duration: str) -> int:
    """A Prometheus duration of whole seconds or minutes ("15s", "1m") as seconds; ValueError otherwise."""
    units = {"s": 1, "m": 60}
    if duration[-1:] in units and duration[:-1].isdigit():
        return int(duration[:-1]) * units[duration[-1]]
    raise ValueError(f"{duration!r} is not a duration of whole seconds or minutes (15s, 1m)")


def template_name(service: str) -> str:
    """The service's AnalysisTemplate name (<service>-verdict, within Kubernetes' 63 characters)."""
    return service[:release.MAX_NAME - len(_TEMPLATE_SUFFIX)] + _TEMPLATE_SUFFIX


def weighted_routes(virtual_service: dict) -> list[str]:
    """The names of the VirtualService's routes that send to both subsets by weight (those Argo sets)."""
    found = []
    for http in virtual_service["spec"]["http"]:
        subsets = {d["destination"].get("subset") for d in http.get("route", [])}
        if subsets == set(release.SUBSETS):
            found.append(http["name"])
    return found


def steps(weights: list[int], analysis: str) -> list[dict]:
    """value.py's canary_steps as Argo steps: at each weight, setWeight, then the AnalysisTemplate `analysis` judging
    the canary's pods against stable's (their pod template hashes as arguments)."""
    args = [{"name": at.CANARY_HASH_ARG, "valueFrom": {"podTemplateHashValue": "Latest"}},
            {"name": at.STABLE_HASH_ARG, "valueFrom": {"podTemplateHashValue": "Stable"}}]
    found = []
    for weight in weights:
        found.append({"setWeight": weight})
        found.append({"analysis": {"templates": [{"templateName": analysis}], "args": copy.deepcopy(args)}})
    return found


def rollout(deployment: dict, virtual_service: dict, destination_rule: dict, canary_steps: list[dict],
            scale_down_delay_seconds: int) -> dict:
    """The rendered production Deployment as a Rollout: the same pods, released by Argo's canary strategy with Istio
    subset-level routing on `virtual_service`'s weighted routes and `destination_rule`'s subsets."""
    found = copy.deepcopy(deployment)
    spec = found["spec"]
    for key in DEPLOYMENT_ONLY:
        spec.pop(key, None)
    spec["selector"] = {"matchLabels": {k: v for k, v in spec["selector"]["matchLabels"].items()
                                        if k != release.TRACK_LABEL}}
    spec["template"]["metadata"]["labels"].pop(release.TRACK_LABEL, None)
    found["metadata"].get("labels", {}).pop(release.TRACK_LABEL, None)
    subsets = {s["name"] for s in destination_rule["spec"].get("subsets", [])}
    if subsets != set(release.SUBSETS):
        raise ValueError(f"DestinationRule {destination_rule['metadata']['name']} has subsets {sorted(subsets)}; "
                         f"a Rollout routes by {sorted(release.SUBSETS)}")
    routes = weighted_routes(virtual_service)
    if not routes:
        raise ValueError(f"VirtualService {virtual_service['metadata']['name']} has no route weighted between "
                         f"{' and '.join(release.SUBSETS)}: nothing for Argo to shift")
    spec["strategy"] = {"canary": {
        # the old stable's pods serve this long after the switch (gateways still routing by the old weights)
        "scaleDownDelaySeconds": scale_down_delay_seconds,
        "stableMetadata": {"labels": {release.TRACK_LABEL: release.STABLE}},
        "canaryMetadata": {"labels": {release.TRACK_LABEL: release.CANARY}},
        "trafficRouting": {"istio": {
            "virtualService": {"name": virtual_service["metadata"]["name"], "routes": routes},
            "destinationRule": {"name": destination_rule["metadata"]["name"], "canarySubsetName": release.CANARY,
                                "stableSubsetName": release.STABLE}}},
        "steps": canary_steps}}
    return dict(found, apiVersion=API_VERSION, kind="Rollout")


def analysis_template(service: str, namespace: str, labels: dict, comparison: at.Comparison,
                      prometheus_address: str, slow_start_seconds: float) -> dict:
    """The service's AnalysisTemplate: the verdict's metrics (analysis_template.metrics) with the two hashes as
    arguments the Rollout's analysis steps pass."""
    return {"apiVersion": API_VERSION, "kind": "AnalysisTemplate",
            "metadata": {"name": template_name(service), "namespace": namespace,
                         "labels": {k: v for k, v in labels.items() if k != release.TRACK_LABEL}},
            "spec": {"args": [{"name": at.CANARY_HASH_ARG}, {"name": at.STABLE_HASH_ARG}],
                     "metrics": at.metrics(comparison, prometheus_address, slow_start_seconds)}}
