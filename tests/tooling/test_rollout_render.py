"""A production stage as a Rollout (tooling/rollout.py): the rendered Deployment's pods released by Argo's canary with
Istio subset-level routing, each step a setWeight and the service's analysis; checked against Argo's own CRD schemas.

Offline: render, and the openAPIV3Schema of Argo's CRDs from its module (`make argo-rollouts`). The controller running
such a Rollout is tests/cluster/test_rollouts_controller.py.
"""

from __future__ import annotations

import pytest

from kube_schemas import schema_errors
from podserve.tooling import analysis_template as at
from podserve.tooling import manifests, release, render, rollout
from podserve.tooling.conf import load_conf, load_deploy_policy

REPO = __import__("pathlib").Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def hk() -> dict:
    """hk's objects as the templates render them (the Deployment production's Rollout is made from), then render's."""
    conf = load_conf()
    rendered = render.render(REPO / "value.py", conf=conf, image_tag="t")
    docs = manifests.render_stage(rendered.values, conf, conf.stages["hk"], "t")
    return dict({doc["kind"]: doc for doc in docs}, rendered={doc["kind"]: doc for doc in rendered.stages["hk"]})


def test_the_deployment_becomes_a_rollout_with_the_same_pods_and_argo_s_tracks(hk):
    deployment, service = hk["Deployment"], hk["Deployment"]["metadata"]["name"]
    found = rollout.rollout(deployment, hk["VirtualService"], hk["DestinationRule"],
                            rollout.steps([10, 50], rollout.template_name(service)), 30)
    assert schema_errors(found) == []
    assert (found["apiVersion"], found["kind"]) == ("argoproj.io/v1alpha1", "Rollout")
    spec = found["spec"]
    # one ReplicaSet per revision: neither the selector nor the template carries track; Argo stamps it
    assert release.TRACK_LABEL in deployment["spec"]["template"]["metadata"]["labels"]
    assert release.TRACK_LABEL not in spec["selector"]["matchLabels"]
    assert release.TRACK_LABEL not in spec["template"]["metadata"]["labels"]
    assert spec["selector"]["matchLabels"].items() <= spec["template"]["metadata"]["labels"].items()
    canary = spec["strategy"]["canary"]
    assert canary["stableMetadata"] == {"labels": {"track": "stable"}}
    assert canary["canaryMetadata"] == {"labels": {"track": "canary"}}
    # the same pods otherwise: containers, volumes, probes, priority as rendered
    assert spec["template"]["spec"] == deployment["spec"]["template"]["spec"]
    assert spec["replicas"] == deployment["spec"]["replicas"]
    assert "dynamicStableScale" not in canary  # stable keeps its full size through every step
    istio = canary["trafficRouting"]["istio"]
    assert istio["virtualService"] == {"name": service, "routes": [f"{service}-exact", f"{service}-subpaths"]}
    assert istio["destinationRule"] == {"name": service, "canarySubsetName": "canary", "stableSubsetName": "stable"}
    assert canary["scaleDownDelaySeconds"] == 30


def test_each_canary_step_is_a_weight_then_the_services_analysis_of_both_hashes():
    found = rollout.steps([10, 50], "svc-verdict")
    assert [next(iter(s)) for s in found] == ["setWeight", "analysis", "setWeight", "analysis"]
    assert [s["setWeight"] for s in found[::2]] == [10, 50]
    analysis = found[1]["analysis"]
    assert analysis["templates"] == [{"templateName": "svc-verdict"}]
    assert {a["name"]: a["valueFrom"]["podTemplateHashValue"] for a in analysis["args"]} == \
        {at.CANARY_HASH_ARG: "Latest", at.STABLE_HASH_ARG: "Stable"}
    assert rollout.steps([], "svc-verdict") == []  # no canary: still a Rollout, straight to the new revision


def test_a_long_service_name_keeps_its_template_name_within_63_characters():
    assert len(rollout.template_name("s" * 63)) == release.MAX_NAME
    assert rollout.template_name("text-direction") == "text-direction-verdict"


def test_a_route_or_subset_argo_cannot_shift_is_refused_by_name(hk):
    no_subsets = {**hk["DestinationRule"], "spec": {**hk["DestinationRule"]["spec"], "subsets": []}}
    with pytest.raises(ValueError, match="has subsets \\[\\]; a Rollout routes by"):
        rollout.rollout(hk["Deployment"], hk["VirtualService"], no_subsets, [], 30)
    unweighted = {**hk["VirtualService"], "spec": {**hk["VirtualService"]["spec"], "http": []}}
    with pytest.raises(ValueError, match="no route weighted between stable and canary"):
        rollout.rollout(hk["Deployment"], unweighted, hk["DestinationRule"], [], 30)


def test_the_analysis_template_takes_both_hashes_and_passes_argo_s_schema(hk):
    deployment = hk["Deployment"]
    meta = deployment["metadata"]
    thresholds = at.Thresholds.of(load_deploy_policy().verdict)
    comparison = at.canary(meta["namespace"], meta["labels"]["team"], meta["name"], "hk", thresholds, 15)
    found = rollout.analysis_template(meta["name"], meta["namespace"], meta["labels"], comparison,
                                      load_conf().platform.monitoring.prometheus_address, 10)
    assert schema_errors(found) == []
    assert found["metadata"]["name"] == rollout.template_name(meta["name"])
    assert [a["name"] for a in found["spec"]["args"]] == [at.CANARY_HASH_ARG, at.STABLE_HASH_ARG]
    assert [m["name"] for m in found["spec"]["metrics"]] == list(at.CHECKS)
    assert release.TRACK_LABEL not in found["metadata"]["labels"]


def test_render_writes_production_as_the_rollout_and_its_analysis_template_with_the_platforms_prometheus(hk, tmp_path):
    from service_files import write_values

    conf, policy = load_conf(), load_deploy_policy()
    found = hk["rendered"]
    assert "Deployment" not in found and schema_errors(found["Rollout"]) == [] \
        and schema_errors(found["AnalysisTemplate"]) == []
    canary = found["Rollout"]["spec"]["strategy"]["canary"]
    assert canary["scaleDownDelaySeconds"] == policy.canary_scale_down_delay_seconds
    # the example has no canary_steps: still a Rollout, straight to each new revision
    assert canary["steps"] == []
    analysis = found["AnalysisTemplate"]
    assert analysis["metadata"]["name"] == rollout.template_name(found["Rollout"]["metadata"]["name"])
    for metric in analysis["spec"]["metrics"]:  # only the platform's Prometheus (podserve-analysis admits no other)
        assert metric["provider"]["prometheus"]["address"] == conf.platform.monitoring.prometheus_address
        assert f'namespace="{found["Rollout"]["metadata"]["namespace"]}"' in metric["provider"]["prometheus"]["query"]
    # value.py's steps and tighter thresholds reach the Rollout and its template
    values = write_values(tmp_path, canary_steps=[10, 50], verdict_window_seconds=300)
    docs = {d["kind"]: d for d in render.render(values, stages=["hk"], conf=conf).stages["hk"]}
    steps = docs["Rollout"]["spec"]["strategy"]["canary"]["steps"]
    assert steps == rollout.steps([10, 50], docs["AnalysisTemplate"]["metadata"]["name"])
    assert {m["interval"] for m in docs["AnalysisTemplate"]["spec"]["metrics"]} == {"300s"}
    assert {m["interval"] for m in analysis["spec"]["metrics"]} == {f"{policy.verdict.window_seconds}s"} != {"300s"}
