"""Waiting for a rollout: read the Deployment (a production Rollout with its AnalysisRuns), its ReplicaSets, pods and
warning events, ask the diagnosis, repeat.

Each round reads one snapshot, passes it to `diagnosis.diagnose` (a pure function) and
prints a progress line when it changed; then it watches the stage's pods until one
changes or a few seconds pass. It stops at the first certain verdict: serving, or failed
(then the server's last log lines are read so the message can quote them).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime, timezone

from podserve.tooling.deploy import argo, diagnosis, failures
from podserve.tooling.deploy.kube import EVENTS, MANAGED, PODS, REPLICASETS, Kube
from podserve.tooling.deploy.target import Target, label_selector

#: Longest pause between two snapshots (a change in the stage's pods ends it sooner).
POLL_SECONDS = 2
#: Progress lines repeat at least this often, even when nothing changed.
REPEAT_SECONDS = 30
#: Failures whose message quotes the server's logs.
_QUOTING_LOGS = {failures.CRASH_LOOP.reason, failures.STARTUP_PROBE.reason, failures.NEVER_READY.reason}


@dataclass(frozen=True)
class WaitSettings:
    """How long to wait and how quickly an unschedulable pod fails."""

    budget_seconds: float
    scheduling_grace_seconds: float
    node_offer: str = ""


def observe(kube: Kube, target: Target, settings: WaitSettings, budget_left: float,
            logs: dict[str, str] | None = None) -> tuple[diagnosis.Observed, str, str]:
    """Read one snapshot of the target's rollout; return it, the pods list's resourceVersion and pod selector."""
    workload = target.deployment()
    deployment = kube.get(MANAGED[workload["kind"]], target.namespace, workload["metadata"]["name"])
    match = ((deployment or {}).get("spec") or {}).get("selector", {}).get("matchLabels") or {}
    pod_selector = label_selector(match) or target.selector
    replicasets = kube.list(REPLICASETS, target.namespace, pod_selector).get("items") or []
    pods_list = kube.list(PODS, target.namespace, pod_selector)
    events = kube.list(EVENTS, target.namespace).get("items") or []
    runs = tuple(argo.analysis_runs(kube, deployment)) if (deployment or {}).get("kind") == "Rollout" else ()
    observed = diagnosis.Observed(deployment, replicasets, pods_list.get("items") or [], events,
                                  datetime.now(timezone.utc), logs or {}, settings.scheduling_grace_seconds,
                                  budget_left, settings.node_offer, runs)
    return observed, (pods_list.get("metadata") or {}).get("resourceVersion", ""), pod_selector


def wait(kube: Kube, target: Target, settings: WaitSettings, say=print, check=lambda: None) -> diagnosis.Verdict:
    """Wait for the target's rollout to end; return the verdict (serving or failed), printing progress.

    `check` runs before each snapshot and raises to stop the wait (the deploy lock's check: LockLost).
    """
    started = time.monotonic()
    last_line, last_said = None, 0.0
    noted: set[str] = set()  # known noise, named once
    while True:
        check()
        elapsed = time.monotonic() - started
        observed, version, pod_selector = observe(kube, target, settings, settings.budget_seconds - elapsed)
        for note in diagnosis.noise_in(observed.pods, observed.events) - noted:
            say(f"note: {note}; not repeated")
            noted.add(note)
        verdict = diagnosis.diagnose(observed)
        if verdict.failure and verdict.failure.reason in _QUOTING_LOGS:
            logs = server_logs(kube, target.namespace, observed)
            verdict = diagnosis.diagnose(_with_logs(observed, logs))
        if verdict.done:
            return verdict
        if verdict.message != last_line or time.monotonic() - last_said >= REPEAT_SECONDS:
            say(f"[{elapsed:4.0f}s] {verdict.message}")
            last_line, last_said = verdict.message, time.monotonic()
        kube.wait_for_change(PODS, target.namespace, pod_selector, version, POLL_SECONDS)


def server_logs(kube: Kube, namespace: str, observed: diagnosis.Observed, lines: int = 40) -> dict[str, str]:
    """Return the last log lines of each new pod's first container (its previous run's when it restarted)."""
    logs = {}
    if not observed.deployment:
        return logs
    for pod in diagnosis.new_pods(observed.deployment, observed.replicasets, observed.pods)[:3]:
        statuses = (pod.get("status") or {}).get("containerStatuses") or []
        containers = (pod.get("spec") or {}).get("containers") or []
        if not containers:
            continue
        container = containers[0]["name"]
        restarted = any(s.get("name") == container and s.get("restartCount", 0) > 0 for s in statuses)
        logs[pod["metadata"]["name"]] = kube.logs(namespace, pod["metadata"]["name"], container, restarted, lines)
    return logs


def _with_logs(observed: diagnosis.Observed, logs: dict[str, str]) -> diagnosis.Observed:
    from dataclasses import replace

    return replace(observed, logs=logs)
