"""Whether a stage's deploy fits in its CI job: render refuses (exit 2) one that cannot, before any pipeline runs.

GitLab kills a job at its timeout, whatever it was doing. The deploy jobs' timeout is fixed in
.gitlab-ci.yml (`timeout: 1h`; GitLab does not expand variables there), mirrored in
conf/deploy.yaml `ci_job_timeout_seconds`, and the deploy lock may take `lock_wait_seconds` of it
before the deploy starts. In what is left, the rollout of the stage's pods (every pod, an
autoscaler's most included) and, where a failure is rolled back (every stage but grey), the
rollback of what the rollout had made available must fit (podserve.tooling.deploy.budget).
The rendered Deployment is read, not value.py, so what is checked is what would be deployed.
"""

from __future__ import annotations

from podserve.tooling.conf import DeployPolicy, Stage
from podserve.tooling.deploy import budget
from podserve.tooling.valuefile import Problem
from podserve.tooling.values import ServiceValues

#: The stage whose failed deploys are left as they are for inspection, not rolled back.
UNROLLED_TRACK = "grey"


def problems(docs: list[dict], values: ServiceValues, stage: Stage, policy: DeployPolicy) -> list[Problem]:
    """Return the problem of a stage whose deploy could outlast the deploy job (none when it fits)."""
    deployment = next(d for d in docs if d.get("kind") == "Deployment")
    scaler = next((d for d in docs if d.get("kind") in ("HorizontalPodAutoscaler", "ScaledObject")), None)
    spec = deployment["spec"]
    scaled = (scaler or {}).get("spec") or {}
    replicas = scaled.get("maxReplicas") or scaled.get("maxReplicaCount") or spec.get("replicas") or 1
    surge = ((spec.get("strategy") or {}).get("rollingUpdate") or {}).get("maxSurge", 1)
    surge = surge if isinstance(surge, int) else 1
    deadline = spec.get("progressDeadlineSeconds") or budget.KUBERNETES_DEFAULT_PROGRESS_DEADLINE
    rolled_back = stage.track != UNROLLED_TRACK
    lock, limit = policy.lock_wait_seconds, policy.ci_job_timeout_seconds

    def needed(pods: int) -> float:
        return budget.deploy_job_seconds(deadline, pods, surge, rolled_back, lock)[2]

    if needed(replicas) <= limit:
        return []
    rollout, rollback, total = budget.deploy_job_seconds(deadline, replicas, surge, rolled_back, lock)
    fitting = next((n for n in range(replicas - 1, 0, -1) if needed(n) <= limit), 0)
    autoscaled = replicas > (scaled.get("minReplicas") or scaled.get("minReplicaCount") or replicas)
    field = ("max_replicas" if autoscaled else stage.replicas if isinstance(stage.replicas, str)
             else "init_delay_second")
    fix = (f"lower {field} to at most {fitting}, or init_delay_second" if fitting and field != "init_delay_second"
           else "lower init_delay_second")
    return [Problem(field, f"stage {stage.name}: {replicas} pod(s) at init_delay_second = "
                           f"{values['init_delay_second']} may take {rollout} s to roll out"
                           + (f" and {rollback} s to roll back" if rolled_back else "")
                           + f", {total:.0f} s with the {lock} s the deploy lock may wait (conf/deploy.yaml "
                             f"lock_wait_seconds) and {budget.JOB_MARGIN_SECONDS} s for the rest: more than the deploy "
                             f"job's fixed {limit} s (.gitlab-ci.yml `timeout: 1h`, conf/deploy.yaml "
                             f"ci_job_timeout_seconds), so GitLab could kill it midway; {fix}")]
