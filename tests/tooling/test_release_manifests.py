"""What render writes for releasing production (issue 57): subsets always, the stable selector's track, the canary's
header route, the mirror to grey (hk only), and what its checks refuse."""

from __future__ import annotations

import copy
import json

import pytest

from podserve.tooling import checks, provenance, release, render
from podserve.tooling.values import load_values
from service_files import write_values

def _by_kind(docs: list[dict]) -> dict[str, dict]:
    return {d["kind"]: d for d in docs}


def test_production_always_routes_to_the_subsets_by_weight_and_no_header_reaches_the_canary(tmp_path, conf):
    stages = render.render(write_values(tmp_path, canary_steps=[10, 50]), conf=conf, image_tag="golden").stages
    for name in ("hk", "eu", "na"):
        objects = _by_kind(stages[name])
        subsets = objects["DestinationRule"]["spec"]["subsets"]
        # by Argo's pod template hash alone (it writes it): never by track, which Argo moves after the switch
        assert [(s["name"], s.get("labels")) for s in subsets] == [("stable", None), ("canary", None)]
        pools = {s["name"]: s["trafficPolicy"]["connectionPool"]["http"]["http2MaxRequests"] for s in subsets}
        whole = objects["DestinationRule"]["spec"]["trafficPolicy"]["connectionPool"]["http"]["http2MaxRequests"]
        replicas = objects["Rollout"]["spec"]["replicas"]
        assert pools["stable"] == whole  # the stage's pods
        assert pools["canary"] == whole * release.canary_replicas(50, replicas) // replicas  # its most pods, at 50%
        http = objects["VirtualService"]["spec"]["http"]
        # only the path and its sub-paths, each weighted (Argo sets the weights): no header a caller sends reaches
        # the canary, nor steers or biases its sample
        assert [h["name"] for h in http] == ["text-direction-exact", "text-direction-subpaths"]
        for route in http:
            assert all(set(m) == {"uri"} for m in route["match"]), route["match"]
            assert [(d["destination"]["subset"], d["weight"]) for d in route["route"]] == [("stable", 100),
                                                                                           ("canary", 0)]
        rollout = objects["Rollout"]["spec"]["strategy"]["canary"]
        assert rollout["trafficRouting"]["istio"]["virtualService"]["routes"] == [h["name"] for h in http]
        assert [s["setWeight"] for s in rollout["steps"] if "setWeight" in s] == [10, 50]
        assert [s["analysis"]["templates"] for s in rollout["steps"] if "analysis" in s] == \
            [[{"templateName": objects["AnalysisTemplate"]["metadata"]["name"]}]] * 2
        assert release.read_release_policy(objects["Rollout"])["canary_steps"] == [10, 50]
        assert "Deployment" not in objects
    for name in ("grey", "ab"):  # a preview copy: one Deployment, one destination; grey's one subset is the mirror's
        objects = _by_kind(stages[name])
        assert objects["DestinationRule"]["spec"].get("subsets") == (
            [{"name": "mirror-target", "labels": {"podserve.io/mirror-target": "default-branch"}}] if name == "grey"
            else None)
        assert all(list(d["destination"]) == ["host", "port"] for h in objects["VirtualService"]["spec"]["http"]
                   for d in h["route"])
        assert release.RELEASE_ANNOTATION not in objects["Deployment"]["metadata"].get("annotations", {})


def test_the_rollout_selects_every_pod_of_the_stage_and_argo_stamps_track_as_the_other_selectors_do(tmp_path, conf):
    stages = render.render(write_values(tmp_path), conf=conf, image_tag="golden").stages
    for name in ("hk", "eu"):
        objects = _by_kind(stages[name])
        deployment = objects["Rollout"]
        # one selector for every revision's ReplicaSet; Argo stamps track (stableMetadata/canaryMetadata)
        assert deployment["spec"]["selector"]["matchLabels"] == {"service": "text-direction", "stage": name}
        assert release.TRACK_LABEL not in deployment["spec"]["template"]["metadata"]["labels"]
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()  # the apiserver refuses less
        both = {"service": "text-direction", "stage": name}  # stable's pods and a canary's
        assert objects["Service"]["spec"]["selector"] == both
        assert objects["PodDisruptionBudget"]["spec"]["selector"]["matchLabels"] == both
        assert objects["PodMonitor"]["spec"]["selector"]["matchLabels"] == both
        spread = deployment["spec"]["template"]["spec"]["topologySpreadConstraints"][0]["labelSelector"]
        assert spread["matchLabels"] == both
    assert _by_kind(stages["grey"])["Deployment"]["spec"]["selector"]["matchLabels"] == {
        "service": "text-direction", "stage": "grey"}


def test_hk_mirrors_its_share_to_its_own_grey_and_no_other_stage_mirrors(tmp_path, conf):
    stages = render.render(write_values(tmp_path, grey_mirror_percent=20), conf=conf).stages
    hk = _by_kind(stages["hk"])["VirtualService"]["spec"]["http"]
    mirrored = [h for h in hk if "mirror" in h]
    assert [h["name"] for h in mirrored] == ["text-direction-exact", "text-direction-subpaths"]  # not the header's
    for http in mirrored:
        # grey's pods of the protected default branch only (the subset selects the label only their render gives)
        assert http["mirror"] == {"host": "text-direction.podserve-like-grey.svc.cluster.local",
                                  "subset": "mirror-target", "port": {"number": 8080}}
        assert http["mirrorPercentage"] == {"value": 20.0}
    for name in ("eu", "na", "grey", "ab"):  # grey lives in hk: only hk's production can copy to it
        assert not any("mirror" in h for h in _by_kind(stages[name])["VirtualService"]["spec"]["http"]), name
    off = render.render(write_values(tmp_path, name="off.py"), conf=conf).stages["hk"]
    assert not any("mirror" in h for h in _by_kind(off)["VirtualService"]["spec"]["http"])


@pytest.mark.parametrize("change, says", [
    (lambda http: http["route"][1]["destination"].update(subset="blue"), "goes to subset 'blue'"),
    (lambda http: http["route"][0].update(weight=90), "they must add up to 100"),
    (lambda http: http.update(mirror={"host": "text-direction.podserve-like-ab.svc.cluster.local"},
                              mirrorPercentage={"value": 10.0}), "only to its own grey"),
    (lambda http: http.update(mirror={"host": "text-direction.podserve-like-grey.svc.cluster.local"},
                              mirrorPercentage={"value": 80.0}), "between 0 and 50"),
], ids=["unknown-subset", "weights-not-100", "mirror-to-ab", "mirror-over-the-limit"])
def test_checks_refuse_a_route_off_the_subsets_or_mirroring_elsewhere(tmp_path, conf, change, says):
    path = write_values(tmp_path)
    docs = copy.deepcopy(render.render(path, stages=["hk"], conf=conf).stages["hk"])
    change(next(d for d in docs if d["kind"] == "VirtualService")["spec"]["http"][0])
    problems = [str(p) for p in checks.check_stage(docs, load_values(path, conf), conf, conf.stages["hk"])]
    assert any(says in p for p in problems), problems


SOURCES = {"the protected default branch": (provenance.Source("main", "main", True), True),
           "another branch": (provenance.Source("feature/x", "main", True), False),
           "the default branch unprotected": (provenance.Source("main", "main", False), False),
           "a tag or merge request": (provenance.Source("", "main", True), False)}


@pytest.mark.parametrize("source, mirrored", SOURCES.values(), ids=SOURCES)
def test_only_grey_of_the_protected_default_branch_takes_production_s_mirror_and_grey_records_its_branch(
        tmp_path, conf, source, mirrored):
    stages = render.render(write_values(tmp_path, grey_mirror_percent=20), conf=conf, source=source).stages
    grey = _by_kind(stages["grey"])
    subset = grey["DestinationRule"]["spec"]["subsets"][0]
    labels = grey["Deployment"]["spec"]["template"]["metadata"]["labels"]
    assert (all(labels.get(k) == v for k, v in subset["labels"].items())) is mirrored
    for doc in stages["grey"]:
        assert json.loads(doc["metadata"]["annotations"][provenance.SOURCE_ANNOTATION]) == {
            "branch": source.branch, "default_branch": "main", "protected": source.protected}
    # production's render is the same whoever deployed grey: its copy goes to the subset, never to grey's Service
    assert [h["mirror"]["subset"] for h in _by_kind(stages["hk"])["VirtualService"]["spec"]["http"] if "mirror" in h] \
        == ["mirror-target"] * 2
    assert not any(provenance.SOURCE_ANNOTATION in (d["metadata"].get("annotations") or {}) for d in stages["hk"])


def test_render_says_whether_grey_takes_production_s_mirror(tmp_path, conf, monkeypatch, capsys):
    path = write_values(tmp_path, grey_mirror_percent=20)
    for variables, said in (({"CI_COMMIT_BRANCH": "feature/x", "CI_DEFAULT_BRANCH": "main",
                              "CI_COMMIT_REF_PROTECTED": "false"},
                             "grey is built from branch feature/x (not the default branch main): production's requests "
                             "are not mirrored to it"),
                            ({"CI_COMMIT_BRANCH": "main", "CI_DEFAULT_BRANCH": "main", "CI_COMMIT_REF_PROTECTED": "true"},
                             "grey is built from the protected default branch main: hk mirrors 20% of its requests")):
        for name, value in variables.items():
            monkeypatch.setenv(name, value)
        assert render.main(["--all", "--values", str(path), "--conf", str(conf.folder), "--out",
                            str(tmp_path / "out")]) == 0
        assert said in capsys.readouterr().out


def test_grey_may_not_mirror_and_a_rule_without_subsets_is_refused(tmp_path, conf):
    path = write_values(tmp_path)
    rendered = render.render(path, stages=["grey", "hk"], conf=conf).stages
    grey = copy.deepcopy(rendered["grey"])
    next(d for d in grey if d["kind"] == "VirtualService")["spec"]["http"][0].update(
        mirror={"host": "text-direction.podserve-like-grey.svc.cluster.local"}, mirrorPercentage={"value": 10.0})
    problems = [str(p) for p in checks.check_stage(grey, load_values(path, conf), conf, conf.stages["grey"])]
    assert any("only a production stage mirrors" in p for p in problems), problems
    hk = copy.deepcopy(rendered["hk"])
    next(d for d in hk if d["kind"] == "DestinationRule")["spec"].pop("subsets")
    problems = [str(p) for p in checks.check_stage(hk, load_values(path, conf), conf, conf.stages["hk"])]
    assert any("must define the subsets stable, canary" in p for p in problems), problems
    # a grey whose subset would take every pod (any branch's) as the mirror's, or a mirror to grey's whole Service
    grey = copy.deepcopy(rendered["grey"])
    next(d for d in grey if d["kind"] == "DestinationRule")["spec"]["subsets"][0]["labels"] = {"stage": "grey"}
    problems = [str(p) for p in checks.check_stage(grey, load_values(path, conf), conf, conf.stages["grey"])]
    assert any("must define the one subset mirror-target" in p for p in problems), problems
    mirrored = render.render(write_values(tmp_path, name="m.py", grey_mirror_percent=10), stages=["hk"], conf=conf)
    hk = copy.deepcopy(mirrored.stages["hk"])
    for http in next(d for d in hk if d["kind"] == "VirtualService")["spec"]["http"]:
        (http.get("mirror") or {}).pop("subset", None)
    problems = [str(p) for p in checks.check_stage(hk, mirrored.values, conf, conf.stages["hk"])]
    assert any("only to grey's subset mirror-target" in p for p in problems), problems


def test_the_release_policy_carries_value_py_s_tighter_thresholds_only(tmp_path, conf):
    from podserve.tooling.conf import load_deploy_policy

    path = write_values(tmp_path, canary_steps=[25], verdict_error_margin=0.004, verdict_window_seconds=300)
    deployment = _by_kind(render.render(path, stages=["hk"], conf=conf).stages["hk"])["Rollout"]
    policy = release.read_release_policy(deployment)
    assert policy == {"canary_steps": [25], "verdict": {"error_margin": 0.004, "window_seconds": 300}}
    platform = load_deploy_policy(conf=conf).verdict
    merged = release.verdict_policy(platform, policy["verdict"])
    assert (merged.error_margin, merged.window_seconds, merged.latency_margin) == (0.004, 300, platform.latency_margin)
    text = deployment["metadata"]["annotations"][release.RELEASE_ANNOTATION]
    assert json.loads(text) == policy


def test_the_canary_s_pods_at_a_step_are_its_share_of_stable_s_rounded_up_at_least_one():
    assert release.canary_replicas(10, 2) == 1 and release.canary_replicas(50, 3) == 2 and release.canary_replicas(
        10, 0) == 1
