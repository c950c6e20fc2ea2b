"""How long a rollout may take: one budget, rendered as progressDeadlineSeconds and waited for by the deploy tool.

A pod gets `POD_START_ALLOWANCE_SECONDS` to be scheduled, pull its image and start its
container, then the startup probe's budget (value.py's `init_delay_second`, rounded up to
whole probe periods), then one readiness period. That is the Deployment's
`progressDeadlineSeconds`: the controller resets it on every step of progress, so it is a
per-pod budget. The deploy tool waits for the whole rollout: one such budget per surge
step (pods roll `max_surge` at a time, none unavailable) plus a margin.

A failed rollout is rolled back (not grey's): the rollback replaces only the pods the
rollout had made available, at most replicas - 1 (with every new pod available the
rollout is complete, not failed), so its wait is budgeted from how far the rollout got.
A CI deploy job has a fixed time (conf/deploy.yaml ci_job_timeout_seconds: GitLab does not
expand variables in `timeout:`), of which the deploy lock may take its whole wait:
`deploy_job_seconds` is what one deploy may need of it, render refuses a stage that cannot fit.
"""

from __future__ import annotations

import math

#: Scheduling, image pull and container start, before the startup probe's clock matters.
POD_START_ALLOWANCE_SECONDS = 120
#: What the tool adds on top of the per-step budgets (the controller's own reaction time).
ROLLOUT_MARGIN_SECONDS = 30
#: Kubernetes' own default when a Deployment sets no progressDeadlineSeconds.
KUBERNETES_DEFAULT_PROGRESS_DEADLINE = 600
#: What a deploy job needs besides its waits: starting, applying, recording, notifying.
JOB_MARGIN_SECONDS = 120


def startup_failure_threshold(init_delay_second: int, probe_period_seconds: int) -> int:
    """Return the startup probe's failureThreshold: enough periods to cover init_delay_second."""
    return math.ceil(init_delay_second / probe_period_seconds)


def startup_seconds(init_delay_second: int, probe_period_seconds: int) -> int:
    """Return how long the startup probe lets a pod load before it is restarted."""
    return startup_failure_threshold(init_delay_second, probe_period_seconds) * probe_period_seconds


def progress_deadline_seconds(init_delay_second: int, probe_period_seconds: int) -> int:
    """Return the Deployment's progressDeadlineSeconds: one pod's start allowance, start-up and first readiness."""
    return POD_START_ALLOWANCE_SECONDS + startup_seconds(init_delay_second, probe_period_seconds) + probe_period_seconds


def rollout_seconds(progress_deadline: int, replicas: int, max_surge: int = 1) -> int:
    """Return how long the deploy tool waits for a whole rollout of `replicas` pods, `max_surge` at a time."""
    steps = max(1, math.ceil(max(replicas, 1) / max(max_surge, 1)))
    return steps * progress_deadline + ROLLOUT_MARGIN_SECONDS


def rollback_seconds(progress_deadline: int, rolled_out: int, max_surge: int = 1) -> int:
    """Return how long a rollback may wait: one step per `max_surge` of the `rolled_out` pods the failed rollout had
    made available (each replaced by a previous one again); with none, every previous pod still runs (none is
    unavailable during a rollout) and the rollback only removes the failed one: the margin."""
    return rollout_seconds(progress_deadline, rolled_out, max_surge) if rolled_out > 0 else ROLLOUT_MARGIN_SECONDS


def deploy_job_seconds(progress_deadline: int, replicas: int, max_surge: int, rolled_back: bool,
                       lock_wait: float, canary: float = 0) -> tuple[int, int, float]:
    """Return (rollout, rollback, in all) seconds one deploy of `replicas` pods may need of its job: the rollout's
    budget, a rollback of at most replicas - 1 pods (none where a failure is left as it is: grey), the lock's whole
    wait, a canary's steps before the rollout (`canary`, canary_seconds) and JOB_MARGIN_SECONDS."""
    rollout = rollout_seconds(progress_deadline, replicas, max_surge)
    rollback = rollback_seconds(progress_deadline, replicas - 1, max_surge) if rolled_back else 0
    return rollout, rollback, rollout + rollback + lock_wait + canary + JOB_MARGIN_SECONDS


#: From a canary step's weights until its analysis window may start: every candidate pod scraped (a few scrape
#: intervals) after slow start; the window itself is the verdict's.
WINDOW_START_ALLOWANCE_SECONDS = 60


def canary_seconds(progress_deadline: int, canary_pods: list[int], slow_start: float, window: float,
                   max_extensions: int) -> int:
    """Return the longest a canary's steps may take before its promotion: at each step, the canary's new pods start
    together (one progress deadline; none new: the margin), then slow start, the window's start and the window,
    extended at most `max_extensions` times. `canary_pods`: its pods at each step (release.canary_replicas)."""
    total, before = 0.0, 0
    for pods in canary_pods:
        total += progress_deadline + ROLLOUT_MARGIN_SECONDS if pods > before else ROLLOUT_MARGIN_SECONDS
        total += slow_start + WINDOW_START_ALLOWANCE_SECONDS + (1 + max_extensions) * window
        before = max(before, pods)
    return math.ceil(total)
