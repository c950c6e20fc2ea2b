"""Many teams on one cluster, enforced by the real apiserver: RBAC and the chart's admission policies.

Real: kube-apiserver's RBAC and ValidatingAdmissionPolicy admission with the platform chart's
policies, installed by helm; kubectl and the deploy tool, each with the token of the account CI
would use (a TokenRequest for the chart's podserve-<team>-preview or -production account).
Simulated: the kubelet (kwok) and one mistake: a RoleBinding the platform team did not mean
to give, to show admission still refuses what RBAC wrongly lets through.
"""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from live import REPO, Live
from podserve.testbed.cluster.platform import REGION_LABEL
from podserve.testbed.processes import poll_until
from podserve.tooling import quantity, release, tenancy
from podserve.tooling.conf import load_conf
from podserve.tooling.deploy import argo, drift
from podserve.tooling.deploy.kube import CONFIGMAPS, EVENTS, MANAGED, PODS, Kind
from podserve.tooling.deploy.target import label_selector
from podserve.tooling.rollout import workload_of

KUBECTL = REPO / ".tools" / "bin" / "kubectl"
_NODES = Kind("v1", "nodes", namespaced=False)
_NAMESPACES = Kind("v1", "namespaces", namespaced=False)


@pytest.fixture(scope="module")
def teams(control_plane, rollouts_controller, tmp_path_factory) -> tuple[Live, Live]:
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


_RENDERED: dict[tuple, dict[str, dict]] = {}


def rendered(live: Live, name: str, stage: str, max_replicas: int = 0, extra: str = "") -> dict[str, dict]:
    """The stage's objects as render writes them for `live`'s team, by kind (`extra`: more value.py lines).

    Rendered once per module for the same arguments (the admission cases change copies of one stage's objects)."""
    key = (live.team, name, stage, max_replicas, extra)
    if key not in _RENDERED:
        folder = live.manifests(name, stage, max_replicas=max_replicas, extra=extra) / stage
        _RENDERED[key] = {doc["kind"]: doc for path in sorted(folder.glob("*.yaml"))
                          for doc in yaml.safe_load_all(path.read_text()) if doc}
    return copy.deepcopy(_RENDERED[key])


def routes(live: Live, namespace: str, name: str) -> list[str]:
    """The paths a live VirtualService routes, each once."""
    vs = live.admin.get(MANAGED["VirtualService"], namespace, name)
    return sorted({m["uri"].get("exact") or m["uri"].get("prefix") for r in vs["spec"]["http"] for m in r["match"]})


def test_team_b_with_team_a_s_service_name_lands_apart_and_cannot_touch_a(teams):
    """It must show 1: B's deploy never changes A's objects nor captures A's route; B's kubectl cannot edit A's."""
    a, b = teams
    name = "tn-same"
    a_ns, b_ns = a.namespace("hk"), b.namespace("hk")
    try:
        first = a.deploy("apply", "--stage", "hk", "--values", a.values(name))
        assert first.returncode == 0, first.output  # A's production account deploys A (It must show 2, second half)
        before = a.versions(a_ns, "hk", name)
        assert f"Rollout/{name}" in before and f"VirtualService/{name}" in before
        second = b.deploy("apply", "--stage", "hk", "--values", b.values(name))
        print(f"team A then team B, one service name: exits {first.returncode}, {second.returncode} "
              f"after {first.seconds:.1f} s, {second.seconds:.1f} s")
        assert second.returncode == 0, second.output
        assert a.versions(a_ns, "hk", name) == before  # not one resourceVersion of A's moved
        assert routes(a, a_ns, name) == [f"/api/like/{name}", f"/api/like/{name}/"]
        assert routes(b, b_ns, name) == [f"/api/imo/{name}", f"/api/imo/{name}/"]
        project = a.admin.get(MANAGED["Rollout"], b_ns, name)["metadata"]["annotations"][tenancy.PROJECT_ANNOTATION]
        assert project == f"models/imo/{name}"  # stamped by render: B's project, in B's GitLab group
        assert a.admin.get(CONFIGMAPS, b_ns, f"{name}.deploy-history") is not None  # B's history is its own

        # B's production account, with kubectl, on A's Rollout: RBAC refuses it.
        refused = kubectl(b.kubeconfig("production"), "-n", a_ns, "annotate", "rollout", name, "hijacked-by=imo")
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
            widened = kubectl(b.kubeconfig("production"), "-n", a_ns, "annotate", "rollout", name, "hijacked-by=imo")
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
    refused = dry_apply(preview, objects["Rollout"])
    assert refused.returncode != 0 and "forbidden" in refused.stderr, refused.stderr
    assert 'cannot patch resource "rollouts"' in refused.stderr and f'namespace "{a.namespace("hk")}"' in \
        refused.stderr
    route = dry_apply(preview, objects["VirtualService"])  # production's own route, on production's host
    assert route.returncode != 0 and 'cannot patch resource "virtualservices"' in route.stderr, route.stderr
    listing = kubectl(preview, "-n", a.namespace("hk"), "get", "rollouts")
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


def _container(objects: dict, kind: str | None = None) -> dict:
    """The server container of the Pod (kind "Pod") or of the stage's workload (its Deployment or Rollout)."""
    spec = objects["Pod"]["spec"] if kind == "Pod" else workload_of(objects.values())["spec"]["template"]["spec"]
    return spec["containers"][0]


#: (what, the kind changed, the change, the policy that must refuse it, its message)
POLICY_CASES = [
    ("privileged pod", "Pod", lambda o: _privileged(o["Pod"]["spec"]),
     "podserve-privileged", "privileged containers are not allowed"),
    ("privileged template", "Rollout", lambda o: _privileged(o["Rollout"]["spec"]["template"]["spec"]),
     "podserve-privileged", "privileged containers are not allowed"),
    ("host port outside the range", "Rollout", lambda o: _container(o)["ports"][0].update(hostPort=8080),
     "podserve-host-ports", "allowed only on the http port, within the own range of team like, from 20000 to 22499"),
    ("root", "Rollout", lambda o: _container(o)["securityContext"].update(runAsNonRoot=False),
     "podserve-restricted", "must run as non-root"),
    ("too much memory", "Rollout", lambda o: _container(o)["resources"]["limits"].update(memory="1Ti"),
     "podserve-resources", "may ask at most cpu 62 and memory 240Gi"),
    ("LoadBalancer Service", "Service", lambda o: o["Service"]["spec"].update(type="LoadBalancer"),
     "podserve-service-type", "Services here are ClusterIP only"),
    ("externalIPs", "Service", lambda o: o["Service"]["spec"].update(externalIPs=["203.0.113.9"]),
     "podserve-service-type", "Services here may not set externalIPs"),
    ("no owner labels", "Service", lambda o: o["Service"]["metadata"].update(labels={"service": "tn-policy"}),
     "podserve-owner", "must carry the owner label team: like"),
    ("no project", "Rollout", lambda o: o["Rollout"]["metadata"].pop("annotations"),
     "podserve-owner", "must carry the annotation podserve.io/project naming a GitLab project under models/like/"),
    ("another team's project", "VirtualService",
     lambda o: o["VirtualService"]["metadata"]["annotations"].update({tenancy.PROJECT_ANNOTATION: "models/imo/x"}),
     "podserve-owner", "naming a GitLab project under models/like/ (render stamps CI_PROJECT_PATH)"),
    ("runAsUser 0", "Rollout", lambda o: _pod_context(o).update(runAsUser=0),
     "podserve-restricted", "runAsUser: 0 (root) is not allowed"),
    ("a capability added", "Rollout",
     lambda o: _container(o)["securityContext"]["capabilities"].update(add=["SYS_ADMIN"]),
     "podserve-restricted", "drop ALL capabilities and add none but NET_BIND_SERVICE"),
    ("seccomp Unconfined", "Rollout", lambda o: _pod_context(o).update(seccompProfile={"type": "Unconfined"}),
     "podserve-restricted", "the seccomp profile must be RuntimeDefault or Localhost"),
    ("an SELinux type", "Rollout", lambda o: _pod_context(o).update(seLinuxOptions={"type": "spc_t"}),
     "podserve-restricted", "seLinuxOptions may set only the type container_t"),
    ("AppArmor Unconfined", "Rollout", lambda o: _pod_context(o).update(appArmorProfile={"type": "Unconfined"}),
     "podserve-restricted", "the AppArmor profile must be RuntimeDefault or Localhost"),
    ("an unsafe sysctl", "Rollout",
     lambda o: _pod_context(o).update(sysctls=[{"name": "kernel.msgmax", "value": "1"}]),
     "podserve-restricted", "only the safe sysctls are allowed"),
    ("a ServiceAccount token", "Rollout",
     lambda o: o["Rollout"]["spec"]["template"]["spec"].update(automountServiceAccountToken=True),
     "podserve-restricted", "pods must set automountServiceAccountToken: false"),
    ("a hostPath volume", "Rollout",
     lambda o: o["Rollout"]["spec"]["template"]["spec"]["volumes"].append({"name": "h", "hostPath": {"path": "/"}}),
     "podserve-restricted", "no hostPath"),
    ("a hostProcess container", "Rollout",  # the API demands hostNetwork with it: either policy may answer first
     lambda o: _pod_context(o).update(windowsOptions={"hostProcess": True})
     or o["Rollout"]["spec"]["template"]["spec"].update(hostNetwork=True),
     ("podserve-restricted", "podserve-privileged"),
     ("Windows hostProcess containers are not allowed", "the host's network, PID and IPC namespaces are not allowed")),
    ("no cpu limit", "Rollout", lambda o: _container(o)["resources"]["limits"].pop("cpu"),
     "podserve-resources", "every container must set cpu and memory limits"),
    ("the brokers' address of the service's choosing", "Rollout",
     lambda o: _container(o)["env"].append({"name": "PODSERVE_KAFKA_BOOTSTRAP", "value": "203.0.113.9:9092"}),
     "podserve-brokers", "PODSERVE_KAFKA_BOOTSTRAP must come from the ConfigMap podserve-kafka"),
    ("a route bound to the mesh", "VirtualService", lambda o: o["VirtualService"]["spec"].update(gateways=["mesh"]),
     "podserve-routes", "binds only the Gateway of its stage, istio-ingress/podserve"),
    ("a pod template of another team", "Rollout",
     lambda o: o["Rollout"]["spec"]["template"]["metadata"]["labels"].update(team="imo"),
     "podserve-workload-labels", "the pod template must carry the label team: like, the team of namespace"),
    ("a pod template with a pod-template hash", "Rollout",
     lambda o: o["Rollout"]["spec"]["template"]["metadata"]["labels"].update(
         {"rollouts-pod-template-hash": "5d8f7c"}),
     "podserve-workload-labels", "may not set rollouts-pod-template-hash or pod-template-hash"),
    ("a PodMonitor relabelling track", "PodMonitor",
     lambda o: o["PodMonitor"]["spec"]["podMetricsEndpoints"][0].update(
         relabelings=[{"targetLabel": "track", "replacement": "stable"}]),
     "podserve-podmonitors", "relabelling may not write (nor map, keep or drop) the namespace, pod, service"),
    ("a PodMonitor relabelling namespace", "PodMonitor",
     lambda o: o["PodMonitor"]["spec"]["podMetricsEndpoints"][0].update(
         relabelings=[{"targetLabel": "namespace", "replacement": "podserve-imo"}]),
     "podserve-podmonitors", "relabelling may not write (nor map, keep or drop) the namespace, pod, service"),
    ("an HPA past 64", "HorizontalPodAutoscaler",
     lambda o: o.update(HorizontalPodAutoscaler=_hpa(o["ScaledObject"], 65)),
     "podserve-autoscalers", "an HPA may scale to at most 64 replicas"),
    ("a ScaledObject past 64", "ScaledObject",
     lambda o: o["ScaledObject"]["spec"].update(maxReplicaCount=65),
     "podserve-autoscalers", "at most 64 (conf/platform.yaml limits.max_replicas)"),
    ("a fallback past 64", "ScaledObject",
     lambda o: o["ScaledObject"]["spec"].update(fallback={"failureThreshold": 3, "replicas": 65}),
     "podserve-autoscalers", "and its fallback replicas no more"),
    ("a scaler on another team's queue", "ScaledObject",
     lambda o: _query(o, _own_query(o).replace(_namespace(o), "podserve-imo")),
     "podserve-autoscalers", "must sum one of the platform scaling series"),
    ("a scaler on every namespace", "ScaledObject",
     lambda o: _query(o, _own_query(o).replace(f'namespace="{_namespace(o)}"', 'namespace=~"podserve-.+"')),
     "podserve-autoscalers", "must sum one of the platform scaling series"),
    ("a scaler adding another namespace's series", "ScaledObject",
     lambda o: _query(o, _own_query(o) + ' or sum(podserve_pod:queue_backlog:mean1m{namespace="podserve-imo"})'),
     "podserve-autoscalers", "must sum one of the platform scaling series"),
    ("a scaler on a raw series", "ScaledObject",
     lambda o: _query(o, f'sum(podserve_requests_total{{namespace="{_namespace(o)}"}})'),
     "podserve-autoscalers", "must sum one of the platform scaling series"),
    ("a scaler at another Prometheus", "ScaledObject",
     lambda o: o["ScaledObject"]["spec"]["triggers"][0]["metadata"].update(serverAddress="http://203.0.113.9:9090"),
     "podserve-autoscalers", "may query only the Prometheus of the region"),
    ("a scaler with headers of its own", "ScaledObject",
     lambda o: o["ScaledObject"]["spec"]["triggers"][0]["metadata"].update(customHeaders="X-Scope-OrgID=imo"),
     "podserve-autoscalers", "may query only the Prometheus of the region"),
    ("a scaler with credentials", "ScaledObject",
     lambda o: o["ScaledObject"]["spec"]["triggers"][0].update(authenticationRef={"name": "stolen"}),
     "podserve-autoscalers", "may query only the Prometheus of the region"),
    ("a scaler of another kind", "ScaledObject",
     lambda o: o["ScaledObject"]["spec"]["triggers"].append(
         {"type": "cron", "metadata": {"timezone": "UTC", "start": "0 * * * *", "end": "59 * * * *",
                                       "desiredReplicas": "64"}}),
     "podserve-autoscalers", "may be kafka (the platform's brokers) or prometheus"),
]


def _hpa(scaled: dict, most: int) -> dict:
    """An HPA of a team's own on the ScaledObject's target (KEDA makes one; a team may not go past the limit either).

    It carries the owner's labels and annotations so that only the replica limit refuses it: the apiserver names one
    denying policy, in no fixed order.
    """
    return {"apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler",
            "metadata": {"name": "own-hpa", "namespace": scaled["metadata"]["namespace"],
                         "labels": dict(scaled["metadata"].get("labels", {})),
                         "annotations": dict(scaled["metadata"].get("annotations", {}))},
            "spec": {"scaleTargetRef": scaled["spec"]["scaleTargetRef"], "minReplicas": 1, "maxReplicas": most}}


def _namespace(objects: dict) -> str:
    return objects["ScaledObject"]["metadata"]["namespace"]


def _own_query(objects: dict) -> str:
    return objects["ScaledObject"]["spec"]["triggers"][0]["metadata"]["query"]


def _query(objects: dict, query: str) -> None:
    objects["ScaledObject"]["spec"]["triggers"][0]["metadata"]["query"] = query


def _pod_context(objects: dict) -> dict:
    return workload_of(objects.values())["spec"]["template"]["spec"]["securityContext"]


_ADMITTED: set[str] = set()


@pytest.mark.parametrize("what, kind, change, policy, says", POLICY_CASES, ids=[case[0] for case in POLICY_CASES])
def test_the_admission_policies_refuse_each_rule_and_admit_ours(teams, control_plane, what, kind, change, policy,
                                                                 says):
    """It must show 3, in production's namespace (Pod Security "privileged" there, for Kong's host ports)."""
    a, _ = teams
    objects = rendered(a, "tn-policy", "hk", max_replicas=4 if kind in ("HorizontalPodAutoscaler", "ScaledObject") else 0)
    objects["Pod"] = _pod(objects["Rollout"], "tn-policy-pod")
    admin = control_plane.kubeconfig  # pods come from controllers; the admin stands in for them
    if kind not in _ADMITTED:  # ours, unchanged, is the same set for every case of a kind: admitted once is enough
        ours = dry_apply(a.kubeconfig("production"), *(o for k, o in objects.items() if k != "Pod"))
        assert ours.returncode == 0, ours.stderr
        pod = dry_apply(admin, objects["Pod"])
        assert pod.returncode == 0, pod.stderr
        _ADMITTED.add(kind)
    change(objects)
    refused = dry_apply(admin if kind == "Pod" else a.kubeconfig("production"), objects[kind])
    assert refused.returncode != 0, f"{what} was admitted"
    pairs = zip(policy, says) if isinstance(policy, tuple) else [(policy, says)]  # several rules refuse some objects
    assert any(f"ValidatingAdmissionPolicy '{p}'" in refused.stderr and s in refused.stderr for p, s in pairs), \
        refused.stderr


OFFLINE = """service_name = {name!r}
username = "imo"
cpu = 1
memory = "1Gi"
gpu_num = 0
gpu_memory = 0
replicas = 1
max_replicas = 2
init_delay_second = 10
mode = "offline"
source_topic = "imo.lines"
sink_topic = "imo.directions"
dead_letter_topic = "imo.lines-dead"
"""


def offline_rendered(live: Live, name: str, stage: str) -> dict[str, dict]:
    """An offline service of `live`'s team (imo) rendered for `stage` by render's CLI, by kind."""
    path = live.tmp / name / "value.py"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(OFFLINE.format(name=name))
    out = live.tmp / name / "manifests"
    done = subprocess.run([sys.executable, "-m", "podserve.tooling.render", "--stage", stage, "--values", str(path),
                           "--out", str(out)], cwd=REPO, capture_output=True, text=True, timeout=60, env=live.env())
    assert done.returncode == 0, done.stderr
    return {doc["kind"]: doc for p in sorted((out / stage).glob("*.yaml")) for doc in yaml.safe_load_all(p.read_text())
            if doc}


def _gpus(spec: dict, containers: int) -> None:
    """`containers` containers of one GPU each in one pod (the server and copies of it), on the GPU pool."""
    _one_gpu(spec, POOLS.gpu)
    server = spec["containers"][0]
    for index in range(1, containers):
        copy = {k: v for k, v in server.items() if k not in ("ports", "startupProbe", "readinessProbe", "livenessProbe",
                                                            "lifecycle")}
        spec["containers"].append(dict(copy, name=f"copy-{index}"))


def _spec(objects: dict) -> dict:
    return workload_of(objects.values())["spec"]["template"]["spec"]


def _route(objects: dict) -> dict:
    return objects["VirtualService"]["spec"]["http"][0]


def _weighted(objects: dict) -> dict:
    """A production route that splits stable and canary by weight (render's first: no header route)."""
    found = objects["VirtualService"]["spec"]["http"][0]
    assert [d["destination"]["subset"] for d in found["route"]] == ["stable", "canary"], found
    return found


#: (what, team imo's credential, kind, the change refused, the policy, its words, the change admitted (None: render's))
ROUTE = "alertmanager.monitoring.svc.cluster.local"
SECOND_PASS = [
    ("production priority", "preview", "Deployment",
     lambda o: _spec(o).update(priorityClassName=tenancy.PRIORITY_CLASSES["production"]["name"]),
     "podserve-priority", "must have priorityClassName podserve-preview, not podserve-production", None),
    ("65 replicas", "preview", "Deployment", lambda o: o["Deployment"]["spec"].update(replicas=65),
     "podserve-resources", "a Deployment may have at most 64 replicas",
     lambda o: o["Deployment"]["spec"].update(replicas=64)),
    ("4 containers of one GPU", "preview", "Deployment", lambda o: _gpus(_spec(o), 4),
     "podserve-resources", "at most 1 nvidia.com/gpu, all its containers together", lambda o: _gpus(_spec(o), 1)),
    ("a route to alertmanager", "preview", "VirtualService",
     lambda o: _route(o)["route"][0]["destination"].update(host=ROUTE),
     "podserve-routes", "may route and mirror only to the own Services of its team", None),
    ("a mirror into another team's namespace", "preview", "VirtualService",
     lambda o: _route(o).update(mirror={"host": "svc.podserve-like.svc.cluster.local"}),
     "podserve-routes", "with the namespace among podserve-imo-grey",
     lambda o: _route(o).update(mirror={"host": "svc.podserve-imo-grey.svc.cluster.local"})),  # grey's own namespace
    # issue 68: a branch publishing its team's production pods under /grey/<team>/ (with any rewrite)
    ("a grey route into production", "preview", "VirtualService",
     lambda o: _route(o)["route"][0]["destination"].update(
         host=_route(o)["route"][0]["destination"]["host"].replace(".podserve-imo-grey.", ".podserve-imo.")),
     "podserve-routes", "with the namespace among podserve-imo-grey", None),
    ("a production mirror into another team's grey", "production", "VirtualService",
     lambda o: _weighted(o).update(mirror={"host": "tn-second.podserve-like-grey.svc.cluster.local"},
                                   mirrorPercentage={"value": 20.0}),
     "podserve-routes", "with the namespace among podserve-imo,podserve-imo-grey",
     lambda o: _weighted(o).update(mirror={"host": "tn-second.podserve-imo-grey.svc.cluster.local"},
                                   mirrorPercentage={"value": 20.0})),  # production's mirror into its own grey
    ("a production canary subset sent to another team's Service", "production", "VirtualService",
     lambda o: _weighted(o)["route"][1]["destination"].update(host="tn-second.podserve-like.svc.cluster.local"),
     "podserve-routes", "may route and mirror only to the own Services of its team", None),
    ("a delegate", "preview", "VirtualService",
     lambda o: _route(o).update(delegate={"name": "x", "namespace": "podserve-like"}) or _route(o).pop("route"),
     "podserve-routes", "delegate is not allowed", None),
    ("a PodMonitor of any namespace", "preview", "PodMonitor",
     lambda o: o["PodMonitor"]["spec"].update(namespaceSelector={"any": True}),
     "podserve-podmonitors", "scrapes its own namespace only",
     lambda o: o["PodMonitor"]["spec"].update(namespaceSelector={"matchNames": ["podserve-imo-grey"]})),
    ("a PodMonitor honouring labels", "preview", "PodMonitor",
     lambda o: o["PodMonitor"]["spec"]["podMetricsEndpoints"][0].update(honorLabels=True),
     "podserve-podmonitors", "honorLabels is not allowed", None),
    ("a ClusterTriggerAuthentication", "preview", "ScaledObject",
     lambda o: o["ScaledObject"]["spec"]["triggers"][0].update(
         authenticationRef={"name": "platform-kafka", "kind": "ClusterTriggerAuthentication"}),
     "podserve-autoscalers", "never a ClusterTriggerAuthentication",
     lambda o: o["ScaledObject"]["spec"]["triggers"][0].update(
         authenticationRef={"name": "own-kafka", "kind": "TriggerAuthentication"})),
    ("a ScaledObject without maxReplicaCount", "preview", "ScaledObject",
     lambda o: o["ScaledObject"]["spec"].pop("maxReplicaCount"),
     "podserve-autoscalers", "must set maxReplicaCount (the KEDA default is 100)", None),
    ("a trigger with brokers of its own", "preview", "ScaledObject",
     lambda o: o["ScaledObject"]["spec"]["triggers"][0]["metadata"].update(bootstrapServers="203.0.113.9:9092"),
     "podserve-autoscalers", "a kafka trigger must read the brokers from", None),
    ("a trigger on another Prometheus", "preview", "ScaledObject",
     lambda o: o["ScaledObject"]["spec"]["triggers"].append(
         {"type": "prometheus", "metadata": {"serverAddress": "http://prometheus.monitoring:9090", "query": "up",
                                             "threshold": "1"}}),
     "podserve-autoscalers", "may query only the Prometheus of the region", None),
    ("another team's host port", "production", "Rollout",
     lambda o: _spec(o)["containers"][0]["ports"][0].update(hostPort=20001),  # team like's range
     "podserve-host-ports", "within the own range of team imo, from 22500 to 24999",
     lambda o: _spec(o)["containers"][0]["ports"][0].update(hostPort=22501)),
    ("procMount Unmasked", "production", "Rollout",
     lambda o: _spec(o).update(hostUsers=False) or _spec(o)["containers"][0]["securityContext"].update(
         procMount="Unmasked"),
     "podserve-restricted", "procMount must be Default",
     lambda o: _spec(o).update(hostUsers=False) or _spec(o)["containers"][0]["securityContext"].update(
         procMount="Default")),
    ("nodeName", "production", "Rollout", lambda o: _spec(o).update(nodeName="hk-gpu-0"),
     "podserve-placement", "nodeName is not allowed", None),
    ("a toleration outside the pools", "production", "Rollout",
     lambda o: _spec(o).update(tolerations=[{"key": "node-role.kubernetes.io/control-plane", "operator": "Exists",
                                              "effect": "NoSchedule"}]),
     "podserve-placement", "tolerations may be only those of the node pools of the region",
     lambda o: _spec(o).update(tolerations=[{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}])),
]


@pytest.fixture(scope="module")
def imo(control_plane, rollouts_controller, tmp_path_factory) -> Live:
    return Live(control_plane, tmp_path_factory.mktemp("tenancy-imo-second"), "imo")


@pytest.mark.parametrize("what, tier, kind, change, policy, says, allowed", SECOND_PASS,
                         ids=[case[0] for case in SECOND_PASS])
def test_a_team_s_own_credential_cannot_take_capacity_routes_metrics_or_nodes_from_the_others(imo, what, tier, kind,
                                                                                              change, policy, says,
                                                                                              allowed):
    """It must show 1: with team imo's preview credential in its grey namespace, its production one in production,
    each refused with the rule named, and the same object with allowed values admitted (render's own, or `allowed`)."""
    refused_and_admitted(imo, what, tier, kind, change, policy, says, allowed)


def refused_and_admitted(imo, what, tier, kind, change, policy, says, allowed) -> None:
    """The object of `kind` render writes for team imo's tier, changed by `allowed` (if any), admitted with the tier's
    credential; changed by `change`, refused by `policy` with its words `says`."""
    stage = "grey" if tier == "preview" else "hk"
    made = offline_rendered(imo, "tn-second-offline", stage) if kind == "ScaledObject" else \
        rendered(imo, "tn-second", stage)
    kubeconfig = imo.kubeconfig(tier)
    if allowed:
        allowed(made)
    admitted = dry_apply(kubeconfig, made[kind])
    assert admitted.returncode == 0, admitted.stderr
    made = offline_rendered(imo, "tn-second-offline", stage) if kind == "ScaledObject" else \
        rendered(imo, "tn-second", stage)
    change(made)
    refused = dry_apply(kubeconfig, made[kind])
    assert refused.returncode != 0, f"{what} was admitted"
    assert f"ValidatingAdmissionPolicy '{policy}'" in refused.stderr and says in refused.stderr, refused.stderr


#: hk's node pools and GPU resource, as the chart's policies know them (conf/regions.yaml)
POOLS, POOL_GPU = load_conf().regions["hk"].node_pools, load_conf().regions["hk"].gpu.resource


def _avoid(spec: dict, topology: str = "kubernetes.io/hostname", kind: str = "podAntiAffinity",
           when: str = "requiredDuringSchedulingIgnoredDuringExecution", **where) -> None:
    """Pod (anti-)affinity to the service's own pods by `topology` (`where`: namespaces, namespaceSelector)."""
    term = {"labelSelector": {"matchLabels": {"service": "tn-second"}}, "topologyKey": topology, **where}
    terms = [term] if when.startswith("required") else [{"weight": 100, "podAffinityTerm": term}]
    spec["affinity"] = {kind: {when: terms}}


def _visible(spec: dict, value: str | None = None) -> None:
    """The server container's NVIDIA_VISIBLE_DEVICES set to `value`, or left out (None)."""
    server = spec["containers"][0]
    server["env"] = [e for e in server["env"] if e["name"] != tenancy.GPU_VISIBILITY_ENV]
    if value is not None:
        server["env"].append({"name": tenancy.GPU_VISIBILITY_ENV, "value": value})


def _on(spec: dict, pool) -> None:
    """The pod placed on `pool` as render places it: the pool's nodeSelector and tolerations."""
    spec.update(nodeSelector=dict(pool.node_selector), tolerations=list(pool.tolerations))


def _one_gpu(spec: dict, pool) -> None:
    """A one-GPU pod as render writes one (no NVIDIA_VISIBLE_DEVICES of its own: the device plugin sets it), on
    `pool`."""
    spec["containers"][0]["resources"]["limits"][POOL_GPU] = "1"
    _visible(spec)
    _on(spec, pool)


def _unplaced(spec: dict) -> None:
    """No pool selected, the GPU pool's taint tolerated: any GPU node would take it."""
    spec.pop("nodeSelector")
    spec.update(tolerations=list(POOLS.gpu.tolerations))


TOPOLOGY = "a topologyKey (pod affinity, anti-affinity, topology spread) may be only " + ",".join(tenancy.TOPOLOGY_KEYS)
NO_VOID = f"every container that asks for no GPU must set env {tenancy.GPU_VISIBILITY_ENV}={tenancy.NO_GPU}"
RESOURCES = "a container may ask only for cpu,memory,ephemeral-storage,nvidia.com/gpu, each counted in the quota"
MONITOR_LIMITS = "a PodMonitor must set sampleLimit (1 to 10000) and labelLimit (1 to 32)"
#: Issue 68 (placement, devices, shared systems), as SECOND_PASS: (what, team imo's credential, kind, the change
#: refused, the policy, its words, the change admitted (None: render's own)). A grey route into production:
#: SECOND_PASS's "a grey route into production".
THIRD_PASS = [
    ("anti-affinity across namespaces", "production", "Rollout", lambda o: _avoid(_spec(o), namespaceSelector={}),
     "podserve-placement", "may look at the pods of podserve-imo only: no namespaceSelector",
     lambda o: _avoid(_spec(o))),
    ("anti-affinity to another team's namespace", "preview", "Deployment",
     lambda o: _avoid(_spec(o), namespaces=["podserve-like"]),
     "podserve-placement", "may look at the pods of podserve-imo-grey only",
     lambda o: _avoid(_spec(o), namespaces=["podserve-imo-grey"])),
    ("a preferred affinity to another team's pods", "production", "Rollout",
     lambda o: _avoid(_spec(o), kind="podAffinity", when="preferredDuringSchedulingIgnoredDuringExecution",
                      namespaceSelector={"matchLabels": {tenancy.NAMESPACE_TEAM: "like"}}),
     "podserve-placement", "may look at the pods of podserve-imo only",
     lambda o: _avoid(_spec(o), kind="podAffinity", when="preferredDuringSchedulingIgnoredDuringExecution")),
    ("a region-wide topologyKey", "preview", "Deployment",
     lambda o: _spec(o)["topologySpreadConstraints"][0].update(topologyKey="topology.kubernetes.io/region"),
     "podserve-placement", TOPOLOGY,
     lambda o: _spec(o)["topologySpreadConstraints"][0].update(topologyKey="topology.kubernetes.io/zone")),
    ("anti-affinity over a region", "production", "Rollout",
     lambda o: _avoid(_spec(o), "topology.kubernetes.io/region"), "podserve-placement", TOPOLOGY,
     lambda o: _avoid(_spec(o), "kubernetes.io/hostname")),
    ("a GPU-less pod on the GPU pool", "production", "Rollout", lambda o: _on(_spec(o), POOLS.gpu),
     "podserve-placement", "a pod that asks for no GPU may not run on the GPU pool: its nodeSelector must name a pool "
     "(podserve.io/pool) other than podserve.io/pool=gpu-2080ti", None),
    ("a GPU-less pod on no pool", "preview", "Deployment", lambda o: _unplaced(_spec(o)),
     "podserve-placement", "a pod that asks for no GPU may not run on the GPU pool", None),
    ("a GPU pod off the GPU pool", "preview", "Deployment", lambda o: _one_gpu(_spec(o), POOLS.cpu),
     "podserve-placement", "a pod that asks for a GPU (nvidia.com/gpu) must select the GPU pool: nodeSelector "
     "podserve.io/pool=gpu-2080ti", lambda o: _one_gpu(_spec(o), POOLS.gpu)),
    ("a GPU-less pod without NVIDIA_VISIBLE_DEVICES=void", "preview", "Deployment", lambda o: _visible(_spec(o)),
     "podserve-gpu-devices", NO_VOID, None),
    ("a GPU-less pod seeing every GPU", "production", "Rollout", lambda o: _visible(_spec(o), "all"),
     "podserve-gpu-devices", NO_VOID, None),
    ("a GPU pod naming its own devices", "production", "Rollout",
     lambda o: _one_gpu(_spec(o), POOLS.gpu) or _visible(_spec(o), "0,1,2,3"),
     "podserve-gpu-devices", "a container that asks for a GPU may not set NVIDIA_VISIBLE_DEVICES",
     lambda o: _one_gpu(_spec(o), POOLS.gpu)),
    ("an unlisted MIG profile", "preview", "Deployment",
     lambda o: _spec(o)["containers"][0]["resources"]["limits"].update({"nvidia.com/mig-1g.10gb": "1"}),
     "podserve-resources", RESOURCES, None),
    ("GPU memory where GPUs are not shared", "production", "Rollout",  # na's nvidia.com/gpumem: not hk's
     lambda o: _spec(o)["containers"][0]["resources"]["limits"].update({"nvidia.com/gpumem": "4096"}),
     "podserve-resources", RESOURCES, None),
    ("a PodMonitor without limits", "preview", "PodMonitor",
     lambda o: [o["PodMonitor"]["spec"].pop(k) for k in ("sampleLimit", "labelLimit")],
     "podserve-podmonitors", MONITOR_LIMITS, None),
    ("a PodMonitor past the caps", "production", "PodMonitor",
     lambda o: o["PodMonitor"]["spec"].update(sampleLimit=1000000),
     "podserve-podmonitors", MONITOR_LIMITS, lambda o: o["PodMonitor"]["spec"].update(sampleLimit=500, labelLimit=20)),
    ("an image from a foreign registry", "preview", "Deployment",
     lambda o: _spec(o)["containers"][0].update(image="docker.io/library/python:3.11"),
     "podserve-images", "images come only from the platform registries of the region, registry.hk.example.com", None),
    ("an image of a look-alike host", "production", "Rollout",
     lambda o: _spec(o)["containers"][0].update(image="registry.hk.example.com.evil.example/imo/x:1"),
     "podserve-images", "not registry.hk.example.com.evil.example/imo/x:1",
     lambda o: _spec(o)["containers"][0].update(image=f"registry.hk.example.com/imo/tn-second@sha256:{'a' * 64}")),
]


@pytest.mark.parametrize("what, tier, kind, change, policy, says, allowed", THIRD_PASS,
                         ids=[case[0] for case in THIRD_PASS])
def test_a_team_s_own_credential_cannot_crowd_others_pods_see_their_gpus_or_flood_shared_systems(imo, what, tier, kind,
                                                                                                 change, policy, says,
                                                                                                 allowed):
    """Issue 68, It must show 1: with team imo's preview credential in its grey namespace, its production one in
    production, each refused with the rule named, and the same object with allowed values admitted."""
    refused_and_admitted(imo, what, tier, kind, change, policy, says, allowed)


def test_ci_cannot_delete_the_platform_s_configmaps(imo):
    """Issue 68: podserve-kafka (the brokers) is the platform's: neither of team imo's accounts may delete it in its
    namespaces (RBAC lets them delete ConfigMaps: their histories); the team's own history ConfigMap is deleted."""
    for tier, stage in (("preview", "grey"), ("production", "hk")):
        kubeconfig, namespace = imo.kubeconfig(tier), imo.namespace(stage)
        refused = kubectl(kubeconfig, "-n", namespace, "delete", "configmap", "podserve-kafka", "--dry-run=server")
        assert refused.returncode != 0 and "ValidatingAdmissionPolicy 'podserve-owner'" in refused.stderr, \
            refused.stderr
        assert "the ConfigMap podserve-kafka belongs to the platform" in refused.stderr
        assert "CI accounts may neither change nor delete it" in refused.stderr
        history = {"apiVersion": "v1", "kind": "ConfigMap", "data": {},
                   "metadata": {"name": "tn-delete.deploy-history", "namespace": namespace}}
        made = kubectl(kubeconfig, "apply", "--server-side", "--field-manager", "tenancy-test", "-f", "-",
                       stdin=yaml.safe_dump(history))
        assert made.returncode == 0, made.stderr
        deleted = kubectl(kubeconfig, "-n", namespace, "delete", "configmap", "tn-delete.deploy-history")
        assert deleted.returncode == 0, deleted.stderr
    assert imo.admin.get(CONFIGMAPS, imo.namespace("grey"), "podserve-kafka") is not None


def test_a_grey_over_its_namespace_s_ephemeral_storage_quota_fails_naming_the_quota(imo):
    """Issue 68, It must show 1 (the quota): team imo's grey at the platform's local disk (pod.ephemeral_storage) is
    deployed; the same grey asking 32Gi for its pod, more than the namespace's quota of local disk, is refused by the
    cluster naming the quota (deploy tool exit 1)."""
    name, namespace = "tn-disk", imo.namespace("grey")
    hard = tenancy.quota(imo.conf, imo.conf.stages["grey"], "imo")
    assert quantity.memory_bytes(hard["limits.ephemeral-storage"]) < quantity.memory_bytes("32Gi")
    try:
        ours = imo.deploy("apply", "--stage", "grey", "--manifests", imo.manifests(name, "grey", tag="v1") / "grey")
        assert ours.returncode == 0, ours.output
        greedy = imo.manifests(name, "grey", tag="v2") / "grey"
        path = greedy / "deployment.yaml"
        deployment = yaml.safe_load(path.read_text())
        for amounts in deployment["spec"]["template"]["spec"]["containers"][0]["resources"].values():
            amounts["ephemeral-storage"] = "32Gi"
        path.write_text(yaml.safe_dump(deployment))
        run = imo.deploy("apply", "--stage", "grey", "--manifests", greedy)
        print(f"grey over its ephemeral-storage quota: exit {run.returncode} after {run.seconds:.1f} s")
        assert_refused_by_the_quota(run, namespace, "ephemeral-storage")
    finally:
        imo.remove(namespace, "grey", name)


def test_a_production_rollout_and_its_analysis_template_are_admitted_for_the_team_and_refused_for_another(imo):
    """Production renders an Argo Rollout (its canary is Argo's ReplicaSet of it) and the service's AnalysisTemplate:
    both are admitted with team imo's production credential; the same Rollout claiming team like is refused, as a
    Deployment would be."""
    made = rendered(imo, "tn-second", "hk")
    assert "Deployment" not in made
    kubeconfig = imo.kubeconfig("production")
    for kind in ("AnalysisTemplate", "Rollout"):
        admitted = dry_apply(kubeconfig, drift.stamped(made[kind]))
        assert admitted.returncode == 0, admitted.stderr
    rollout = drift.stamped(made["Rollout"])
    rollout["metadata"]["labels"]["team"] = "like"
    refused = dry_apply(kubeconfig, rollout)
    assert refused.returncode != 0, "a Rollout of another team was admitted"
    # two policies refuse it, and the apiserver names the first that denies (in no set order): the owner label, and
    # the pod template's team (imo's) not the object's
    reasons = {"podserve-owner": "must carry the owner label team: imo",
               "podserve-workload-labels": "the pod template's team, stage and service labels"}
    assert any(f"ValidatingAdmissionPolicy '{policy}'" in refused.stderr and why in refused.stderr
               for policy, why in reasons.items()), refused.stderr


def test_a_grey_over_its_namespace_s_cpu_quota_fails_naming_the_quota(imo):
    """It must show 1 (the quota): two greys of team imo at 31 cores each fit its preview quota (64); the first one's
    next rollout needs room for its surge pod too, which the quota has not: refused by the cluster, exit 1."""
    names, namespace = ("tn-cpu-a", "tn-cpu-b"), imo.namespace("grey")
    values = {}
    for name in names:
        values[name] = imo.values(name)
        # 8Gi: 31 cores decode 15 videos at once (the memory plan); three such pods stay far within the memory quota
        values[name].write_text(values[name].read_text().replace("cpu = 1", "cpu = 31")
                                .replace('memory = "1Gi"', 'memory = "8Gi"'))
    try:
        for name in names:
            first = imo.deploy("apply", "--stage", "grey", "--values", values[name], "--image-tag", "v1")
            assert first.returncode == 0, first.output
        run = imo.deploy("apply", "--stage", "grey", "--values", values[names[0]], "--image-tag", "v2")
        print(f"grey over its cpu quota: exit {run.returncode} after {run.seconds:.1f} s")
        assert_refused_by_the_quota(run, namespace, "requests.cpu")
    finally:
        for name in names:
            imo.remove(namespace, "grey", name)


def assert_refused_by_the_quota(run, namespace: str, resource: str) -> None:
    """The deploy tool failed (exit 1) naming the namespace's full ResourceQuota and `resource` as the cluster did."""
    assert run.returncode == 1, run.output
    assert "FAILED: The cluster refuses to create the pods: " in run.stdout
    assert f"the ResourceQuota {namespace}/{tenancy.QUOTA_NAME} is full" in run.stdout
    assert f"exceeded quota: {tenancy.QUOTA_NAME}" in run.stdout and resource in run.stdout


def test_render_refuses_an_offline_topic_without_the_team(imo, tmp_path):
    """It must show 1 (the last): a topic of team imo's offline service not named imo.<...>: exit 2, nothing written."""
    path = tmp_path / "value.py"
    path.write_text(OFFLINE.format(name="tn-topics").replace('sink_topic = "imo.directions"', 'sink_topic = "directions"'))
    out = tmp_path / "out"
    done = subprocess.run([sys.executable, "-m", "podserve.tooling.render", "--all", "--values", str(path), "--out",
                           str(out)], cwd=REPO, capture_output=True, text=True, timeout=60, env=imo.env())
    assert done.returncode == 2 and not out.exists(), done.stderr
    assert "sink_topic: 'directions' does not carry the team: rename it to 'imo.directions'" in done.stderr


def gpu_values(live: Live, name: str) -> Path:
    """A one-GPU service of `live`'s team: one production replica in hk, the grey copy's one."""
    path = live.values(name)
    path.write_text(gpu_text(path.read_text()))
    return path


def gpu_text(text: str) -> str:
    """live.VALUES's text made a one-GPU service (tests/tooling/test_shipped_values.py renders it too)."""
    text = text.replace("gpu_num = 0", "gpu_num = 1").replace("gpu_memory = 0", "gpu_memory = 4")
    # a CUDA context (about 800 MiB measured) and a decoder beside the model, each decoding thread an image: the plan
    text = text.replace('memory = "1Gi"', 'memory = "3Gi"')
    return text.replace("hk_replicas = 2", "hk_replicas = 1")


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
        deployment = a.admin.get(MANAGED["Rollout"], a.namespace("hk"), name)
        assert deployment["spec"]["template"]["spec"]["containers"][0]["image"].endswith(":v2")
        # v2's one pod serves as stable (v1's stays scaleDownDelaySeconds longer: Argo's scale-down after the switch)
        assert argo.state_of(deployment).promoted and deployment["status"]["updatedReplicas"] == 1
        preempted = [e for e in a.items(EVENTS, a.namespace("grey")) if e.get("reason") == "Preempted"]
        assert preempted and grey_pods[0]["metadata"]["name"] in {e["involvedObject"]["name"] for e in preempted}
    finally:
        a.admin.request("DELETE", _NAMESPACES.path(None, filler_ns))
        a.remove(a.namespace("hk"), "hk", name)
        a.remove(a.namespace("grey"), "grey", name)


def test_pods_a_quota_has_no_room_for_are_diagnosed_naming_the_quota(control_plane, rollouts_controller, tmp_path):
    """Team hello's two ab copies of 3 one-GPU pods: each fits its namespace's quota alone (conf/platform.yaml
    preview_quota gpus: 4; render refuses one that does not), the second not beside the first."""
    live = Live(control_plane, tmp_path, "hello")
    names, namespace = ("tn-quota-a", "tn-quota-b"), live.namespace("ab")
    values = {name: gpu_values(live, name) for name in names}
    for path in values.values():
        path.write_text(path.read_text().replace("ab_replicas = 1", "ab_replicas = 3"))
    try:
        first = live.deploy("apply", "--stage", "ab", "--values", values[names[0]])
        assert first.returncode == 0, first.output
        run = live.deploy("apply", "--stage", "ab", "--values", values[names[1]])
        print(f"ab over its GPU quota: exit {run.returncode} after {run.seconds:.1f} s")
        assert run.returncode == 1, run.output
        assert "FAILED: The cluster refuses to create the pods: " in run.stdout
        assert f"the ResourceQuota {namespace}/podserve-quota is full" in run.stdout
        assert "exceeded quota: podserve-quota" in run.stdout and "requests.nvidia.com/gpu" in run.stdout
        assert run.seconds < 60  # certain at once: not waited out, not blamed on init_delay_second
        assert "init_delay_second" not in run.stdout.split("FAILED:")[1].split("\n")[0]
    finally:
        for name in names:
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


def test_ci_cannot_repoint_its_namespace_s_brokers(teams):
    """podserve-owner: the ConfigMap podserve-kafka is the platform's (the region's brokers, the chart's); the team's
    account may write ConfigMaps there (its history) but not that one."""
    a, _ = teams
    namespace = a.namespace("grey")
    brokers = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "podserve-kafka", "namespace": namespace},
               "data": {"bootstrap": "203.0.113.9:9092"}}
    refused = kubectl(a.kubeconfig("preview"), "apply", "--server-side", "--force-conflicts", "--dry-run=server",
                      "-f", "-", stdin=yaml.safe_dump(brokers))
    assert refused.returncode != 0 and "ValidatingAdmissionPolicy 'podserve-owner'" in refused.stderr, refused.stderr
    assert "the ConfigMap podserve-kafka belongs to the platform (podserve-kafka: the brokers" in refused.stderr
    history = dict(brokers, metadata={"name": "tn-brokers.deploy-history", "namespace": namespace}, data={})
    assert dry_apply(a.kubeconfig("preview"), history).returncode == 0


def test_a_missing_or_broken_limits_configmap_is_named_not_a_blanket_refusal(teams, control_plane):
    """The pod policies' parameters, podserve-system/podserve-limits, deleted (then one key lost): the deploy tool's dry
    run exits 2 naming the ConfigMap (and the key) and saying no value.py can fix it; put back, the same deploy passes."""
    a, _ = teams
    name, admin = "tn-limits", a.plane.kubeconfig
    saved = kubectl(admin, "-n", "podserve-system", "get", "configmap", "podserve-limits", "-o", "yaml")
    assert saved.returncode == 0, saved.stderr
    original = yaml.safe_load(saved.stdout)
    restore = {"apiVersion": "v1", "kind": "ConfigMap", "data": original["data"],
               "metadata": {k: original["metadata"][k] for k in ("name", "namespace", "labels", "annotations")
                            if k in original["metadata"]}}
    try:
        assert kubectl(admin, "-n", "podserve-system", "delete", "configmap", "podserve-limits").returncode == 0
        missing = a.deploy("apply", "--stage", "grey", "--values", a.values(name), "--dry-run")
        assert missing.returncode == 2, missing.output
        assert "the platform's ConfigMap podserve-limits (the parameters of the admission policy" in missing.stderr
        assert "is missing, so the cluster refuses every pod of every team" in missing.stderr
        broken = dict(restore, data={k: v for k, v in original["data"].items() if k != "maxCpu"})
        assert kubectl(admin, "apply", "-f", "-", stdin=yaml.safe_dump(broken)).returncode == 0
        lacking = a.deploy("apply", "--stage", "grey", "--values", a.values(name), "--dry-run")
        assert lacking.returncode == 2 and "the platform's ConfigMap podserve-limits lacks maxCpu" in lacking.stderr
    finally:
        put_back = kubectl(admin, "apply", "--server-side", "--force-conflicts", "--field-manager", "helm", "-f", "-",
                           stdin=yaml.safe_dump(restore))
        assert put_back.returncode == 0, put_back.stderr
    assert a.deploy("apply", "--stage", "grey", "--values", a.values(name), "--dry-run").returncode == 0


def test_one_region_s_chart_values_are_refused_in_another_region_s_cluster(control_plane, tmp_path):
    """The session's cluster is hk's (its chart recorded region hk): helm with eu's values fails before changing
    anything, naming both regions; hk's values pass (server-side dry runs, which read the cluster as an upgrade
    does)."""
    from podserve.testbed.cluster.platform import CHART, HELM, RELEASE
    from podserve.tooling.chart_values import chart_values
    from podserve.tooling.conf import load_conf

    def upgrade(region: str) -> subprocess.CompletedProcess:
        """helm's server-side dry run: the chart's lookups read the cluster, nothing is installed."""
        values = tmp_path / f"values-{region}.yaml"
        values.write_text(yaml.safe_dump(chart_values(load_conf(), region)))
        return subprocess.run([str(HELM), "upgrade", "--install", RELEASE, str(CHART), "--namespace", "default",
                               "--dry-run=server", "-f", str(values), "--kubeconfig", str(control_plane.kubeconfig)],
                              capture_output=True, text=True, timeout=180, env=control_plane.tool_env())

    wrong = upgrade("eu")
    assert wrong.returncode != 0
    assert "these values are region eu's, but this cluster is region hk (ConfigMap podserve-system/podserve-cluster)" \
        in wrong.stderr, wrong.stderr
    right = upgrade("hk")
    assert right.returncode == 0, right.stderr


def test_another_team_s_pods_may_not_wear_the_victim_s_labels(teams):
    """It must show 4 (issue 66), admission's half: team imo's production account applies a Rollout whose pods say
    team like, the victim's service and track stable: refused, so no such pod ever reaches like's counts."""
    a, b = teams
    victim = rendered(a, "tn-victim", "hk")["Rollout"]
    impostor = rendered(b, "tn-impostor", "hk")["Rollout"]
    labels = impostor["spec"]["template"]["metadata"]["labels"]
    labels.update(team=victim["spec"]["template"]["metadata"]["labels"]["team"], track=release.STABLE)
    refused = dry_apply(b.kubeconfig("production"), impostor)
    assert refused.returncode != 0, "imo's pods wearing like's labels were admitted"
    assert "ValidatingAdmissionPolicy 'podserve-workload-labels'" in refused.stderr
    assert "must carry the label team: imo, the team of namespace podserve-imo" in refused.stderr, refused.stderr


ANALYSIS_CASES = [
    ("a web provider", "AnalysisTemplate",
     lambda o: o["AnalysisTemplate"]["spec"]["metrics"][0].update(provider={"web": {"url": "http://203.0.113.9/"}}),
     "may only query the Prometheus of the region"),
    ("another Prometheus", "AnalysisTemplate",
     lambda o: o["AnalysisTemplate"]["spec"]["metrics"][0]["provider"]["prometheus"].update(
         address="http://203.0.113.9:9090"), "may only query the Prometheus of the region"),
    ("a Secret as an argument", "AnalysisTemplate",
     lambda o: o["AnalysisTemplate"]["spec"]["args"].append(
         {"name": "token", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}}),
     "an analysis argument may not come from a Secret"),
    ("a ClusterAnalysisTemplate in a step", "Rollout",
     lambda o: o["Rollout"]["spec"]["strategy"]["canary"]["steps"][1]["analysis"]["templates"][0].update(
         clusterScope=True), "name only AnalysisTemplates of its own namespace"),
    ("an Experiment step", "Rollout",
     lambda o: o["Rollout"]["spec"]["strategy"]["canary"]["steps"].append(
         {"experiment": {"templates": [{"name": "x", "specRef": "canary"}]}}), "may run no Experiment"),
    ("another team on the canary's pods", "Rollout",
     lambda o: o["Rollout"]["spec"]["strategy"]["canary"]["canaryMetadata"]["labels"].update(team="imo"),
     "may set only the label track"),
]


@pytest.mark.parametrize("what, kind, change, says", ANALYSIS_CASES, ids=[case[0] for case in ANALYSIS_CASES])
def test_a_rollout_and_its_analysis_use_only_what_the_platform_allows(teams, what, kind, change, says):
    """Issue 66: Argo's objects in a team's namespace, as its CI account applies them: ours admitted, each variant
    refused by the policy that names the rule (the controller would run a web call or a Job with its own reach)."""
    a, _ = teams
    objects = rendered(a, "tn-argo", "hk", extra="canary_steps = [10]\n")  # as render writes them: ours
    production = a.kubeconfig("production")
    ours = dry_apply(production, objects["AnalysisTemplate"], objects["Rollout"])
    assert ours.returncode == 0, ours.stderr
    change(objects)
    refused = dry_apply(production, objects[kind])
    assert refused.returncode != 0, f"{what} was admitted"
    policy = "podserve-workload-labels" if what == "another team on the canary's pods" else "podserve-analysis"
    assert f"ValidatingAdmissionPolicy '{policy}'" in refused.stderr and says in refused.stderr, refused.stderr


def test_grey_s_verdict_run_is_admitted_for_the_preview_account_and_refused_with_another_provider(teams):
    """Issue 66: every branch's jobs hold the preview credential, which now creates AnalysisRuns (grey's verdict) that
    the controller runs with its own reach: the run `analyze` builds is admitted in grey's namespace; the same run
    with a web provider, another Prometheus or another team's label is refused."""
    from podserve.tooling.conf import load_conf, load_deploy_policy
    from podserve.tooling.deploy import analysis
    from podserve.tooling.deploy.target import from_manifests

    a, _ = teams
    conf = load_conf()
    grey, hk = (from_manifests(a.manifests("tn-verdict", stage) / stage, conf.stages[stage])
                for stage in ("grey", "hk"))
    plan = analysis.plan_for(grey, hk, conf, load_deploy_policy(), since=0)
    run = analysis.analysis_run(plan, "tn-verdict-grey-1", grey.deployment())
    preview = a.kubeconfig("preview")

    def dry_create(doc):  # as analyze does: a create (the account may not patch a run)
        return kubectl(preview, "create", "--dry-run=server", "-f", "-", stdin=yaml.safe_dump(doc))

    ours = dry_create(run)
    assert ours.returncode == 0, ours.stderr
    hostile = [
        ("a web provider", lambda r: r["spec"]["metrics"][0].update(provider={"web": {"url": "http://203.0.113.9/"}}),
         "ValidatingAdmissionPolicy 'podserve-analysis'"),
        ("another Prometheus", lambda r: r["spec"]["metrics"][0]["provider"]["prometheus"].update(
            address="http://203.0.113.9:9090"), "ValidatingAdmissionPolicy 'podserve-analysis'"),
        ("another team's label", lambda r: r["metadata"]["labels"].update(team="imo"), "must carry the owner label"),
    ]
    for what, change, says in hostile:
        changed = copy.deepcopy(run)
        change(changed)
        refused = dry_create(changed)
        assert refused.returncode != 0 and says in refused.stderr, (what, refused.stderr)
