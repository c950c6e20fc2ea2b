"""The move of a production stage from its pre-issue-66 Deployment into Argo's Rollout (deploy/migration.py): which
live Deployment is migrated, the interim Rollout that runs its pods, and a rollback to a Deployment's revision kept in
the Rollout. Offline: render's hk objects and the Deployment render wrote before issue 66 (live.before_rollouts).
The move itself on a cluster: tests/deploy/test_rollout_live.py; under traffic through Envoy: the real node's
tests/pipeline/test_real_node_deploy.py."""

from __future__ import annotations

import copy

import pytest
import yaml

from live import before_rollouts
from podserve.tooling import render
from podserve.tooling.conf import load_conf
from podserve.tooling.deploy import drift, migration
from podserve.tooling.rollout import workload_of

REPO = __import__("pathlib").Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def hk(tmp_path_factory) -> tuple[list[dict], dict]:
    """hk's rendered objects, and the Deployment render wrote for it before issue 66 (its image another tag), as
    the API server would return it."""
    out = tmp_path_factory.mktemp("migration")
    rendered = render.render(REPO / "value.py", conf=load_conf(), image_tag="new")
    (out / "hk").mkdir()
    (out / "hk" / "all.yaml").write_text(yaml.safe_dump_all(rendered.stages["hk"]))
    before = before_rollouts(out / "hk", out / "before" / "hk")
    (deployment,) = [d for d in yaml.safe_load_all((before / "deployment.yaml").read_text())
                     if d["kind"] == "Deployment"]
    for container in deployment["spec"]["template"]["spec"]["containers"]:
        container["image"] = container["image"].rsplit(":", 1)[0] + ":old"
    deployment["spec"]["replicas"] = 3  # an autoscaler's count
    deployment["metadata"]["uid"] = "u-1"
    return list(rendered.stages["hk"]), deployment


def test_only_the_deployment_of_the_rollout_s_name_is_migrated(hk):
    objects, deployment = hk
    assert migration.legacy_deployment(deployment, objects) is deployment
    assert migration.legacy_deployment(None, objects) is None
    other = copy.deepcopy(deployment)
    other["metadata"]["name"] = "someone-else"
    assert migration.legacy_deployment(other, objects) is None
    grey = [d for d in objects if d["kind"] != "Rollout"] + [dict(deployment)]
    assert migration.legacy_deployment(deployment, grey) is None  # nothing runs in a Rollout: nothing to move into


def test_the_interim_rollout_runs_the_deployment_s_pods_unrouted_without_steps(hk):
    objects, deployment = hk
    moved = migration.interim(objects, deployment)
    rollout, rendered = workload_of(moved), workload_of(objects)
    assert [d["kind"] for d in moved] == [d["kind"] for d in objects]  # everything else as rendered
    assert all(a is b for a, b in zip(moved, objects) if a["kind"] != "Rollout")
    template = rollout["spec"]["template"]
    assert template["spec"] == deployment["spec"]["template"]["spec"]  # the old build's pods
    assert template["spec"]["containers"][0]["image"].endswith(":old")
    assert "track" not in template["metadata"]["labels"]  # Argo stamps it (stableMetadata)
    assert rollout["spec"]["replicas"] == 3 and rollout["spec"]["selector"] == rendered["spec"]["selector"]
    canary = rollout["spec"]["strategy"]["canary"]
    assert not {"trafficRouting", "steps", "scaleDownDelaySeconds"} & set(canary)
    assert canary["stableMetadata"] == rendered["spec"]["strategy"]["canary"]["stableMetadata"]
    assert "trafficRouting" in rendered["spec"]["strategy"]["canary"]  # the rendered objects are left as they were
    rule = next(d for d in moved if d["kind"] == "DestinationRule")
    # both workloads' pods are in the stable subset meanwhile: no subset selects a label the Deployment's lack
    assert all(not subset.get("labels") for subset in rule["spec"]["subsets"])


def test_a_rollback_to_a_deployment_s_revision_puts_its_template_into_the_live_rollout(hk):
    objects, deployment = hk
    before = [deployment] + [d for d in objects if d["kind"] not in ("Rollout", "AnalysisTemplate")]
    back = migration.into_rollout(before, objects)
    rollout = workload_of(back)
    assert rollout["kind"] == "Rollout" and [d["kind"] for d in back] == [d["kind"] for d in objects]
    assert rollout["spec"]["template"]["spec"]["containers"][0]["image"].endswith(":old")
    # routed and stepped as live: Argo takes the old build back as its own release
    assert rollout["spec"]["strategy"] == workload_of(objects)["spec"]["strategy"]
    assert rollout["spec"].get("replicas") == workload_of(objects)["spec"].get("replicas")  # the live count kept
    assert migration.into_rollout(objects, objects) == objects  # a Rollout's revision: unchanged
    assert migration.into_rollout(before, before) == before  # nothing live in a Rollout: unchanged


def test_the_old_pods_selector_leaves_the_rollout_s_pods_out(hk):
    _, deployment = hk
    selector = migration.old_pods_selector(deployment)
    assert selector.endswith(",!rollouts-pod-template-hash") and "track=stable" in selector


def test_the_same_build_s_interim_template_is_the_rendered_one_so_argo_replaces_no_pod_twice(hk):
    """The Deployment as the tool recorded it (its template as rendered, stamped with the tool's hash, `track` in it)
    gives the interim Rollout the rendered Rollout's very template when the build is the same: Argo's hash is the same,
    and the apply that follows the move changes no pod. The live Deployment's template (the API server's defaults in
    it) would not."""
    objects, _ = hk
    stamped = [drift.stamped(d) for d in objects]
    recorded = next(d for d in _before(stamped) if d["kind"] == "Deployment")
    recorded = drift.stamped(recorded)
    live = copy.deepcopy(recorded)
    live["spec"]["template"]["spec"]["dnsPolicy"] = "ClusterFirst"  # an API server default
    same = workload_of(migration.interim(stamped, live, recorded))
    assert same["spec"]["template"] == workload_of(stamped)["spec"]["template"]
    defaulted = workload_of(migration.interim(stamped, live))
    assert defaulted["spec"]["template"] != workload_of(stamped)["spec"]["template"]
    other = dict(recorded, metadata=dict(recorded["metadata"], name="another"))  # not this Deployment's record
    assert workload_of(migration.interim(stamped, live, other)) == defaulted


def _before(objects: list[dict]) -> list[dict]:
    """`objects` as render wrote them before issue 66 (live.before_rollouts, in memory)."""
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "hk").mkdir()
        (Path(tmp) / "hk" / "all.yaml").write_text(yaml.safe_dump_all(objects))
        folder = before_rollouts(Path(tmp) / "hk", Path(tmp) / "before" / "hk")
        return [d for f in folder.glob("*.yaml") for d in yaml.safe_load_all(f.read_text()) if d]
