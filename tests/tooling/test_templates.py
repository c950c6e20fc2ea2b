"""Template hygiene: values reach YAML only through `q`, undefined names fail, duplicate keys fail; checks catch drift."""

from __future__ import annotations

import copy

import pytest
from hypothesis import given
from hypothesis import strategies as st

from podserve.tooling import checks, output, templating


def render_text(tmp_path, text: str, **context):
    (tmp_path / "t.yaml.j2").write_text(text)
    templating.environment.cache_clear()
    return templating.render_documents(templating.environment(tmp_path), "t.yaml.j2", context)


def test_a_value_without_q_is_refused(tmp_path):
    with pytest.raises(templating.TemplateError, match="without `| q`"):
        render_text(tmp_path, "name: {{ x }}\n", x="no")


def test_an_undefined_name_is_refused(tmp_path):
    with pytest.raises(templating.TemplateError, match="undefined"):
        render_text(tmp_path, "name: {{ missing | q }}\n")


@pytest.mark.parametrize("value", [float("inf"), float("nan"), object()])
def test_a_value_yaml_cannot_hold_is_refused(tmp_path, value):
    with pytest.raises(templating.TemplateError, match="cannot be written to YAML"):
        render_text(tmp_path, "v: {{ x | q }}\n", x=value)


def test_a_duplicate_key_is_refused(tmp_path):
    with pytest.raises(templating.TemplateError, match="duplicate key 'a'"):
        render_text(tmp_path, "a: 1\na: {{ x | q }}\n", x=2)


SCALARS = st.text(max_size=30) | st.integers() | st.booleans() | st.none() | st.floats(allow_nan=False,
                                                                                     allow_infinity=False)
VALUES = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner,
                                                                                           max_size=3), max_leaves=8)


@given(VALUES)
def test_q_keeps_any_value_exactly(value):
    """YAML-lookalike strings ("no", "1.0", "y", ": x", "#") and numbers (1e-05) come back as they went in."""
    doc = templating.yaml.load("v: " + templating.quote(value), Loader=templating._StrictLoader)
    assert doc == {"v": value}


@given(VALUES)
def test_the_writer_keeps_any_value_exactly(value):
    assert templating.yaml.safe_load(output.dump([{"v": value}])) == {"v": value}


def deployment_of(example, stage="hk"):
    return copy.deepcopy(example.stages[stage])


def problems_after(example, conf, change, stage="hk"):
    docs = deployment_of(example, stage)
    change({d["kind"]: d for d in docs})
    return [str(p) for p in checks.check_stage(docs, example.values, conf, conf.stages[stage])]


def test_the_example_passes_its_checks(example, conf):
    for stage, docs in example.stages.items():
        assert checks.check_stage(docs, example.values, conf, conf.stages[stage]) == []
    assert checks.check_routes(example.stages) == []


@pytest.mark.parametrize("change, says", [
    (lambda d: d["Deployment"]["spec"]["template"]["spec"].update(terminationGracePeriodSeconds=10), "requests would be killed"),
    (lambda d: d["Deployment"]["spec"]["template"]["spec"]["containers"][0]["startupProbe"].update(failureThreshold=2),
     "restart while loading"),
    (lambda d: d["Deployment"]["spec"]["template"]["spec"]["containers"][0]["livenessProbe"].update(initialDelaySeconds=30),
     "initialDelaySeconds"),
    (lambda d: d["Deployment"]["spec"]["template"]["spec"]["containers"][0]["livenessProbe"]["httpGet"].update(path="/api/ping"),
     "livenessProbe must GET /api/live"),
    (lambda d: [e.update(value="8") for e in d["Deployment"]["spec"]["template"]["spec"]["containers"][0]["env"]
                if e["name"] == "PODSERVE_MAX_BATCH_SIZE"], "settings from its env that differ"),
    (lambda d: d["Deployment"]["spec"]["template"]["spec"]["containers"][0]["securityContext"].update(readOnlyRootFilesystem=False),
     "read-only root"),
    (lambda d: d["Deployment"]["spec"]["template"]["spec"]["containers"][0]["ports"][0].update(hostPort=20001),
     "which stage grey does not allow"),
    (lambda d: d["Service"]["spec"]["selector"].update(stage="eu"), "does not select"),
    (lambda d: d["DestinationRule"]["spec"]["trafficPolicy"]["loadBalancer"].update(simple="ROUND_ROBIN"), "LEAST_REQUEST"),
    (lambda d: d["Deployment"]["spec"].update(replicas=3), "not the stage's 1"),
    (lambda d: d["Deployment"]["metadata"]["labels"].update(team="Like Team"), "not a valid label value"),
    (lambda d: d["Deployment"]["spec"]["template"]["metadata"]["annotations"].update(**{"proxy.istio.io/config": "{}"}),
     "hold the app until the proxy starts"),
    (lambda d: d["Service"]["metadata"].update(name="text-direction\n"), "must be a DNS-1035 label"),
    (lambda d: d["Deployment"]["metadata"]["labels"].update(team="like\n"), "not a valid label value"),
    (lambda d: d["Deployment"]["metadata"]["labels"].update(**{"team\n": "like"}), "not a valid label key"),
    (lambda d: d["Deployment"]["metadata"]["labels"].update(**{"podserve.io\n/team": "like"}), "not a valid label key"),
], ids=["grace", "startup", "initial-delay", "liveness-path", "env", "read-only", "host-port", "selector", "balancer",
        "replicas", "label", "proxy", "name-newline", "label-newline", "key-newline", "prefix-newline"])
def test_the_checks_catch_a_broken_object(example, conf, change, says):
    problems = problems_after(example, conf, change, stage="grey")
    assert any(says in p for p in problems), problems


def test_a_scaler_and_fixed_replicas_never_fight_and_no_hpa_of_our_own(example, conf):
    docs = deployment_of(example)
    meta = {"name": "text-direction", "namespace": conf.stages["hk"].namespace_for("like")}
    scaled = {"apiVersion": "keda.sh/v1alpha1", "kind": "ScaledObject", "metadata": meta,
              "spec": {"scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "text-direction"},
                       "minReplicaCount": 2, "maxReplicaCount": 4, "triggers": []}}
    problems = [str(p) for p in checks.check_stage(docs + [scaled], example.values, conf, conf.stages["hk"])]
    assert any("would fight" in p for p in problems), problems
    hpa = {"apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler", "metadata": meta,
           "spec": {"scaleTargetRef": scaled["spec"]["scaleTargetRef"], "minReplicas": 2, "maxReplicas": 4}}
    problems = [str(p) for p in checks.check_stage(docs + [hpa], example.values, conf, conf.stages["hk"])]
    assert any("KEDA makes the stage's HPA" in p for p in problems), problems


def test_a_bare_prefix_route_is_refused(example):
    stages = copy.deepcopy(example.stages)
    vs = next(d for d in stages["hk"] if d["kind"] == "VirtualService")
    vs["spec"]["http"][1]["match"] = [{"uri": {"prefix": "/api/like/text-direction"}}]
    assert any("does not end in '/'" in str(p) for p in checks.check_routes(stages))
