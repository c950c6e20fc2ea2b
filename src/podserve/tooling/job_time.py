"""Whether a stage's deploy fits in its CI job: render refuses (exit 2) one that cannot, before any pipeline runs.

GitLab kills a job at its timeout, whatever it was doing. The deploy jobs' timeout is fixed in
.gitlab-ci.yml (`timeout: 1h`; GitLab does not expand variables there), mirrored in
conf/deploy.yaml `ci_job_timeout_seconds`, and the deploy lock may take `lock_wait_seconds` of it
before the deploy starts. In what is left, the rollout of the stage's pods (every pod, an
autoscaler's most included) and, where a failure is rolled back (every stage but grey), the
rollback of what the rollout had made available must fit (podserve.tooling.deploy.budget), after a production
canary's steps at their worst (value.py canary_steps: every step's pods, slow start and window, each extended
max_extensions times; budget.canary_seconds).
The rendered Deployment is read, not value.py, so what is checked is what would be deployed.
"""

from __future__ import annotations

from podserve.tooling import release
from podserve.tooling.conf import DeployPolicy, Stage
from podserve.tooling.deploy import budget
from podserve.tooling.rollout import workload_of
from podserve.tooling.valuefile import Problem
from podserve.tooling.values import ServiceValues

#: The stage whose failed deploys are left as they are for inspection, not rolled back.
UNROLLED_TRACK = "grey"


def problems(docs: list[dict], values: ServiceValues, stage: Stage, policy: DeployPolicy) -> list[Problem]:
    """Return the problem of a stage whose deploy could outlast the deploy job (none when it fits)."""
    deployment = workload_of(docs)
    scaler = next((d for d in docs if d.get("kind") in ("HorizontalPodAutoscaler", "ScaledObject")), None)
    spec = deployment["spec"]
    scaled = (scaler or {}).get("spec") or {}
    replicas = scaled.get("maxReplicas") or scaled.get("maxReplicaCount") or spec.get("replicas") or 1
    surge = ((spec.get("strategy") or {}).get("rollingUpdate") or {}).get("maxSurge", 1)
    surge = surge if isinstance(surge, int) else 1
    deadline = spec.get("progressDeadlineSeconds") or budget.KUBERNETES_DEFAULT_PROGRESS_DEADLINE
    rolled_back = stage.track != UNROLLED_TRACK
    lock, limit = policy.lock_wait_seconds, policy.ci_job_timeout_seconds
    canary = canary_seconds(docs, deployment, replicas, policy)

    def needed(pods: int, steps: float = canary) -> float:
        return budget.deploy_job_seconds(deadline, pods, surge, rolled_back, lock, steps)[2]

    if needed(replicas) <= limit:
        return []
    rollout, rollback, total = budget.deploy_job_seconds(deadline, replicas, surge, rolled_back, lock, canary)
    if canary and needed(replicas, 0) <= limit:
        return [Problem("canary_steps", f"stage {stage.name}: the canary's {len(values['canary_steps'])} step(s) "
                                        f"may take {canary} s (each: its pods' start, slow start, then the verdict's "
                                        f"window, extended up to max_extensions times), and with the rollout ({rollout} "
                                        f"s), its rollback ({rollback} s), the lock's {lock} s and "
                                        f"{budget.JOB_MARGIN_SECONDS} s, {total:.0f} s: more than the deploy job's fixed "
                                        f"{limit} s (.gitlab-ci.yml `timeout: 1h`), so GitLab could kill it midway; use "
                                        "fewer canary_steps, a shorter verdict_window_seconds, or init_delay_second")]
    fitting = next((n for n in range(replicas - 1, 0, -1) if needed(n) <= limit), 0)
    autoscaled = replicas > (scaled.get("minReplicas") or scaled.get("minReplicaCount") or replicas)
    field = ("max_replicas" if autoscaled else stage.replicas if isinstance(stage.replicas, str)
             else "init_delay_second")
    fix = (f"lower {field} to at most {fitting}, or init_delay_second" if fitting and field != "init_delay_second"
           else "lower init_delay_second")
    return [Problem(field, f"stage {stage.name}: {replicas} pod(s) at init_delay_second = "
                           f"{values['init_delay_second']} may take {rollout} s to roll out"
                           + (f" after a canary of {canary} s" if canary else "")
                           + (f" and {rollback} s to roll back" if rolled_back else "")
                           + f", {total:.0f} s with the {lock} s the deploy lock may wait (conf/deploy.yaml "
                             f"lock_wait_seconds) and {budget.JOB_MARGIN_SECONDS} s for the rest: more than the deploy "
                             f"job's fixed {limit} s (.gitlab-ci.yml `timeout: 1h`, conf/deploy.yaml "
                             f"ci_job_timeout_seconds), so GitLab could kill it midway; {fix}")]


def canary_seconds(docs: list[dict], deployment: dict, replicas: int, policy: DeployPolicy) -> int:
    """Return the longest the canary of a rendered production stage may take before its promotion (0: none)."""
    rendered = release.read_release_policy(deployment)
    if not rendered["canary_steps"]:
        return 0
    verdict = release.verdict_policy(policy.verdict, rendered["verdict"])
    rule = next((d for d in docs if d.get("kind") == "DestinationRule"), None)
    deadline = deployment["spec"].get("progressDeadlineSeconds") or budget.KUBERNETES_DEFAULT_PROGRESS_DEADLINE
    return budget.canary_seconds(deadline, [release.canary_replicas(w, replicas) for w in rendered["canary_steps"]],
                                 release.slow_start_seconds(rule), verdict.window_seconds, verdict.max_extensions) \
        + policy.canary_scale_down_delay_seconds  # its end: the canary serves on while the mesh takes stable 100
