"""Faults during a production deploy on the control plane: none ends half-deployed or silent (issue 26).

Real: the apiserver, the deploy tool as a subprocess with team like's production account, its
Lease, SIGTERM as the GitLab runner sends it when a job is cancelled. Injected: a 500 on the 3rd
apply (tests/deploy/fault_proxy.py, a proxy in front of the apiserver), and another holder taking
the Lease over (the admin writes it, as a second deploy would). Simulated: the kubelet (kwok;
`never-ready` keeps the new pods unready so the tool is mid-wait). The last tests need no cluster: they drive
commands.apply against an in-memory API (tests/deploy/fake_kube.py) to cut the rollback itself short.
"""

from __future__ import annotations

import signal
import time
from datetime import datetime, timezone
from pathlib import Path

import pytest
import yaml

from fake_kube import Deploy
from fault_proxy import FaultProxy
from live import Live, finish, read_until
from podserve.testbed.deploy_policy import unfrozen_conf
from podserve.testbed.processes import poll_until
from podserve.tooling.deploy import budget
from podserve.tooling.deploy.errors import ClusterError, Terminated
from podserve.tooling.deploy.kube import LEASES, MANAGED
from receiver import Receiver




@pytest.fixture
def live(control_plane, rollouts_controller, tmp_path) -> Live:
    return Live(control_plane, tmp_path)


def waiting_for_rollout(process) -> list[str]:
    """Read the tool's stdout until its first progress line ("[   0s] ..."): it has applied and is waiting."""
    return read_until(process, lambda line: line.startswith("["), "the deploy waiting for its rollout")


def image(live: Live, name: str) -> str:
    deployment = live.admin.get(MANAGED["Rollout"], live.namespace("hk"), name)
    return deployment["spec"]["template"]["spec"]["containers"][0]["image"]




def first_revision(live: Live, name: str) -> None:
    run = live.deploy("apply", "--stage", "hk", "--manifests", live.manifests(name, "hk", "v1"))
    assert run.returncode == 0, run.output


def test_a_500_on_the_third_apply_rolls_back_notifies_and_frees_the_lock(live):
    name, receiver = "dt-fault-500", Receiver()
    try:
        first_revision(live, name)
        with FaultProxy(live.kubeconfig("production"), fail_apply=3) as proxy:
            run = live.deploy("apply", "--stage", "hk", "--manifests", live.manifests(name, "hk", "v2"),
                              KUBECONFIG=str(proxy.kubeconfig), PODSERVE_NOTIFY_URL=receiver.url)
        print(f"500 on apply 3: exit {run.returncode} after {run.seconds:.1f} s ({proxy.applies} applies)")
        assert len(proxy.failed) == 1 and run.returncode == 1, run.output
        assert "INTERRUPTED: the API server answered 500" in run.stdout and "injected fault" in run.stdout
        assert "rolling back to the previous revision (1)" in run.stdout
        assert "rolled back: the previous revision is serving again" in run.stdout
        assert image(live, name).endswith(":v1")
        assert [b["outcome"] for b in receiver.bodies] == ["interrupted"]
        assert "injected fault" in receiver.bodies[0]["diagnosis"] and "rolled back" in receiver.bodies[0]["diagnosis"]
        assert live.admin.get(LEASES, live.namespace("hk"), f"podserve-deploy.{name}") is None
    finally:
        receiver.stop()
        live.remove(live.namespace("hk"), "hk", name)


def test_sigterm_mid_wait_leaves_the_release_to_argo_notifies_and_frees_the_lock(live):
    """A cancelled job (SIGTERM) is not the controller: the Rollout keeps revision 2 (Argo goes on with it), the job
    says so, notifies `interrupted`, frees the lock, exit 1; `rollback` then puts revision 1 back."""
    name, receiver = "dt-fault-term", Receiver()
    try:
        first_revision(live, name)
        process = live.start("apply", "--stage", "hk", "--budget", "300",
                             "--manifests", live.manifests(name, "hk", "v2", simulate="never-ready"),
                             PODSERVE_NOTIFY_URL=receiver.url)
        seen = waiting_for_rollout(process)
        assert image(live, name).endswith(":v2")
        started = time.monotonic()
        process.send_signal(signal.SIGTERM)  # what the runner sends a cancelled job
        output = finish(process, seen)
        print(f"SIGTERM mid-wait: exit {process.returncode}, {time.monotonic() - started:.1f} s after the signal")
        assert process.returncode == 1, output
        assert "STOPPED: SIGTERM" in output and "release goes on in the cluster" in output
        assert "rolling back" not in output and image(live, name).endswith(":v2")
        assert [b["outcome"] for b in receiver.bodies] == ["interrupted"]
        assert "SIGTERM" in receiver.bodies[0]["diagnosis"]
        assert live.admin.get(LEASES, live.namespace("hk"), f"podserve-deploy.{name}") is None
        back = live.deploy("rollback", "--stage", "hk", "--service", name, "--team", "like")
        assert back.returncode == 0, back.output
        assert image(live, name).endswith(":v1")
    finally:
        receiver.stop()
        live.remove(live.namespace("hk"), "hk", name)


def take_over(live: Live, namespace: str, lease: str, holder: str) -> None:
    """Write the Lease as another holder would: with the resourceVersion read, again on a 409 (the tool renewed it
    between the read and the write, as it does every second here)."""
    for _ in range(20):
        taken = live.admin.get(LEASES, namespace, lease)
        now = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        taken["spec"].update(holderIdentity=holder, acquireTime=now, renewTime=now, leaseDurationSeconds=600)
        try:
            live.admin.request("PUT", LEASES.path(namespace, lease), body=taken)
            return
        except ClusterError as exc:
            if exc.status != 409:
                raise
    raise AssertionError(f"{namespace}/{lease} could not be taken over in 20 tries: each write conflicted")


def test_a_lease_taken_over_mid_deploy_stops_without_rolling_back_under_the_new_holder(live, tmp_path):
    name, receiver = "dt-fault-lease", Receiver()
    conf = tmp_path / "conf"
    unfrozen_conf(conf)  # today may be in a freeze window
    policy = yaml.safe_load((conf / "deploy.yaml").read_text())
    policy["lock_lease_seconds"] = 3  # renewed every second, so the takeover is seen at once
    (conf / "deploy.yaml").write_text(yaml.safe_dump(policy))
    namespace, lease = live.namespace("hk"), f"podserve-deploy.{name}"
    try:
        first_revision(live, name)
        process = live.start("apply", "--stage", "hk", "--budget", "300", "--conf", conf,
                             "--manifests", live.manifests(name, "hk", "v2", simulate="never-ready"),
                             PODSERVE_NOTIFY_URL=receiver.url)
        seen = waiting_for_rollout(process)
        take_over(live, namespace, lease, "another-deploy (pid 1)")
        output = finish(process, seen)
        assert process.returncode == 1, output
        assert "STOPPED: the deploy lock" in output and "taken over by another-deploy (pid 1)" in output
        assert "rolling back" not in output
        assert live.admin.get(LEASES, namespace, lease)["spec"]["holderIdentity"] == "another-deploy (pid 1)"
        assert image(live, name).endswith(":v2")  # left to the new holder, not rolled back underneath it
        assert [b["outcome"] for b in receiver.bodies] == ["interrupted"]
        assert "another-deploy (pid 1)" in receiver.bodies[0]["diagnosis"]
    finally:
        receiver.stop()
        live.admin.delete(LEASES, namespace, lease)
        live.remove(namespace, "hk", name)


def test_an_hpa_scaled_service_rolls_out_with_the_budget_of_its_live_replicas(live):
    """Issue 26 must show 2: live 6 replicas (the HPA's count; simulated by the admin scaling, as the HPA would),
    minReplicas 2: the wait budgets for 6 pods and the rollout completes, never a false timeout."""
    name, namespace = "dt-hpa-six", live.namespace("hk")
    try:
        first = live.deploy("apply", "--stage", "hk", "--manifests", live.manifests(name, "hk", "v1", max_replicas=8))
        assert first.returncode == 0, first.output
        live.admin.request("PATCH", MANAGED["Rollout"].path(namespace, name) + "/scale",
                           body={"spec": {"replicas": 6}}, content_type="application/merge-patch+json")
        run = live.deploy("apply", "--stage", "hk", "--manifests", live.manifests(name, "hk", "v2", max_replicas=8))
        assert run.returncode == 0, run.output
        deadline = live.admin.get(MANAGED["Rollout"], namespace, name)["spec"]["progressDeadlineSeconds"]
        assert f"waiting up to {budget.rollout_seconds(deadline, 6)} s for the rollout" in run.stdout
        deployment = live.admin.get(MANAGED["Rollout"], namespace, name)
        assert deployment["spec"]["replicas"] == 6 and deployment["status"]["updatedReplicas"] == 6
        assert image(live, name).endswith(":v2") and "6/6 pods ready" in run.stdout
    finally:
        live.remove(namespace, "hk", name)


def test_a_rollout_undo_by_hand_is_reported_by_the_next_deploy_and_status_names_what_runs(live, rollouts_controller):
    """Issue 26 must show 3 (first half): an undo by hand between two deploys (Argo's plugin: `kubectl argo rollouts
    undo`)."""
    name, namespace = "dt-drift-undo", live.namespace("hk")
    try:
        first_revision(live, name)
        second = live.deploy("apply", "--stage", "hk", "--manifests", live.manifests(name, "hk", "v2"))
        assert second.returncode == 0, second.output
        undo = rollouts_controller.plugin("undo", name, "-n", namespace)
        assert undo.returncode == 0, undo.stderr
        poll_until(lambda: image(live, name).endswith(":v1"), "the undo", 30, every=0.2)
        status = live.deploy("status", "--stage", "hk", "--service", name, "--team", "like")
        assert "revision 2" in status.stdout  # what the history recorded ...
        assert "really running: revision 1 (" in status.stdout and ":v1)" in status.stdout  # ... and what runs
        third = live.deploy("apply", "--stage", "hk", "--manifests", live.manifests(name, "hk", "v3"))
        assert third.returncode == 0, third.output
        assert "NOTICED: the live Rollout runs revision 1's pod template" in third.stdout
        assert "not recorded revision 2" in third.stdout and "`kubectl rollout undo`" in third.stdout
    finally:
        live.remove(namespace, "hk", name)


def killed_mid_rollout(live: Live, name: str, tmp_path: Path) -> Path:
    """Deploy revision 1, then revision 2 (never ready) killed with SIGKILL mid-rollout; return the conf/ the next
    deploys use: no freeze window (today may be in one), the killed deploy's Lease free 3 s after it is first seen."""
    conf = tmp_path / "conf"
    unfrozen_conf(conf)
    policy = yaml.safe_load((conf / "deploy.yaml").read_text())
    policy["lock_lease_seconds"] = 3
    (conf / "deploy.yaml").write_text(yaml.safe_dump(policy))
    first_revision(live, name)
    process = live.start("apply", "--stage", "hk", "--budget", "300", "--conf", conf,
                         "--manifests", live.manifests(name, "hk", "v2", simulate="never-ready"))
    seen = waiting_for_rollout(process)
    process.kill()
    finish(process, seen)
    return conf


def test_a_deploy_killed_with_sigkill_is_reported_at_the_next_start(live, tmp_path):
    """Issue 26 must show 3 (second half): nothing runs at SIGKILL; the next start notices and says what runs."""
    name, namespace = "dt-drift-kill", live.namespace("hk")
    try:
        conf = killed_mid_rollout(live, name, tmp_path)
        status = live.deploy("status", "--stage", "hk", "--service", name, "--team", "like")
        assert "NOTICED: revision 2 (" in status.stdout and "never finished: that deploy was killed" in status.stdout
        assert "really running: revision 2 (" in status.stdout and ":v2)" in status.stdout
        after = live.deploy("apply", "--stage", "hk", "--conf", conf, "--manifests", live.manifests(name, "hk", "v3"))
        assert after.returncode == 0, after.output
        assert "took over the deploy lock from" in after.stdout and "which stopped renewing it" in after.stdout
        assert "NOTICED: revision 2 (" in after.stdout and "never finished" in after.stdout
        assert "NOTICED: revision" not in live.deploy("status", "--stage", "hk", "--service", name, "--team",
                                                       "like").stdout  # recorded again: history is true
    finally:
        live.remove(namespace, "hk", name)


def test_a_failed_deploy_after_a_killed_one_puts_back_what_ran_before_the_killed_one(live, tmp_path):
    """It must show 5: deploy 2 killed with SIGKILL mid-rollout (its template half-applied), deploy 3 fails: the
    rollback puts revision 1's template back (what ran before the killed deploy, history.restore), never revision 2's
    half-applied objects, and `status` says revision 1 runs, as recorded."""
    name, namespace = "dt-kill-then-fail", live.namespace("hk")
    try:
        conf = killed_mid_rollout(live, name, tmp_path)
        assert image(live, name).endswith(":v2")  # the killed deploy's template is what the Deployment holds
        # The budget only has to run out (never-ready) and then cover the rollback, which waits on nothing: revision
        # 1's two pods never stopped (the rollout surges, none unavailable). 8 s, as test_live's never-ready case.
        failed = live.deploy("apply", "--stage", "hk", "--budget", "8", "--conf", conf,
                             "--manifests", live.manifests(name, "hk", "v3", simulate="never-ready"))
        print(f"killed deploy 2, failed deploy 3: exit {failed.returncode} after {failed.seconds:.1f} s")
        assert failed.returncode == 1, failed.output
        assert "rolling back to the previous revision (1)" in failed.stdout, failed.stdout
        assert "rolled back: the previous revision is serving again" in failed.stdout
        assert image(live, name).endswith(":v1")  # revision 1's template, not the killed revision 2's
        status = live.deploy("status", "--stage", "hk", "--service", name, "--team", "like")
        assert status.returncode == 0, status.output
        assert f"{name} in hk (namespace {namespace}): revision 1, " in status.stdout and ":v1, applied" in status.stdout
        assert "really running" not in status.stdout and "NOTICED" not in status.stdout  # what runs is what is recorded
    finally:
        live.remove(namespace, "hk", name)


def test_a_second_project_of_the_team_with_the_same_service_name_is_refused(live):
    """It must show 5: project B of team like deploys a service named as project A's: refused (exit 3) by the live
    objects' podserve.io/project, before anything changed; A's service is untouched and A redeploys as before."""
    name, namespace = "dt-two-projects", live.namespace("hk")
    try:
        first = live.deploy("apply", "--stage", "hk", "--values", live.values(name), CI_PROJECT_PATH="models/like/a")
        assert first.returncode == 0, first.output
        before = live.versions(namespace, "hk", name)
        second = live.deploy("apply", "--stage", "hk", "--values", live.values(name), CI_PROJECT_PATH="models/like/b")
        print(f"a second project's service of the same name: exit {second.returncode} after {second.seconds:.1f} s")
        assert second.returncode == 3, second.output
        assert "Refused: another GitLab project of the team deploys this service" in second.stderr
        assert "belongs to GitLab project models/like/a, not this one (models/like/b)" in second.stderr
        assert live.versions(namespace, "hk", name) == before  # not one resourceVersion moved
        again = live.deploy("apply", "--stage", "hk", "--values", live.values(name), CI_PROJECT_PATH="models/like/a")
        assert again.returncode == 0, again.output
    finally:
        live.remove(namespace, "hk", name)


def test_a_deploy_that_could_outlast_the_ci_job_s_timeout_is_refused_before_any_change(live):
    """GitLab's timeout is static, the waits come from value.py: the tool compares them first ($CI_JOB_TIMEOUT)."""
    name, namespace = "dt-job-timeout", live.namespace("hk")
    try:
        run = live.deploy("apply", "--stage", "hk", "--manifests", live.manifests(name, "hk", "v1"),
                          CI_JOB_TIMEOUT="300")
        assert run.returncode == 2, run.output
        assert "more than the job's timeout of 300 s ($CI_JOB_TIMEOUT) leaves it" in run.stderr
        assert "init_delay_second" in run.stderr and "Nothing was changed" in run.stderr
        assert live.objects(namespace, "hk", name) == []
    finally:
        live.remove(namespace, "hk", name)


# --- without a cluster: the rollback itself cut short (commands.apply on tests/deploy/fake_kube.py) -------------

ROLLBACK_FIX = ("finish it with `python -m podserve.tooling.deploy rollback --stage hk --service text-direction "
                "--team like`")


def rolling_back(deploy: Deploy) -> bool:
    return any(line.startswith("rolling back to the previous revision") for line in deploy.said)


def failed_line(deploy: Deploy) -> str:
    (line,) = [line for line in deploy.said if line.startswith("FAILED: the rollback did not finish")]
    return line


def test_a_500_during_the_rollback_of_a_failed_rollout_is_reported_notified_and_left_for_rollback(monkeypatch):
    """A 500 on the DestinationRule while a failed rollout rolls back: the other objects are still put back, one line
    says which objects hold which revision and the command that finishes it, the notification says
    rollback_failed, exit 1; the history keeps revision 2 pending, so `rollback` puts revision 1 back."""
    deploy = Deploy(monkeypatch)
    assert deploy.apply("v1", "serving") == 0

    def fail(verb, doc):
        if rolling_back(deploy) and doc["kind"] == "DestinationRule":
            raise ClusterError(500, "PATCH destinationrules: Internal error")
    deploy.kube.fail = fail
    assert deploy.apply("v2", "failed", "serving") == 1
    line = failed_line(deploy)
    assert line.startswith("FAILED: the rollback did not finish (the API server answered 500: PATCH destinationrules")
    # those after the 500 too; the Rollout last, after the route and rule it names (commands.mesh_steps)
    assert ("hk is half rolled back: AnalysisTemplate/text-direction-verdict, Service/text-direction, "
            "VirtualService/text-direction, PodDisruptionBudget/text-direction, PodMonitor/text-direction, "
            "Rollout/text-direction are revision 1's again; DestinationRule/text-direction is still revision 2's") \
        in line
    assert line.endswith(ROLLBACK_FIX)
    assert deploy.image().endswith(":v1")
    assert [(b["outcome"], b["revision"]) for b in deploy.sent] == [("rollback_failed", 2)]
    assert "OOMKilled" in deploy.sent[0]["diagnosis"] and "DestinationRule/text-direction is still revision 2's" \
        in deploy.sent[0]["diagnosis"]
    history = deploy.history()
    assert (history.pending.number, history.current.number, history.restore.number) == (2, 1, 1)

    deploy.kube.fail = lambda verb, doc: None
    assert deploy.rollback("serving") == 0, deploy.output
    assert "revision 2 (" in deploy.output and "never finished" in deploy.output
    assert "rolling back to the previous revision (1)" in deploy.output
    assert ("apply", "DestinationRule", "text-direction") in deploy.kube.writes[-6:]
    history = deploy.history()
    assert history.pending is None and history.current.number == 1  # put back, not swapped with revision 0
    assert [(b["outcome"], b["revision"]) for b in deploy.sent] == [("rolled_back", 1)]


def test_sigterm_during_the_rollback_of_a_failed_rollout_puts_every_object_back_and_says_so(monkeypatch):
    """SIGTERM (a cancelled job) on the rollback's second write: the cut write is sent again and the rest follow, the
    rollback's wait is skipped, exit 1, notified rollback_failed; the next deploy notices the unfinished revision."""
    deploy = Deploy(monkeypatch)
    assert deploy.apply("v1", "serving") == 0
    writes = []

    def fail(verb, doc):
        if rolling_back(deploy) and verb == "apply":
            writes.append(doc["kind"])
            if len(writes) == 2:
                raise Terminated("SIGTERM")
    deploy.kube.fail = fail
    assert deploy.apply("v2", "failed") == 1  # no verdict queued for the rollback: its wait is not started
    line = failed_line(deploy)
    assert line.startswith("FAILED: the rollback did not finish (SIGTERM: the job was cancelled or timed out): every "
                           "object of hk is revision 1's again (") and "rollout was not waited for" in line
    assert line.endswith(ROLLBACK_FIX)
    assert writes == ["AnalysisTemplate", "Service", "Service", "VirtualService", "DestinationRule",
                      "PodDisruptionBudget", "PodMonitor", "Rollout"]
    assert [b["outcome"] for b in deploy.sent] == ["rollback_failed"] and "SIGTERM" in deploy.sent[0]["diagnosis"]
    assert deploy.history().pending.number == 2

    deploy.kube.fail = lambda verb, doc: None
    assert deploy.apply("v3", "serving") == 0
    assert any(line.startswith("NOTICED: revision 2 (") and "never finished" in line for line in deploy.said)
    assert deploy.history().pending is None


def test_an_interrupted_deploy_whose_rollback_fails_too_stays_pending(monkeypatch):
    """A 500 on the deploy's third write, then a 500 in its rollback: reported and notified as interrupted, and the
    history keeps the revision pending (it used to forget it before rolling back)."""
    deploy = Deploy(monkeypatch)
    assert deploy.apply("v1", "serving") == 0

    def fail(verb, doc):
        if doc["kind"] == ("DestinationRule" if rolling_back(deploy) else "VirtualService"):
            raise ClusterError(500, "injected fault")
    deploy.kube.fail = fail
    assert deploy.apply("v2") == 1
    assert "INTERRUPTED: the API server answered 500: injected fault" in deploy.said
    assert "DestinationRule/text-direction is still revision 2's" in failed_line(deploy)
    assert [b["outcome"] for b in deploy.sent] == ["interrupted"]
    assert "the rollback failed too" in deploy.sent[0]["diagnosis"]
    assert deploy.history().pending.number == 2


def test_a_rollback_whose_lock_is_lost_stops_between_writes(monkeypatch):
    """As a deploy does, a rollback checks its lock before each write: taken over mid-rollback (simulated: check
    raises LockLost from the third write of the rollback on), it writes nothing more and leaves the stage to the new
    holder, exit 1, notified interrupted."""
    from podserve.tooling.deploy import lock
    from podserve.tooling.deploy.errors import LockLost

    deploy = Deploy(monkeypatch)
    assert deploy.apply("v1", "serving") == 0
    written = []
    real_check = lock.DeployLock.check

    def changes() -> int:  # the lock's own Lease (freed at the end) left out
        return sum(1 for write in deploy.kube.writes if write[1] != "leases")

    def check(self):
        if rolling_back(deploy):
            written.append(changes())
            if len(written) >= 3:
                raise LockLost("the deploy lock was taken over by another deploy")
        return real_check(self)
    monkeypatch.setattr(lock.DeployLock, "check", check)
    assert deploy.apply("v2", "failed", "serving") == 1
    assert any(line.startswith("STOPPED: the deploy lock was taken over") for line in deploy.said), deploy.output
    assert changes() == written[2]  # nothing written once the lock was gone
    assert [b["outcome"] for b in deploy.sent] == ["interrupted"]
