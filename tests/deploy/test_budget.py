"""One rollout budget from value.py: rendered as progressDeadlineSeconds and waited for by the tool."""

from __future__ import annotations

import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from fake_kube import Deploy
from podserve.tooling.conf import load_conf, load_deploy_policy
from podserve.tooling.deploy import budget, commands
from podserve.tooling.deploy.errors import BadInput
from podserve.tooling.deploy.history import as_applied
from podserve.tooling.deploy.kube import LEASES
from podserve.tooling.deploy.lock import DeployLock, lease_name
from podserve.tooling.deploy.target import from_values

REPO = Path(__file__).resolve().parents[2]


def test_the_budget_grows_with_init_delay_second_and_the_replicas():
    assert budget.progress_deadline_seconds(60, 5) == budget.POD_START_ALLOWANCE_SECONDS + 60 + 5
    assert budget.progress_deadline_seconds(61, 5) == budget.POD_START_ALLOWANCE_SECONDS + 65 + 5
    assert budget.rollout_seconds(185, 1) == 185 + budget.ROLLOUT_MARGIN_SECONDS
    assert budget.rollout_seconds(185, 4, max_surge=1) == 4 * 185 + budget.ROLLOUT_MARGIN_SECONDS
    assert budget.rollout_seconds(185, 4, max_surge=2) == 2 * 185 + budget.ROLLOUT_MARGIN_SECONDS


def test_the_rendered_deadline_and_the_tool_s_wait_come_from_the_same_place():
    conf = load_conf()
    target = from_values(REPO / "value.py", conf, conf.stages["hk"], "t")
    deployment = target.deployment()
    period = conf.platform.pod.probe_period_seconds
    deadline = budget.progress_deadline_seconds(60, period)  # the example's init_delay_second
    assert deployment["spec"]["progressDeadlineSeconds"] == deadline
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert container["startupProbe"]["failureThreshold"] == budget.startup_failure_threshold(60, period)
    settings = commands.wait_settings(target, conf, commands.Options(), list(target.objects))
    assert settings.budget_seconds == budget.rollout_seconds(deadline, deployment["spec"]["replicas"])
    assert settings.node_offer == "at most cpu 30, memory 120Gi, 4 x nvidia.com/gpu per node " \
                                  "(pool podserve.io/pool=gpu-2080ti in hk)"
    assert commands.wait_settings(target, conf, commands.Options(budget_seconds=7), []).budget_seconds == 7


def test_a_live_object_is_turned_back_into_what_was_applied():
    live = {"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "s", "namespace": "n", "uid": "u", "resourceVersion": "9", "generation": 1,
                         "creationTimestamp": "2026-01-01T00:00:00Z", "managedFields": [{}], "labels": {"a": "b"},
                         "annotations": {"kubectl.kubernetes.io/last-applied-configuration": "{}"}},
            "spec": {"ports": [{"port": 8080}]}, "status": {"loadBalancer": {}}}
    assert as_applied(live) == {"apiVersion": "v1", "kind": "Service",
                                "metadata": {"name": "s", "namespace": "n", "labels": {"a": "b"}},
                                "spec": {"ports": [{"port": 8080}]}}


def test_where_an_autoscaler_owns_the_replicas_the_budget_counts_its_live_pods(tmp_path):
    """KEDA's HPA (minReplicaCount 2) scaled to 6: the rollout replaces 6 pods, so the wait budgets for 6, not 2."""
    conf = load_conf()
    values = tmp_path / "value.py"
    values.write_text((REPO / "value.py").read_text().replace("max_replicas = 0 ", "max_replicas = 8 ", 1))
    target = from_values(values, conf, conf.stages["hk"], "t")
    deadline = target.deployment()["spec"]["progressDeadlineSeconds"]
    scaled = next(o for o in target.objects if o["kind"] == "ScaledObject")
    assert "replicas" not in target.deployment()["spec"] and scaled["spec"]["minReplicaCount"] == 2
    budget_for = lambda live: commands.wait_settings(target, conf, commands.Options(), list(target.objects),  # noqa
                                                     live).budget_seconds
    assert budget_for(6) == budget.rollout_seconds(deadline, 6)
    assert budget_for(1) == budget_for(None) == budget.rollout_seconds(deadline, 2)  # never below the minimum


# --- the job's timeout: what is left of it, not all of it ($CI_JOB_TIMEOUT less the time spent) -----------------

def rfc3339(seconds_ago: float) -> str:
    return (datetime.now(timezone.utc) - timedelta(seconds=seconds_ago)).strftime("%Y-%m-%dT%H:%M:%SZ")


def needs(target, conf, objects) -> float:
    """What the example's deploy may wait: its rollout, a rollback of all its pods but one (how far a failed rollout
    can have got), and the margin."""
    deadline = target.deployment()["spec"]["progressDeadlineSeconds"]
    pods = commands.rollout_pods(target, objects)
    return budget.deploy_job_seconds(deadline, pods, 1, True, 0)[2]


def test_the_time_the_job_already_ran_counts_against_its_timeout():
    """GitLab's timeout counts from the job's start ($CI_JOB_STARTED_AT): only what is left of it may be waited."""
    conf = load_conf()
    target = from_values(REPO / "value.py", conf, conf.stages["hk"], "t")
    objects = list(target.objects)
    needed = needs(target, conf, objects)
    check = lambda environ, opts=commands.Options(), **chosen: commands.check_job_timeout(  # noqa: E731
        target, conf, opts, objects, objects, None, environ, **chosen)
    check({"CI_JOB_TIMEOUT": "3600", "CI_JOB_STARTED_AT": rfc3339(3600 - needed - 60)})  # fits, 60 s to spare
    with pytest.raises(BadInput) as caught:
        check({"CI_JOB_TIMEOUT": "3600", "CI_JOB_STARTED_AT": rfc3339(3600 - needed + 60)})
    said = caught.value.message
    assert caught.value.exit_code == 2
    assert f"{needed:.0f} s in all, more than the job's timeout of 3600 s ($CI_JOB_TIMEOUT) leaves it" in said
    assert "timeout to at least" not in said  # never advice to edit the platform's .gitlab-ci.yml
    assert "have passed since the job started at" in said and "($CI_JOB_STARTED_AT)" in said
    assert "init_delay_second" in said and "Nothing was changed" in said
    # Without $CI_JOB_STARTED_AT, from the tool's own start (cli.main sets Options.started).
    with pytest.raises(BadInput, match="have passed since this tool started"):
        check({"CI_JOB_TIMEOUT": "3600"}, commands.Options(started=time.monotonic() - (3600 - needed + 60)))


def test_before_the_lock_the_lock_s_whole_wait_counts_too(tmp_path):
    """The audit's case, in a job whose timeout a variable lowered to 3000 s (render checks the pipeline file's hour):
    init_delay_second = 720 needs 2715 s (rollout 1720, rollback of one pod 875, margin 120), but a lock held by another
    deploy may first take 600 s: refused before waiting for it, naming the lock's wait."""
    conf = load_conf()
    values = tmp_path / "value.py"
    values.write_text((REPO / "value.py").read_text().replace("init_delay_second = 60 ", "init_delay_second = 720 ", 1))
    target = from_values(values, conf, conf.stages["hk"], "t")
    objects, environ = list(target.objects), {"CI_JOB_TIMEOUT": "3000", "CI_JOB_STARTED_AT": rfc3339(0)}
    assert needs(target, conf, objects) == 2715
    commands.check_job_timeout(target, conf, commands.Options(), objects, objects, None, environ)  # once it holds it
    with pytest.raises(BadInput) as caught:
        commands.check_job_timeout(target, conf, commands.Options(), objects, objects, None, environ, lock_wait=600)
    assert "and up to 600 s for the deploy lock, 3315 s in all" in caught.value.message
    assert "or deploy when no other deploy of it runs" in caught.value.message


def test_apply_refuses_before_waiting_for_a_held_lock_what_could_not_end_in_time(monkeypatch):
    deploy = Deploy(monkeypatch)
    target = deploy.target("v1")
    rollout_only = commands.wait_settings(target, deploy.conf, commands.Options(), list(target.objects)).budget_seconds
    lease = {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
             "metadata": {"name": lease_name(deploy.service), "namespace": deploy.namespace},
             "spec": {"holderIdentity": "another deploy (pid 1)", "leaseDurationSeconds": 60}}
    deploy.kube.request("POST", LEASES.path(deploy.namespace), body=lease)
    # The first deploy (nothing to roll back to) fits once it holds the lock, not with the lock's 3 s wait.
    monkeypatch.setenv("CI_JOB_TIMEOUT", str(int(rollout_only + budget.JOB_MARGIN_SECONDS + 1)))
    monkeypatch.setenv("CI_JOB_STARTED_AT", rfc3339(0))
    started = time.monotonic()
    with pytest.raises(BadInput, match="and up to 3 s for the deploy lock"):
        deploy.apply("v1", "serving", lock_wait_seconds=3)
    assert time.monotonic() - started < 3 and deploy.kube.writes == []


def test_apply_checks_again_once_it_holds_the_lock_with_the_real_time_left(monkeypatch):
    deploy = Deploy(monkeypatch)
    target = deploy.target("v1")
    rollout_only = commands.wait_settings(target, deploy.conf, commands.Options(), list(target.objects)).budget_seconds
    monkeypatch.setenv("CI_JOB_TIMEOUT", str(int(rollout_only + budget.JOB_MARGIN_SECONDS + 100)))
    monkeypatch.setenv("CI_JOB_STARTED_AT", rfc3339(0))
    waited = []
    acquire, real_now = DeployLock.acquire, commands._utc_now

    def slow_acquire(lock):  # the lock was held for 300 s by another deploy
        acquire(lock)
        waited.append(300)
    monkeypatch.setattr(DeployLock, "acquire", slow_acquire)
    monkeypatch.setattr(commands, "_utc_now", lambda: real_now() + timedelta(seconds=sum(waited)))
    with pytest.raises(BadInput, match=r"30\d s have passed since the job started"):
        deploy.apply("v1", "serving", lock_wait_seconds=1)
    assert waited == [300] and deploy.kube.writes == [("delete", "leases", lease_name(deploy.service))]  # freed


def test_a_canary_s_steps_at_their_worst_count_against_the_job_s_time(tmp_path):
    """Issue 57: a production canary (canary_steps) adds every step's pods, slow start, window and extensions to what
    the job may wait (canary.worst_seconds, as render's job-time check counts it); a job that holds the rollout and
    rollback alone is refused (exit 2) before any change once the steps are counted, naming them."""
    conf = load_conf()
    values = tmp_path / "value.py"
    values.write_text((REPO / "value.py").read_text() + "\ncanary_steps = [10, 50]\n")
    target = from_values(values, conf, conf.stages["hk"], "t")
    objects = list(target.objects)
    policy = load_deploy_policy()
    steps = commands.canary_worst_seconds(target, objects, policy, 3)
    deadline = target.deployment()["spec"]["progressDeadlineSeconds"]
    window = policy.verdict.window_seconds
    assert steps >= 2 * (1 + policy.verdict.max_extensions) * window + deadline \
        + policy.canary_scale_down_delay_seconds  # both steps' windows, one pod start, its pods serving on at its end
    assert commands.canary_worst_seconds(from_values(REPO / "value.py", conf, conf.stages["hk"], "t"),
                                list(from_values(REPO / "value.py", conf, conf.stages["hk"], "t").objects), policy,
                                3) == 0  # no canary_steps: a rolling update
    assert commands.canary_worst_seconds(from_values(values, conf, conf.stages["grey"], "t"),
                                list(from_values(values, conf, conf.stages["grey"], "t").objects), policy, 1) == 0
    needed = needs(target, conf, objects)
    environ = {"CI_JOB_TIMEOUT": str(needed + 60), "CI_JOB_STARTED_AT": rfc3339(0)}
    commands.check_job_timeout(target, conf, commands.Options(), objects, objects, None, environ)  # a rolling update
    with pytest.raises(BadInput) as caught:
        commands.check_job_timeout(target, conf, commands.Options(), objects, objects, None, environ,
                                   canary_seconds=steps)
    assert caught.value.exit_code == 2
    assert f"after up to {steps} s of its canary's steps, {needed + steps:.0f} s in all" in caught.value.message
