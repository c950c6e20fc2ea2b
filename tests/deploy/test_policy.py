"""Deploy policy from conf/deploy.yaml: freeze windows (weekly or once, per time zone), checked as strictly as conf/."""

from __future__ import annotations

import shutil
from datetime import datetime, timezone

import pytest
import yaml

from podserve.tooling.conf import ConfError, default_conf_dir, load_conf, load_deploy_policy
from podserve.tooling.deploy import commands, freeze
from podserve.tooling.deploy.errors import BadInput, Refused
from podserve.tooling.deploy.target import Target

UTC = timezone.utc


def at(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def test_the_repository_s_policy_loads():
    policy = load_deploy_policy()
    assert policy.lock_wait_seconds >= 60 and 60 <= policy.scheduling_grace_seconds <= 120
    assert "grey" in policy.exempt_stages


@pytest.mark.parametrize("now, ends", [
    ("2026-11-20T10:00:00", "2026-11-21T00:00:00+08:00"),   # Friday 18:00 in Hong Kong
    ("2026-11-20T15:59:00", "2026-11-21T00:00:00+08:00"),   # Friday 23:59 there
    ("2026-11-20T09:59:00", None),                          # Friday 17:59 there
    ("2026-11-20T16:00:00", None),                          # Saturday 00:00 there: over
])
def test_a_weekly_window_in_its_time_zone(now, ends):
    found = freeze.ends_at("fri 18:00", "sat 00:00", "Asia/Hong_Kong", at(now))
    assert (found.isoformat() if found else None) == ends


def test_a_weekly_window_may_wrap_around_the_week():
    assert freeze.ends_at("sun 22:00", "mon 06:00", "UTC", at("2026-11-23T05:00:00")) == at("2026-11-23T06:00:00")
    assert freeze.ends_at("sun 22:00", "mon 06:00", "UTC", at("2026-11-23T07:00:00")) is None


def test_a_window_once():
    window = ("2026-12-24 00:00", "2026-12-27 00:00", "Europe/Amsterdam")
    assert freeze.ends_at(*window, at("2026-12-25T12:00:00")).isoformat() == "2026-12-27T00:00:00+01:00"
    assert freeze.ends_at(*window, at("2026-12-27T00:00:00")) is None


@pytest.mark.parametrize("start, end, zone, says", [
    ("fri 18:00", "sat 00:00", "Mars/Olympus", "not an IANA time zone"),
    ("friday 18:00", "sat 00:00", "UTC", "both be weekly"),
    ("fri 18:00", "2026-12-27 00:00", "UTC", "both be weekly"),
    ("2026-12-27 00:00", "2026-12-24 00:00", "UTC", "must be after start"),
    ("fri 18:00", "fri 18:00", "UTC", "two different times"),
])
def test_a_wrong_window_is_named(start, end, zone, says):
    assert says in freeze.problem(start, end, zone)


def write_policy(tmp_path, **changes):
    folder = tmp_path / "conf"
    shutil.copytree(default_conf_dir(), folder)
    data = yaml.safe_load((folder / "deploy.yaml").read_text())
    data.update(changes)
    (folder / "deploy.yaml").write_text(yaml.safe_dump(data))
    return folder


def test_the_policy_refuses_unknown_keys_regions_stages_and_bad_windows(tmp_path):
    folder = write_policy(tmp_path, lock_wiat_seconds=3, exempt_stages=["gray"],
                          freeze_windows={"mars": [], "hk": [{"start": "fri 18:00", "end": "x", "timezone": "UTC",
                                                              "reason": "r"}]})
    with pytest.raises(ConfError) as caught:
        load_deploy_policy(folder)
    text = str(caught.value)
    assert "lock_wiat_seconds" in text and "is not a known key" in text


def test_the_policy_names_each_wrong_value(tmp_path):
    folder = write_policy(tmp_path, exempt_stages=["gray"],
                          freeze_windows={"mars": [], "hk": [{"start": "fri 18:00", "end": "x", "timezone": "UTC",
                                                              "reason": "r"}]})
    with pytest.raises(ConfError) as caught:
        load_deploy_policy(folder)
    text = str(caught.value)
    assert "'gray' is not a stage" in text
    assert "freeze_windows.mars" in text and "is not a region" in text
    assert "freeze_windows.hk[0]" in text and "both be weekly" in text


def always_frozen(tmp_path):
    return load_deploy_policy(write_policy(tmp_path, freeze_windows={"hk": [
        {"start": "2000-01-01 00:00", "end": "2100-01-01 00:00", "timezone": "UTC", "reason": "test freeze"}]}))


def test_apply_inside_a_freeze_is_refused_with_its_end(tmp_path):
    policy, conf = always_frozen(tmp_path), load_conf()
    with pytest.raises(Refused) as caught:
        commands.check_freeze(policy, Target("svc", conf.stages["hk"], "like"), commands.Options(),
                              at("2026-11-22T10:00:00"))
    assert caught.value.exit_code == 3
    assert "Refused: the region is in a deploy freeze" in caught.value.message
    assert "ends at 2100-01-01T00:00:00+00:00" in caught.value.message and "--force --reason" in caught.value.message


def test_force_needs_a_reason_and_records_it(tmp_path):
    policy, conf = always_frozen(tmp_path), load_conf()
    target = Target("svc", conf.stages["hk"], "like")
    with pytest.raises(BadInput):
        commands.check_freeze(policy, target, commands.Options(force=True), at("2026-11-22T10:00:00"), lambda _: None)
    reason = commands.check_freeze(policy, target, commands.Options(force=True, reason="hotfix INC-1"),
                                   at("2026-11-22T10:00:00"), lambda _: None)
    assert reason.startswith("hotfix INC-1 (forced by ")


def test_exempt_stages_deploy_inside_a_freeze(tmp_path):
    policy, conf = always_frozen(tmp_path), load_conf()
    assert commands.check_freeze(policy, Target("svc", conf.stages["grey"], "like"), commands.Options(),
                                 at("2026-11-22T10:00:00")) == ""


def test_a_deploy_that_would_still_run_when_a_window_starts_is_refused(tmp_path):
    """Issue 57: a canary's steps may take long; the freeze windows must hold its worst case. Friday 17:30 in Hong
    Kong, 30 minutes before the repository's window (fri 18:00): a rolling update goes, a deploy that may last 45
    minutes is refused, naming when the window would start; 29 minutes still fit."""
    conf, policy = load_conf(), load_deploy_policy()
    target, now = Target("svc", conf.stages["hk"], "like"), at("2026-11-20T09:30:00")  # Friday 17:30 in Hong Kong
    assert any(w.start == "fri 18:00" for w in policy.windows_for("hk"))
    assert commands.check_freeze(policy, target, commands.Options(), now) == ""
    assert commands.check_freeze(policy, target, commands.Options(), now, lasting=29 * 60) == ""
    with pytest.raises(Refused) as caught:
        commands.check_freeze(policy, target, commands.Options(), now, lasting=45 * 60)
    assert caught.value.exit_code == 3
    assert "this deploy may take up to 2700 s (its canary's steps at their worst) and would still run when it " \
           "starts, at about 2026-11-20 10:00 UTC" in caught.value.message


def test_the_span_a_canary_may_take_counts_every_step_and_the_rollout_and_rollback(tmp_path):
    """commands.deploy_span: 0 without canary_steps (the window is checked at the start only, as before) or for grey;
    with canary_steps, the canary's worst case plus the rollout and the rollback, as the job's time counts them."""
    from podserve.tooling.deploy import budget
    from podserve.tooling.deploy.target import from_values

    conf, policy = load_conf(), load_deploy_policy()
    values = tmp_path / "value.py"
    values.write_text((default_conf_dir().parent / "value.py").read_text() + "\ncanary_steps = [10, 50]\n")
    plain = from_values(default_conf_dir().parent / "value.py", conf, conf.stages["hk"], "t")
    assert commands.deploy_span(plain, policy) == 0
    assert commands.deploy_span(from_values(values, conf, conf.stages["grey"], "t"), policy) == 0
    target = from_values(values, conf, conf.stages["hk"], "t")
    deployment = target.deployment()
    replicas = deployment["spec"]["replicas"]
    steps = commands.canary_worst_seconds(target, list(target.objects), policy, replicas)
    rollout, rollback, total = budget.deploy_job_seconds(deployment["spec"]["progressDeadlineSeconds"], replicas, 1,
                                                         True, 0, steps)
    assert steps > 0 and commands.deploy_span(target, policy) == total == rollout + rollback + steps + \
        budget.JOB_MARGIN_SECONDS
