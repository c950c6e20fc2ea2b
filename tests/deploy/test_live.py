"""The deploy tool against the real control plane, run with the platform chart's deploy accounts (team like's).

Real: the apiserver (server-side apply, strict field validation, RBAC), the Deployment and
ReplicaSet controllers, the scheduler, the garbage collector. Simulated: the kubelet's side
(kwok): pods become Ready, or, with the pod-template annotation podserve.io/simulate, fail
as a kubelet reports it. Budgets and graces are shortened with the CLI's flags; the
defaults (conf/deploy.yaml, value.py) stay realistic.
"""

from __future__ import annotations

import shutil
import signal
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Iterator

import pytest
import yaml

from live import Live, Run, finish, read_until
from podserve.tooling.conf import default_conf_dir, load_conf
from podserve.testbed.processes import poll_until
from podserve.tooling import scaling
from podserve.tooling.deploy.kube import LEASES, MANAGED, Kind
from receiver import Receiver

GREY, HK, AB = ((load_conf().stages[stage].namespace_for("like"), stage) for stage in ("grey", "hk", "ab"))
#: Another team's ab namespace, where the admin plants a VirtualService.
OTHER_AB = load_conf().stages["ab"].namespace_for("imo")
#: A certain failure must be reported within this many seconds (it takes a few here).
CERTAIN_WITHIN = 60


@pytest.fixture(scope="module")
def live(control_plane, rollouts_controller, tmp_path_factory) -> Live:
    tmp = tmp_path_factory.mktemp("deploy")
    return Live(control_plane, tmp)


def test_grey_is_ready_notified_shown_and_deleted_without_leftovers(live):
    name = "dt-grey"
    receiver = Receiver()
    try:
        run = live.deploy("apply", "--stage", "grey", "--values", live.values(name),
                          PODSERVE_NOTIFY_URL=receiver.url, CI_PIPELINE_URL="https://gitlab.example.com/p/-/pipelines/1")
        assert run.returncode == 0, run.output
        assert f"serving: revision 1 of {name} in grey: 1/1 pods ready" in run.stdout
        assert {f"Deployment/{name}", f"Service/{name}", f"VirtualService/{name}",
                f"ConfigMap/{name}.deploy-history"} <= set(live.objects(*GREY, name))
        assert receiver.bodies == [{"service": name, "stage": "grey", "revision": 1, "outcome": "serving",
                                    "diagnosis": None, "pipeline": "https://gitlab.example.com/p/-/pipelines/1",
                                    "job": None, "commit": None}]
    finally:
        receiver.stop()
    deployment = live.admin.get(MANAGED["Deployment"], GREY[0], name)
    assert deployment["status"]["readyReplicas"] == 1
    assert any(m["manager"] == "podserve-deploy" and m["operation"] == "Apply"
               for m in deployment["metadata"]["managedFields"])
    status = live.deploy("status", "--stage", "grey", "--service", name, "--team", "like")
    assert status.returncode == 0 and "revision 1" in status.stdout and "1/1 ready, 0 restart(s)" in status.stdout

    # The receiver is gone now: the notification fails, the delete does not.
    gone = live.deploy("delete", "--stage", "grey", "--service", name, "--team", "like", PODSERVE_NOTIFY_URL=receiver.url)
    assert gone.returncode == 0, gone.output
    assert "notification to PODSERVE_NOTIFY_URL was not delivered" in gone.stderr
    assert live.objects(*GREY, name) == []


def test_dry_run_prints_the_change_and_changes_nothing(live):
    name = "dt-dry"
    try:
        assert live.deploy("apply", "--stage", "grey", "--manifests", live.manifests(name, "grey", "v1")).returncode == 0
        before = live.versions(*GREY, name)
        assert f"Deployment/{name}" in before and any(k.startswith("Pod/") for k in before), before
        run = live.deploy("apply", "--stage", "grey", "--dry-run", "--manifests", live.manifests(name, "grey", "v2"))
        assert run.returncode == 0, run.output
        assert f"would change Deployment/{name}: spec.template.spec.containers[0].image" in run.stdout
        assert f"unchanged Service/{name}" in run.stdout
        assert live.versions(*GREY, name) == before
    finally:
        live.deploy("delete", "--stage", "grey", "--service", name, "--team", "like")


FAILURES = [
    # simulate, what the tool must print first, the value.py field (or the kubelet's word), extra flags, and what
    # `deploy status` then says of the pod
    ("oom-killed", "The server was OOMKilled", "raise `memory`", (), "CrashLoopBackOff"),
    ("crash-loop", "The server keeps crashing (CrashLoopBackOff)", "`model_path`", (), "CrashLoopBackOff"),
    ("image-pull-backoff", "The image cannot be pulled (ImagePullBackOff)", "build job pushed", (), "ImagePullBackOff"),
    ("sandbox-failure", "The node never started the pod's containers", "FailedCreatePodSandBox", ("--budget", "8"),
     "ContainerCreating (Warning FailedCreatePodSandBox ("),
    ("slow-start", "Start-up took longer than the startup probe allows", "raise `init_delay_second`", (),
     "running, not ready yet"),
    ("never-ready", "The pod runs but never became ready", "`init_delay_second`", ("--budget", "8"),
     "running, not ready yet"),
]


@dataclass
class Failed:
    """One failing case as it ran: the failed apply, the objects then left in grey, and `deploy status` then."""

    run: Run
    left: list[str]
    status: Run


def deploy_to_fail(live: Live, simulate: str, flags: tuple[str, ...]) -> Failed:
    """Deploy dt-<simulate> to fail as kwok simulates it, look at what is left and at status; then delete it."""
    name = f"dt-{simulate}"
    try:
        run = live.deploy("apply", "--stage", "grey", "--manifests", live.manifests(name, "grey", simulate=simulate),
                          *flags)
        left = live.objects(*GREY, name)
        status = live.deploy("status", "--stage", "grey", "--service", name, "--team", "like")
        return Failed(run, left, status)
    finally:
        live.deploy("delete", "--stage", "grey", "--service", name, "--team", "like")


@pytest.fixture(scope="module")
def failed(live, request) -> Iterator[dict[str, Future]]:
    """The failing cases the session selected, run side by side: each waits on kwok's simulated kubelet and a deploy
    budget, not on the CPU, and each has its own service (its own objects, lock and pods)."""
    chosen = {item.callspec.params["simulate"] for item in request.session.items
              if item.originalname == "test_each_failure_is_diagnosed_with_its_field_and_grey_keeps_the_pod"}
    assert live.ci_kubeconfig.exists()  # grey's account: its kubeconfig written once, before the threads read it
    with ThreadPoolExecutor(max_workers=len(FAILURES)) as pool:
        yield {simulate: pool.submit(deploy_to_fail, live, simulate, flags)
               for simulate, _, _, flags, _ in FAILURES if simulate in chosen}


@pytest.mark.parametrize("simulate, headline, field, flags, state", FAILURES, ids=[f[0] for f in FAILURES])
def test_each_failure_is_diagnosed_with_its_field_and_grey_keeps_the_pod(failed, simulate, headline, field, flags, state):
    case = failed[simulate].result()
    run, left, status = case.run, case.left, case.status
    print(f"{simulate}: exit {run.returncode} after {run.seconds:.1f} s")
    assert run.returncode == 1, run.output
    assert f"FAILED: {headline}: " in run.stdout and field in run.stdout
    assert run.seconds < CERTAIN_WITHIN
    assert "grey is left as it is for inspection" in run.stdout
    assert any(o.startswith("Pod/") for o in left), left
    assert status.returncode == 1 and "0/1 ready, " in status.stdout and state in status.stdout, status.output


def test_a_pod_larger_than_any_node_is_refused_at_once_by_the_platform_s_policy(live):
    """Once a ReplicaSet that could never schedule (waited out); now the chart's podserve-resources refuses the apply."""
    name = "dt-cpu"
    run = live.deploy("apply", "--stage", "grey", "--manifests", live.manifests(name, "grey", cpu="200"))
    assert run.returncode == 2, run.output
    assert "ValidatingAdmissionPolicy 'podserve-resources'" in run.stderr
    assert "a container may ask at most cpu 62 and memory 240Gi" in run.stderr and "Nothing was changed" in run.stderr
    assert live.objects(*GREY, name) == []


def test_every_node_cordoned_fails_within_five_minutes_naming_the_scheduler_and_the_field(live):
    name = "dt-cordoned"
    nodes = live.admin.list(_NODES)["items"]
    try:
        for node in nodes:
            live.admin.request("PATCH", _NODES.path(None, node["metadata"]["name"]),
                               body={"spec": {"unschedulable": True}}, content_type="application/merge-patch+json")
        run = live.deploy("apply", "--stage", "grey", "--values", live.values(name), "--scheduling-grace", "3")
        print(f"every node cordoned: exit {run.returncode} after {run.seconds:.1f} s")
        assert run.returncode == 1, run.output
        assert run.seconds < 300
        assert "FAILED: No node can take the pod" in run.stdout
        assert f"0/{len(nodes)} nodes are available: {len(nodes)} node(s) were unschedulable" in run.stdout
        assert "`cpu`, `memory`, `gpu_num`" in run.stdout and "cordoned" in run.stdout
    finally:
        for node in nodes:
            was = bool((node.get("spec") or {}).get("unschedulable"))
            live.admin.request("PATCH", _NODES.path(None, node["metadata"]["name"]),
                               body={"spec": {"unschedulable": was or None}},
                               content_type="application/merge-patch+json")
        live.deploy("delete", "--stage", "grey", "--service", name, "--team", "like")


def test_a_failing_production_deploy_rolls_back_and_the_previous_revision_serves(live):
    name = "dt-rollback"
    receiver = Receiver()
    try:
        first = live.deploy("apply", "--stage", "hk", "--manifests", live.manifests(name, "hk", "v1"))
        assert first.returncode == 0, first.output
        run = live.deploy("apply", "--stage", "hk", "--manifests", live.manifests(name, "hk", "v2", "oom-killed"),
                          PODSERVE_NOTIFY_URL=receiver.url)
        print(f"failed production deploy: exit {run.returncode} after {run.seconds:.1f} s")
        assert run.returncode == 1, run.output
        assert "FAILED: The server was OOMKilled" in run.stdout, run.stdout
        assert "rolling back to the previous revision (1)" in run.stdout, run.stdout
        assert "rolled back: the previous revision is serving again: 2/2 pods ready" in run.stdout, run.stdout
        deployment = live.admin.get(MANAGED["Rollout"], HK[0], name)
        container = deployment["spec"]["template"]["spec"]["containers"][0]
        assert container["image"].endswith(f"/like/{name}:v1")
        assert "podserve.io/simulate" not in deployment["spec"]["template"]["metadata"]["annotations"]
        assert deployment["status"]["readyReplicas"] == deployment["status"]["updatedReplicas"] == 2
        assert [b["outcome"] for b in receiver.bodies] == ["rolled_back"]
        assert receiver.bodies[0]["revision"] == 2 and "OOMKilled" in receiver.bodies[0]["diagnosis"]
        status = live.deploy("status", "--stage", "hk", "--service", name, "--team", "like")
        assert status.returncode == 0 and "revision 1" in status.stdout and ":v1" in status.stdout
        # ... and on demand: rollback puts the previous recorded revision back.
        again = live.deploy("apply", "--stage", "hk", "--manifests", live.manifests(name, "hk", "v3"))
        assert again.returncode == 0, again.output
        back = live.deploy("rollback", "--stage", "hk", "--service", name, "--team", "like")
        assert back.returncode == 0, back.output
        image = live.admin.get(MANAGED["Rollout"], HK[0], name)["spec"]["template"]["spec"]["containers"][0]["image"]
        assert image.endswith(":v1")
    finally:
        receiver.stop()
        live.remove(*HK, name)


def test_keda_s_writes_pass_a_team_s_policies_and_the_tool_leaves_its_hpa_alone(live, keda):
    """KEDA's own writes in a team's production namespace (its finalizer on the ScaledObject, keda-hpa-<service>)
    pass the platform's admission policies; KEDA copies the ScaledObject's labels onto its HPA, so it matches the
    service's selector, yet an apply again neither prunes it nor re-applies it (it is KEDA's, a controller's)."""
    name, namespace = "dt-keda", HK[0]
    hpa_name = scaling.HPA_PREFIX + name
    try:
        manifests = live.manifests(name, "hk", max_replicas=4)
        first = live.deploy("apply", "--stage", "hk", "--manifests", manifests)
        assert first.returncode == 0, first.output
        hpa = poll_until(lambda: live.admin.get(MANAGED["HorizontalPodAutoscaler"], namespace, hpa_name),
                         f"KEDA's HPA {hpa_name}", 60)
        assert (hpa["spec"]["scaleTargetRef"]["kind"], hpa["spec"]["maxReplicas"]) == ("Rollout", 4)
        assert hpa["metadata"]["labels"]["service"] == name  # what makes it look like the tool's own
        finalizers = poll_until(lambda: live.admin.get(MANAGED["ScaledObject"], namespace, name)["metadata"].get(
            "finalizers"), "KEDA's finalizer on the ScaledObject", 30)
        assert "finalizer.keda.sh" in finalizers
        again = live.deploy("apply", "--stage", "hk", "--manifests", manifests)
        assert again.returncode == 0, again.output
        assert "pruned HorizontalPodAutoscaler" not in again.stdout, again.stdout
        kept = live.admin.get(MANAGED["HorizontalPodAutoscaler"], namespace, hpa_name)
        assert kept is not None and kept["metadata"]["uid"] == hpa["metadata"]["uid"]
        assert not keda.log_lines("ValidatingAdmissionPolicy"), keda.log_lines("ValidatingAdmissionPolicy")[:3]
    finally:
        live.remove(*HK, name)


def test_objects_no_longer_rendered_are_pruned(live):
    name = "dt-prune"
    try:
        first = live.deploy("apply", "--stage", "hk", "--manifests", live.manifests(name, "hk", max_replicas=0))
        assert first.returncode == 0, first.output
        scaled = live.deploy("apply", "--stage", "hk", "--manifests", live.manifests(name, "hk", max_replicas=4))
        assert scaled.returncode == 0, scaled.output
        assert live.admin.get(MANAGED["ScaledObject"], HK[0], name) is not None
        # KEDA's HPA takes over from 2 pods: the Rollout does not drop to its default of 1 on the way.
        assert f"handed spec.replicas (2) of Rollout/{name} over to the HPA" in scaled.stdout
        assert live.admin.get(MANAGED["Rollout"], HK[0], name)["spec"]["replicas"] == 2
        fixed = live.deploy("apply", "--stage", "hk", "--manifests", live.manifests(name, "hk", max_replicas=0))
        assert fixed.returncode == 0, fixed.output
        assert f"pruned ScaledObject/{name} (no longer rendered)" in fixed.stdout
        assert live.admin.get(MANAGED["ScaledObject"], HK[0], name) is None
        assert live.admin.get(MANAGED["Rollout"], HK[0], name)["spec"]["replicas"] == 2
    finally:
        live.remove(*HK, name)


def test_a_field_the_api_does_not_know_is_refused_before_anything_changes(live):
    name = "dt-strict"
    manifests = live.manifests(name, "grey")
    path = manifests / "grey" / "deployment.yaml"
    deployment = yaml.safe_load(path.read_text())
    deployment["spec"]["template"]["spec"]["containers"][0]["memoryLimit"] = "8Gi"
    path.write_text(yaml.safe_dump(deployment))
    run = live.deploy("apply", "--stage", "grey", "--manifests", manifests)
    assert run.returncode == 2, run.output
    assert "memoryLimit: field not declared in schema" in run.stderr  # the apiserver's words for apply
    assert "Nothing was changed" in run.stderr
    assert live.objects(*GREY, name) == []


def test_a_route_served_by_another_service_is_refused(live):
    name = "dt-route"
    squatter = {"apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
                "metadata": {"name": "squatter", "namespace": OTHER_AB, "labels": {"service": "squatter"}},
                "spec": {"hosts": ["infer-hk.example.com"], "gateways": ["istio-ingress/podserve"],
                         "http": [{"match": [{"uri": {"prefix": "/grey/like/dt-ro"}}],
                                   "route": [{"destination": {"host": f"squatter.{OTHER_AB}.svc.cluster.local"}}]}]}}
    live.admin.apply(squatter)
    try:
        run = live.deploy("apply", "--stage", "grey", "--values", live.values(name))
        assert run.returncode == 3, run.output
        assert "Refused: the route collides with another service" in run.stderr
        assert f"VirtualService {OTHER_AB}/squatter" in run.stderr and "`service_name`" in run.stderr
        assert live.objects(*GREY, name) == []
    finally:
        live.admin.delete(MANAGED["VirtualService"], OTHER_AB, "squatter")


def test_two_deploys_at_once_the_second_waits_or_refuses_naming_the_holder(live):
    name = "dt-lock"
    lease = f"podserve-deploy.{name}"
    try:
        # The first holds the lock until the test ends it (never ready, a budget nothing here comes near), however
        # slowly the machine starts the other two.
        first = live.start("apply", "--stage", "grey", "--budget", "300",
                           "--manifests", live.manifests(name, "grey", simulate="never-ready"))
        first_seen = read_until(first, lambda line: line.startswith("["), "the first deploy waiting for its rollout")
        refused = live.deploy("apply", "--stage", "grey", "--lock-wait", "1", "--manifests", live.manifests(name, "grey"))
        waited = live.start("apply", "--stage", "grey", "--lock-wait", "120", "--manifests", live.manifests(name, "grey"))
        waited_seen = read_until(waited, lambda line: line.startswith(f"waiting for the deploy lock {GREY[0]}/{lease}"),
                                 "the second deploy waiting for the lock")
        first.send_signal(signal.SIGTERM)  # its job cancelled: it ends and frees the lock
        first_out, waited_out = finish(first, first_seen), finish(waited, waited_seen)
        assert refused.returncode == 3, refused.output
        assert "Refused: another deploy of this service and stage is running" in refused.stderr
        assert f"(pid {first.pid})" in refused.stderr
        assert first.returncode == 1 and "INTERRUPTED: SIGTERM" in first_out, first_out
        assert waited.returncode == 0, waited_out
        assert "serving: revision" in waited_out
        assert live.admin.get(LEASES, GREY[0], lease) is None
    finally:
        live.deploy("delete", "--stage", "grey", "--service", name, "--team", "like")


def test_a_freeze_window_refuses_with_its_end_unless_forced_with_a_reason(live, tmp_path):
    name = "dt-freeze"
    conf = tmp_path / "conf"
    shutil.copytree(default_conf_dir(), conf)
    policy = yaml.safe_load((conf / "deploy.yaml").read_text())
    policy["freeze_windows"]["hk"] = [{"start": "2000-01-01 00:00", "end": "2100-01-01 00:00", "timezone": "UTC",
                                       "reason": "test freeze"}]
    (conf / "deploy.yaml").write_text(yaml.safe_dump(policy))
    manifests = live.manifests(name, "ab")
    try:
        refused = live.deploy("apply", "--stage", "ab", "--conf", conf, "--manifests", manifests)
        assert refused.returncode == 3, refused.output
        assert "Refused: the region is in a deploy freeze" in refused.stderr
        assert "this window ends at 2100-01-01T00:00:00+00:00" in refused.stderr
        assert live.objects(*AB, name) == []
        forced = live.deploy("apply", "--stage", "ab", "--conf", conf, "--manifests", manifests, "--force",
                             "--reason", "hotfix INC-42")
        assert forced.returncode == 0, forced.output
        for kind in ("Deployment", "Service", "VirtualService"):
            annotations = live.admin.get(MANAGED[kind], AB[0], name)["metadata"]["annotations"]
            assert annotations["podserve.io/forced-reason"].startswith("hotfix INC-42 (forced by ")
    finally:
        live.deploy("delete", "--stage", "ab", "--service", name, "--team", "like")
        assert live.objects(*AB, name) == []


# --- helpers --------------------------------------------------------------------------------------

#: Nodes (cluster-scoped), for cordoning; only the admin may touch them.
_NODES = Kind("v1", "nodes", namespaced=False)
