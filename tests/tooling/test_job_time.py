"""render refuses (exit 2) a stage whose rollout and rollback cannot fit the deploy job's fixed time (issue 56, It must
show 4): the job's hour (.gitlab-ci.yml `timeout: 1h`, conf/deploy.yaml ci_job_timeout_seconds) less the deploy lock's
600 s wait, the rollback budgeted from how far a failed rollout can have got (all its pods but one)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from manifest_helpers import REPO
from podserve.testbed.image.ci_jobs import concrete_jobs
from podserve.tooling import render
from podserve.tooling.conf import load_deploy_policy
from podserve.tooling.deploy import budget
from service_files import write_values


def run_render(path, out) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "podserve.tooling.render", "--all", "--values", str(path), "--out",
                           str(out)], cwd=REPO, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("changes, field, pods", [
    (dict(hk_replicas=7, init_delay_second=120), "hk_replicas", 7),
    (dict(hk_replicas=2, max_replicas=10, init_delay_second=120), "max_replicas", 10),  # an HPA's most
    (dict(ab_replicas=4, init_delay_second=600, gpu_num=0, gpu_memory=0), "ab_replicas", 4),
])
def test_a_rollout_and_rollback_that_cannot_fit_the_deploy_job_is_refused_naming_the_field_and_the_limit(
        tmp_path, changes, field, pods):
    done = run_render(write_values(tmp_path, **changes), tmp_path / "out")
    assert done.returncode == 2, done.stdout + done.stderr
    line = next((line for line in done.stderr.splitlines() if line.startswith(f"  - {field}: ")), "")
    assert f"{pods} pod(s) at init_delay_second = {changes['init_delay_second']}" in line, done.stderr
    assert "more than the deploy job's fixed 3600 s (.gitlab-ci.yml `timeout: 1h`" in line
    assert "the 600 s the deploy lock may wait (conf/deploy.yaml lock_wait_seconds)" in line
    assert f"lower {field} to at most " in line
    assert "Nothing was written." in done.stderr and not (tmp_path / "out").exists()


def test_six_replicas_at_init_delay_120_now_fit_with_the_rollback_budgeted_from_what_rolled_out(tmp_path, conf):
    """Refused by CI's deploy job alone before (6 x 245 s twice, the lock and the margin: 3720 s, with advice to edit the
    platform's .gitlab-ci.yml); a failed rollout of 6 pods has at most 5 to put back: 1500 + 1255 + 600 + 120 s."""
    path = write_values(tmp_path, hk_replicas=6, init_delay_second=120)
    rendered = render.render(path, conf=conf)
    deployment = next(d for d in rendered.stages["hk"] if d["kind"] == "Rollout")
    deadline = deployment["spec"]["progressDeadlineSeconds"]
    assert deadline == 245
    policy = load_deploy_policy()
    assert budget.deploy_job_seconds(deadline, 6, 1, True, policy.lock_wait_seconds) == (1500, 1255, 3475)
    assert budget.deploy_job_seconds(deadline, 7, 1, True, policy.lock_wait_seconds)[2] > 3600


def test_the_limit_render_checks_is_the_deploy_jobs_own_timeout():
    """GitLab expands no variable in `timeout:`, so the hour is written twice; they must agree."""
    deploy_jobs = [job for job in concrete_jobs().values() if "STAGE" in job.get("variables", {})
                   and job.get("environment", {}).get("action") not in ("stop", "access")]  # not canary-*
    assert {job["timeout"] for job in deploy_jobs} == {"1h"}
    assert load_deploy_policy().ci_job_timeout_seconds == 3600


def test_grey_is_not_rolled_back_so_only_its_rollout_counts(tmp_path, conf):
    """grey's failures are kept for inspection: one pod at the platform's longest start-up fits."""
    path = write_values(tmp_path, init_delay_second=1800, hk_replicas=1, replicas=1)
    assert "grey" in render.render(path, conf=conf).stages
