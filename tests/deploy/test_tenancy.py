"""Many teams on one cluster, enforced by the real apiserver: RBAC and the chart's admission policies.

Real: kube-apiserver's RBAC and ValidatingAdmissionPolicy admission with the platform chart's
policies, installed by helm; kubectl and the deploy tool, each with the token of the account CI
would use (a TokenRequest for the chart's podserve-<team>-preview or -production account).
Simulated: the kubelet (kwok) and one mistake: a RoleBinding the platform team did not mean
to give, to show admission still refuses what RBAC wrongly lets through.
"""

from __future__ import annotations

import subprocess

import pytest
import yaml

from live import REPO, Live
from podserve.tooling.deploy.kube import CONFIGMAPS, MANAGED

KUBECTL = REPO / ".tools" / "bin" / "kubectl"


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
    assert f"routes in {a.namespace('grey')} must stay under /grey/" in claimed.stderr
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


@pytest.mark.parametrize("what, change, policy, says", [
    ("privileged pod", lambda o: _privileged(o["Pod"]["spec"]),
     "podserve-privileged", "privileged containers are not allowed"),
    ("privileged template", lambda o: _privileged(o["Deployment"]["spec"]["template"]["spec"]),
     "podserve-privileged", "privileged containers are not allowed"),
    ("host port outside the range", lambda o: o["Deployment"]["spec"]["template"]["spec"]["containers"][0]["ports"][0]
     .update(hostPort=8080), "podserve-host-ports", "a hostPort is allowed only on the http port, from 20000 to 29999"),
    ("root", lambda o: o["Deployment"]["spec"]["template"]["spec"]["containers"][0]["securityContext"]
     .update(runAsNonRoot=False), "podserve-restricted", "must run as non-root"),
    ("too much memory", lambda o: o["Deployment"]["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]
     .update(memory="1Ti"), "podserve-resources", "may ask at most cpu 62 and memory 240Gi"),
    ("LoadBalancer Service", lambda o: o["Service"]["spec"].update(type="LoadBalancer"),
     "podserve-service-type", "Services here are ClusterIP only"),
    ("externalIPs", lambda o: o["Service"]["spec"].update(externalIPs=["203.0.113.9"]),
     "podserve-service-type", "Services here may not set externalIPs"),
    ("no owner labels", lambda o: o["Service"]["metadata"].update(labels={"service": "tn-policy", "stage": "hk"}),
     "podserve-owner", "must carry the owner label team: like"),
], ids=lambda v: v if isinstance(v, str) and " " in v else None)
def test_the_admission_policies_refuse_each_rule_and_admit_ours(teams, control_plane, what, change, policy, says):
    """It must show 3, in production's namespace (Pod Security "privileged" there, for Kong's host ports)."""
    a, _ = teams
    objects = rendered(a, "tn-policy", "hk")
    objects["Pod"] = _pod(objects["Deployment"], "tn-policy-pod")
    admin = control_plane.kubeconfig  # pods come from controllers; the admin stands in for them
    ours = dry_apply(a.kubeconfig("production"), *(o for k, o in objects.items() if k != "Pod"))
    assert ours.returncode == 0, ours.stderr
    assert dry_apply(admin, objects["Pod"]).returncode == 0
    change(objects)
    kind = "Pod" if what == "privileged pod" else "Service" if "Service" in what or what in (
        "externalIPs", "no owner labels") else "Deployment"
    refused = dry_apply(admin if kind == "Pod" else a.kubeconfig("production"), objects[kind])
    assert refused.returncode != 0, f"{what} was admitted"
    assert f"ValidatingAdmissionPolicy '{policy}'" in refused.stderr and says in refused.stderr, refused.stderr
