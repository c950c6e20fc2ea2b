"""Many teams on one cluster, enforced by the real apiserver: RBAC and the chart's admission policies.

Real: kube-apiserver's RBAC and ValidatingAdmissionPolicy admission with the platform chart's
policies, installed by helm; kubectl and the deploy tool, each with the token of the account CI
would use (a TokenRequest for the chart's podserve-<team>-preview or -production account).
Simulated: the kubelet (kwok) and one mistake: a RoleBinding the platform team did not mean
to give, to show admission still refuses what RBAC wrongly lets through.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import yaml

from live import REPO, Live
from podserve.testbed.cluster.platform import REGION_LABEL
from podserve.testbed.processes import poll_until
from podserve.tooling import tenancy
from podserve.tooling.deploy.kube import CONFIGMAPS, EVENTS, MANAGED, PODS, Kind
from podserve.tooling.deploy.target import label_selector

KUBECTL = REPO / ".tools" / "bin" / "kubectl"
_NODES = Kind("v1", "nodes", namespaced=False)
_NAMESPACES = Kind("v1", "namespaces", namespaced=False)


@pytest.fixture(scope="module")
def teams(control_plane, tmp_path_factory) -> tuple[Live, Live]:
    """Team A (like) and team B (imo), each with its own accounts."""
    made = []
    for team in ("like", "imo"):
        tmp = tmp_path_factory.mktemp(f"tenancy-{team}")
        made.append(Live(control_plane, tmp, team))
    return made[0], made[1]


def kubectl(kubeconfig, *args, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([str(KUBECTL), "--kubeconfig", str(kubeconfig), *map(str, args)], input=stdin,
                          capture_output=True, text=True, timeout=60)


def dry_apply(kubeconfig, *docs: dict) -> subprocess.CompletedProcess:
    """`kubectl apply --server-side --dry-run=server` of `docs`: admission runs, nothing is stored."""
    return kubectl(kubeconfig, "apply", "--server-side", "--dry-run=server", "--field-manager", "tenancy-test",
                   "-f", "-", stdin=yaml.safe_dump_all(docs))


def rendered(live: Live, name: str, stage: str) -> dict[str, dict]:
    """The stage's objects as render writes them for `live`'s team, by kind."""
    folder = live.manifests(name, stage) / stage
    return {doc["kind"]: doc for path in sorted(folder.glob("*.yaml")) for doc in yaml.safe_load_all(path.read_text())
            if doc}


def routes(live: Live, namespace: str, name: str) -> list[str]:
    vs = live.admin.get(MANAGED["VirtualService"], namespace, name)
    return sorted(m["uri"].get("exact") or m["uri"].get("prefix") for r in vs["spec"]["http"] for m in r["match"])


def test_team_b_with_team_a_s_service_name_lands_apart_and_cannot_touch_a(teams):
    """It must show 1: B's deploy never changes A's objects nor captures A's route; B's kubectl cannot edit A's."""
    a, b = teams
    name = "tn-same"
    a_ns, b_ns = a.namespace("hk"), b.namespace("hk")
    try:
        first = a.deploy("apply", "--stage", "hk", "--values", a.values(name))
        assert first.returncode == 0, first.output  # A's production account deploys A (It must show 2, second half)
        before = a.versions(a_ns, "hk", name)
        assert f"Deployment/{name}" in before and f"VirtualService/{name}" in before
        second = b.deploy("apply", "--stage", "hk", "--values", b.values(name))
        print(f"team A then team B, one service name: exits {first.returncode}, {second.returncode} "
              f"after {first.seconds:.1f} s, {second.seconds:.1f} s")
        assert second.returncode == 0, second.output
        assert a.versions(a_ns, "hk", name) == before  # not one resourceVersion of A's moved
        assert routes(a, a_ns, name) == [f"/api/like/{name}", f"/api/like/{name}/"]
        assert routes(b, b_ns, name) == [f"/api/imo/{name}", f"/api/imo/{name}/"]
        project = a.admin.get(MANAGED["Deployment"], b_ns, name)["metadata"]["annotations"][tenancy.PROJECT_ANNOTATION]
        assert project == f"models/imo/{name}"  # stamped by render: B's project, in B's GitLab group
        assert a.admin.get(CONFIGMAPS, b_ns, f"{name}.deploy-history") is not None  # B's history is its own

        # B's production account, with kubectl, on A's Deployment: RBAC refuses it.
        refused = kubectl(b.kubeconfig("production"), "-n", a_ns, "annotate", "deployment", name, "hijacked-by=imo")
        assert refused.returncode != 0
        assert "forbidden" in refused.stderr and "podserve-imo-production" in refused.stderr, refused.stderr
        # Even where RBAC is wrongly widened (simulated: a stray RoleBinding), admission refuses, naming the policy.
        stray = {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
                 "metadata": {"name": "stray", "namespace": a_ns},
                 "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "podserve-deployer"},
                 "subjects": [{"kind": "ServiceAccount", "name": "podserve-imo-production",
                               "namespace": "podserve-system"}]}
        admin = a.plane.kubeconfig
        assert kubectl(admin, "apply", "--server-side", "-f", "-", stdin=yaml.safe_dump(stray)).returncode == 0
        try:
            widened = kubectl(b.kubeconfig("production"), "-n", a_ns, "annotate", "deployment", name, "hijacked-by=imo")
            assert widened.returncode != 0
            assert "ValidatingAdmissionPolicy 'podserve-owner'" in widened.stderr, widened.stderr
            assert f"only system:serviceaccount:podserve-system:podserve-like-production deploys there" \
                in widened.stderr
        finally:
            kubectl(admin, "-n", a_ns, "delete", "rolebinding", "stray")
        assert a.versions(a_ns, "hk", name) == before
    finally:
        a.remove(a_ns, "hk", name)
        b.remove(b_ns, "hk", name)


def test_the_preview_account_can_touch_nothing_in_production(teams):
    """It must show 2: grey's account gets 403 in production, and the policy's refusal for production's paths."""
    a, _ = teams
    preview, name = a.kubeconfig("preview"), "tn-grey"
    objects = rendered(a, name, "hk")
    refused = dry_apply(preview, objects["Deployment"])
    assert refused.returncode != 0 and "forbidden" in refused.stderr, refused.stderr
    assert 'cannot patch resource "deployments"' in refused.stderr and f'namespace "{a.namespace("hk")}"' in \
        refused.stderr
    route = dry_apply(preview, objects["VirtualService"])  # production's own route, on production's host
    assert route.returncode != 0 and 'cannot patch resource "virtualservices"' in route.stderr, route.stderr
    listing = kubectl(preview, "-n", a.namespace("hk"), "get", "deployments")
    assert listing.returncode != 0 and "forbidden" in listing.stderr
    # The deploy tool with grey's credential against production: refused before anything changed (exit 2).
    run = a.deploy("apply", "--stage", "hk", "--values", a.values(name), KUBECONFIG=str(preview))
    assert run.returncode == 2 and "forbidden" in run.stderr, run.output
    assert a.objects(a.namespace("hk"), "hk", name) == []

    # A VirtualService in grey's own namespace claiming production's path on production's host.
    grey = rendered(a, name, "grey")["VirtualService"]
    grey["spec"]["http"][0]["match"] = [{"uri": {"prefix": "/api/like/"}}]
    claimed = dry_apply(preview, grey)
    assert claimed.returncode != 0
    assert "ValidatingAdmissionPolicy 'podserve-routes'" in claimed.stderr, claimed.stderr
    assert f"routes in {a.namespace('grey')} must stay under /grey/like/" in claimed.stderr
    # ... or another host, or a catch-all route.
    elsewhere = rendered(a, name, "grey")["VirtualService"]
    elsewhere["spec"]["hosts"] = ["infer-eu.example.com"]
    assert "must be among infer-hk.example.com" in dry_apply(preview, elsewhere).stderr
    catch_all = rendered(a, name, "grey")["VirtualService"]
    del catch_all["spec"]["http"][0]["match"]
    assert "every HTTP route must match a uri exactly or by prefix" in dry_apply(preview, catch_all).stderr
    # Grey's own objects, as render writes them, are admitted.
    ours = dry_apply(preview, *rendered(a, name, "grey").values())
    assert ours.returncode == 0, ours.stderr


def _privileged(spec: dict) -> None:
    context = spec["containers"][0]["securityContext"]
    context.pop("allowPrivilegeEscalation")  # the API itself refuses privileged with escalation false
    context["privileged"] = True


def _pod(deployment: dict, name: str) -> dict:
    template = deployment["spec"]["template"]
    return {"apiVersion": "v1", "kind": "Pod", "spec": template["spec"],
            "metadata": {"name": name, "namespace": deployment["metadata"]["namespace"],
                         "labels": template["metadata"]["labels"]}}


def _container(objects: dict, kind: str = "Deployment") -> dict:
    spec = objects[kind]["spec"]
    return (spec if kind == "Pod" else spec["template"]["spec"])["containers"][0]


#: (what, the kind changed, the change, the policy that must refuse it, its message)
POLICY_CASES = [
    ("privileged pod", "Pod", lambda o: _privileged(o["Pod"]["spec"]),
     "podserve-privileged", "privileged containers are not allowed"),
    ("privileged template", "Deployment", lambda o: _privileged(o["Deployment"]["spec"]["template"]["spec"]),
     "podserve-privileged", "privileged containers are not allowed"),
    ("host port outside the range", "Deployment", lambda o: _container(o)["ports"][0].update(hostPort=8080),
     "podserve-host-ports", "a hostPort is allowed only on the http port, from 20000 to 29999"),
    ("root", "Deployment", lambda o: _container(o)["securityContext"].update(runAsNonRoot=False),
     "podserve-restricted", "must run as non-root"),
    ("too much memory", "Deployment", lambda o: _container(o)["resources"]["limits"].update(memory="1Ti"),
     "podserve-resources", "may ask at most cpu 62 and memory 240Gi"),
    ("LoadBalancer Service", "Service", lambda o: o["Service"]["spec"].update(type="LoadBalancer"),
     "podserve-service-type", "Services here are ClusterIP only"),
    ("externalIPs", "Service", lambda o: o["Service"]["spec"].update(externalIPs=["203.0.113.9"]),
     "podserve-service-type", "Services here may not set externalIPs"),
    ("no owner labels", "Service", lambda o: o["Service"]["metadata"].update(labels={"service": "tn-policy"}),
     "podserve-owner", "must carry the owner label team: like"),
    ("no project", "Deployment", lambda o: o["Deployment"]["metadata"].pop("annotations"),
     "podserve-owner", "must carry the annotation podserve.io/project naming a GitLab project under models/like/"),
    ("another team's project", "VirtualService",
     lambda o: o["VirtualService"]["metadata"]["annotations"].update({tenancy.PROJECT_ANNOTATION: "models/imo/x"}),
     "podserve-owner", "naming a GitLab project under models/like/ (render stamps CI_PROJECT_PATH)"),
]


@pytest.mark.parametrize("what, kind, change, policy, says", POLICY_CASES, ids=[case[0] for case in POLICY_CASES])
def test_the_admission_policies_refuse_each_rule_and_admit_ours(teams, control_plane, what, kind, change, policy,
                                                                 says):
    """It must show 3, in production's namespace (Pod Security "privileged" there, for Kong's host ports)."""
    a, _ = teams
    objects = rendered(a, "tn-policy", "hk")
    objects["Pod"] = _pod(objects["Deployment"], "tn-policy-pod")
    admin = control_plane.kubeconfig  # pods come from controllers; the admin stands in for them
    ours = dry_apply(a.kubeconfig("production"), *(o for k, o in objects.items() if k != "Pod"))
    assert ours.returncode == 0, ours.stderr
    assert dry_apply(admin, objects["Pod"]).returncode == 0
    change(objects)
    refused = dry_apply(admin if kind == "Pod" else a.kubeconfig("production"), objects[kind])
    assert refused.returncode != 0, f"{what} was admitted"
    assert f"ValidatingAdmissionPolicy '{policy}'" in refused.stderr and says in refused.stderr, refused.stderr


def gpu_values(live: Live, name: str) -> Path:
    """A one-GPU service of `live`'s team: one production replica in hk, the grey copy's one."""
    path = live.values(name)
    text = path.read_text().replace("gpu_num = 0", "gpu_num = 1").replace("gpu_memory = 0", "gpu_memory = 4")
    path.write_text(text.replace("hk_replicas = 2", "hk_replicas = 1"))
    return path


def free_gpus(live: Live, pool: dict, resource: str) -> int:
    """GPUs of region hk's GPU pool not held by a pod that is still there."""
    nodes = live.admin.list(_NODES, None, label_selector({**pool, REGION_LABEL: "hk"}))["items"]
    total = sum(int(n["status"]["allocatable"].get(resource, 0)) for n in nodes)
    names = {n["metadata"]["name"] for n in nodes}
    held = sum(int((c.get("resources") or {}).get("limits", {}).get(resource, 0))
               for p in live.admin.list(PODS)["items"] if p["spec"].get("nodeName") in names
               and p["status"].get("phase") not in ("Succeeded", "Failed") for c in p["spec"]["containers"])
    return total - held


def test_a_production_rollout_on_a_full_gpu_pool_preempts_grey_and_completes(teams):
    """It must show 4: hk's GPU pool full, a grey copy holding one GPU; production's surge pod preempts it."""
    a, _ = teams
    conf, name = a.conf, "tn-gpu"
    region = conf.regions["hk"]
    pool, resource = region.node_pools.gpu, region.gpu.resource
    values = gpu_values(a, name)
    filler_ns = "tn-gpu-filler"  # no team label: the other tenants' production pods, simulated by the admin
    try:
        first = a.deploy("apply", "--stage", "hk", "--values", values, "--image-tag", "v1")
        assert first.returncode == 0, first.output
        grey = a.deploy("apply", "--stage", "grey", "--values", values, "--image-tag", "v1")
        assert grey.returncode == 0, grey.output
        spare = free_gpus(a, pool.node_selector, resource)
        a.admin.request("POST", _NAMESPACES.path(), body={"metadata": {"name": filler_ns}})
        filler = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "filler", "namespace": filler_ns},
                  "spec": {"replicas": spare, "selector": {"matchLabels": {"app": "filler"}},
                           "template": {"metadata": {"labels": {"app": "filler"}}, "spec": {
                               "priorityClassName": tenancy.PRIORITY_CLASSES["production"]["name"],
                               "nodeSelector": pool.node_selector, "tolerations": pool.tolerations,
                               "containers": [{"name": "c", "image": "filler", "resources": {
                                   "requests": {"cpu": "100m", resource: "1"},
                                   "limits": {"cpu": "100m", resource: "1"}}}]}}}}
        a.admin.request("POST", MANAGED["Deployment"].path(filler_ns), body=filler)
        poll_until(lambda: free_gpus(a, pool.node_selector, resource) == 0, "hk's GPU pool full", 60, every=0.5)
        grey_pods = a.items(PODS, a.namespace("grey"), f"service={name}")
        assert len(grey_pods) == 1 and grey_pods[0]["spec"].get("nodeName")  # grey holds one GPU

        rollout = a.deploy("apply", "--stage", "hk", "--values", values, "--image-tag", "v2")
        print(f"production rollout on a full GPU pool: exit {rollout.returncode} after {rollout.seconds:.1f} s")
        assert rollout.returncode == 0, rollout.output
        assert rollout.seconds < 60  # never a rollback after minutes
        deployment = a.admin.get(MANAGED["Deployment"], a.namespace("hk"), name)
        assert deployment["spec"]["template"]["spec"]["containers"][0]["image"].endswith(":v2")
        assert deployment["status"]["readyReplicas"] == 1
        preempted = [e for e in a.items(EVENTS, a.namespace("grey")) if e.get("reason") == "Preempted"]
        assert preempted and grey_pods[0]["metadata"]["name"] in {e["involvedObject"]["name"] for e in preempted}
    finally:
        a.admin.request("DELETE", _NAMESPACES.path(None, filler_ns))
        a.remove(a.namespace("hk"), "hk", name)
        a.remove(a.namespace("grey"), "grey", name)


def test_pods_a_quota_has_no_room_for_are_diagnosed_naming_the_quota(control_plane, tmp_path):
    """Team hello's ab asks 5 GPUs where its namespace's quota (conf/platform.yaml preview_gpus: 4) allows 4."""
    live, name = Live(control_plane, tmp_path, "hello"), "tn-quota"
    values = gpu_values(live, name)
    values.write_text(values.read_text().replace("ab_replicas = 1", "ab_replicas = 5"))
    namespace = live.namespace("ab")
    try:
        run = live.deploy("apply", "--stage", "ab", "--values", values)
        print(f"ab over its GPU quota: exit {run.returncode} after {run.seconds:.1f} s")
        assert run.returncode == 1, run.output
        assert "FAILED: The cluster refuses to create the pods: " in run.stdout
        assert f"the ResourceQuota {namespace}/podserve-quota is full" in run.stdout
        assert "exceeded quota: podserve-quota" in run.stdout and "requests.nvidia.com/gpu" in run.stdout
        assert run.seconds < 60  # certain at once: not waited out, not blamed on init_delay_second
        assert "init_delay_second" not in run.stdout.split("FAILED:")[1].split("\n")[0]
    finally:
        live.remove(namespace, "ab", name)


def test_deploys_name_the_image_by_digest_and_a_rollback_re_applies_the_tested_one(teams, tmp_path):
    """It must show 5: with BuildKit's metadata the Deployment names image@sha256 (simulated: the digests are made up,
    kwok pulls nothing); the tag the manifests carry is replaced, and rollback restores the first digest."""
    a, _ = teams
    name, digests = "tn-digest", [f"sha256:{c * 64}" for c in "ab"]
    files = []
    for index, value in enumerate(digests):
        files.append(tmp_path / f"metadata-{index}.json")
        files[-1].write_text(json.dumps({"containerimage.digest": value, "image.name": "ignored"}))
    try:
        for tag, metadata in zip(("v1", "v2"), files):
            run = a.deploy("apply", "--stage", "grey", "--values", a.values(name), "--image-tag", tag,
                           "--image-metadata", metadata)
            assert run.returncode == 0, run.output
        image = lambda: a.admin.get(MANAGED["Deployment"], a.namespace("grey"), name)[  # noqa: E731
            "spec"]["template"]["spec"]["containers"][0]["image"]
        assert image() == f"registry.hk.example.com/like/{name}@{digests[1]}"
        back = a.deploy("rollback", "--stage", "grey", "--service", name, "--team", "like")
        assert back.returncode == 0, back.output
        assert image() == f"registry.hk.example.com/like/{name}@{digests[0]}"
        bad = tmp_path / "bad.json"
        bad.write_text("{}")
        refused = a.deploy("apply", "--stage", "grey", "--values", a.values(name), "--image-metadata", bad)
        assert refused.returncode == 2 and "has no containerimage.digest" in refused.stderr
    finally:
        a.deploy("delete", "--stage", "grey", "--service", name, "--team", "like")
