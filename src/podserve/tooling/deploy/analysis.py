"""Judging a candidate by Prometheus: one window, the counts of both sides, and the verdict (verdict.py).

    python -m podserve.tooling.deploy analyze --stage grey --against hk [--manifests DIR] [--out FILE]

A side is a set of pods told apart by the labels the PodMonitor gives every series (team, stage, track; the
server's own `service`): grey's (track grey) or a canary's (track canary) against production's stable pods. The
window starts once every candidate pod (the pods Kubernetes says are ready) has been scraped and is past slow start,
lasts `window_seconds`, and its counts are read once the scrapes of its end have landed (two scrape intervals).
Only requests of the service's own route count (`route!="other"`), mirrored copies included: for grey they are
production's payloads. Grey is judged only while it runs this pipeline's revision: the history (its pipeline) and
the live pod template's hash are checked at both ends of the window; another build there is refused (exit 3).

Exit: 0 pass, 1 fail, 2 bad input, 3 refused, 4 inconclusive (too few requests, a candidate pod not scraped
throughout, Prometheus unreachable). `--out` writes the verdict as JSON (what `apply --verdict` reads).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import Callable

from podserve import metric_names as m
from podserve.tooling import release
from podserve.tooling.conf import DeployPolicy, VerdictPolicy
from podserve.tooling.deploy import budget, drift, failures, pipeline, verdict
from podserve.tooling.deploy.errors import BadInput, Refused
from podserve.tooling.deploy.history import History
from podserve.tooling.deploy.kube import MANAGED, PODS, Kube
from podserve.tooling.deploy.prometheus_api import PrometheusAPI, Unreachable
from podserve.tooling.deploy.target import Target, label_selector

#: The verdict file's format, as `apply --verdict` reads it.
VERDICT_VERSION = 1
#: How often the waits look at the clock and at what may stop them (SIGTERM, the lock, a canary command).
TICK_SECONDS = 1.0
#: What the verdict's exit statuses are, by result.
EXIT_BY_RESULT = {verdict.PASS: failures.EXIT_SERVING, verdict.FAIL: failures.EXIT_FAILED,
                  verdict.INCONCLUSIVE: failures.EXIT_INCONCLUSIVE}


@dataclass(frozen=True)
class Side:
    """The pods one side of a comparison is: a team's service at a stage and track, in its namespace."""

    team: str
    service: str
    stage: str
    track: str
    namespace: str

    def selector(self) -> str:
        """The labels of the server's series from these pods (its own `service`, the PodMonitor's the rest)."""
        return f'team="{self.team}", service="{self.service}", stage="{self.stage}", track="{self.track}"'

    def target_selector(self) -> str:
        """The labels of these pods' scrape targets (`up`): the PodMonitor's job (<namespace>/<name>) and labels."""
        return f'job="{self.namespace}/{self.service}", stage="{self.stage}", track="{self.track}"'

    def describe(self) -> str:
        return f"{self.stage} (track {self.track})"


@dataclass(frozen=True)
class PodState:
    """A candidate pod as Kubernetes reports it: its name, and since when it is ready (None: not ready)."""

    name: str
    ready_since: float | None


@dataclass(frozen=True)
class Plan:
    """What one analysis judges, and how: the two sides, the thresholds, slow start and the scrape interval."""

    candidate: Side
    stable: Side
    policy: VerdictPolicy
    slow_start_seconds: float
    scrape_interval_seconds: float


def counts(prometheus: PrometheusAPI, side: Side, end: float, seconds: int) -> verdict.Counts:
    """One side's counts over the window of `seconds` ending at `end`."""
    window = f"[{seconds}s]"
    route = f'route!="{m.OTHER_ROUTE}"'
    statuses = prometheus.by(f"sum by (status) (increase({m.REQUESTS_TOTAL}{{{side.selector()}, {route}}}{window}))",
                             end, "status")
    latency = prometheus.by(f"sum by (le) (increase({m.REQUEST_SECONDS}_bucket{{{side.selector()}, {route}, "
                            f'status=~"2.."}}{window}))', end, "le")
    queue = prometheus.by(f"sum by (le) (increase({m.QUEUE_WAIT_SECONDS}_bucket{{{side.selector()}}}{window}))",
                          end, "le")
    pods = prometheus.by(f"max by (pod) (max_over_time(up{{{side.target_selector()}}}{window}))", end, "pod")
    return verdict.Counts({k: v for k, v in statuses.items()}, _histogram(latency), _histogram(queue),
                          max(1, sum(1 for v in pods.values() if v >= 1)), float(seconds))


def _histogram(by_le: dict[str, float]) -> dict[float, float]:
    return {float(le): value for le, value in by_le.items() if le}


def unscraped(prometheus: PrometheusAPI, side: Side, pods: list[str], end: float, seconds: int) -> list[str]:
    """The candidate pods not scraped successfully throughout the window."""
    window = f"[{seconds}s]"
    lowest = prometheus.by(f"min by (pod) (min_over_time(up{{{side.target_selector()}}}{window}))", end, "pod")
    samples = prometheus.by(f"sum by (pod) (count_over_time(up{{{side.target_selector()}}}{window}))", end, "pod")
    return [pod for pod in pods if lowest.get(pod, 0) < 1 or samples.get(pod, 0) < 2]


def analyse(prometheus: PrometheusAPI, plan: Plan, candidate_pods: Callable[[], list[PodState]], say=print,
            check: Callable[[], None] = lambda: None, guard: Callable[[], None] = lambda: None,
            now: Callable[[], float] = time.time) -> verdict.Verdict:
    """Wait for the window to start, wait it out, and judge; `check` runs every tick (it raises to stop: SIGTERM,
    the deploy lock, a canary command), `guard` at both ends of the window (grey's revision: it raises Refused)."""
    policy = plan.policy
    try:
        start, pods = _window_start(prometheus, plan, candidate_pods, say, check, now)
    except Unreachable as exc:
        return _inconclusive(str(exc))
    if start is None:
        return _inconclusive(pods)
    guard()
    end = start + policy.window_seconds
    settle = 2 * plan.scrape_interval_seconds
    say(f"judging {plan.candidate.describe()} ({', '.join(pods)}) against {plan.stable.describe()} from "
        f"{_clock(start)} for {policy.window_seconds} s")
    wait_until(end + settle, check, now)
    guard()
    try:
        missing = unscraped(prometheus, plan.candidate, pods, end, policy.window_seconds)
        if missing:
            return _inconclusive(f"candidate pod(s) {', '.join(missing)} were not scraped throughout the window")
        found = verdict.judge(counts(prometheus, plan.candidate, end, policy.window_seconds),
                              counts(prometheus, plan.stable, end, policy.window_seconds), policy)
    except Unreachable as exc:
        return _inconclusive(str(exc))
    return found


def _window_start(prometheus: PrometheusAPI, plan: Plan, candidate_pods, say, check, now):
    """Wait until every candidate pod is ready, past slow start and scraped; return (start, names), or
    (None, why) when that does not happen within slow start and budget.WINDOW_START_ALLOWANCE_SECONDS."""
    deadline = now() + plan.slow_start_seconds + budget.WINDOW_START_ALLOWANCE_SECONDS
    said = None
    while True:
        check()
        pods = candidate_pods()
        at = now()
        scraped = {pod for pod, up in prometheus.by(f"max by (pod) (up{{{plan.candidate.target_selector()}}})", at,
                                                    "pod").items() if up >= 1}
        waiting = [p.name for p in pods if p.ready_since is None or p.name not in scraped
                   or at < p.ready_since + plan.slow_start_seconds]
        if pods and not waiting:
            return at, sorted(p.name for p in pods)
        if at >= deadline:
            why = (f"no {plan.candidate.describe()} pod is ready" if not pods else
                   f"candidate pod(s) {', '.join(waiting)} not ready, not past slow start "
                   f"({plan.slow_start_seconds:g} s) or not scraped by Prometheus within "
                   f"{budget.WINDOW_START_ALLOWANCE_SECONDS + plan.slow_start_seconds:g} s")
            return None, why
        if waiting != said:
            say(f"waiting for {', '.join(waiting) or 'a candidate pod'} to be ready, past slow start and scraped")
            said = waiting
        time.sleep(TICK_SECONDS)


def wait_until(moment: float, check, now=time.monotonic) -> None:
    """Sleep until `now()` reaches `moment`, calling `check` (the lock, a SIGTERM) at least every TICK_SECONDS."""
    while (left := moment - now()) > 0:
        check()
        time.sleep(min(TICK_SECONDS, left))


def _inconclusive(why: str) -> verdict.Verdict:
    return verdict.Verdict(verdict.INCONCLUSIVE, [], [why])


def _clock(moment: float) -> str:
    return datetime.fromtimestamp(moment).astimezone().strftime("%H:%M:%S %Z")


def report(found: verdict.Verdict, plan: Plan, say=print) -> None:
    """Print the verdict with its numbers: requests and statuses of each side, each check, B and the p-values."""
    for name, side, counted in (("candidate", plan.candidate, found.candidate), ("stable", plan.stable, found.stable)):
        if counted is None:
            continue
        apart = ", ".join(f"{status}: {round(counted.statuses.get(status, 0))}" for status in verdict.STATUSES_APART)
        say(f"{name} {side.describe()}: {counted.requests} requests on {counted.pods} pod(s) "
            f"({counted.per_pod_rate():.2f}/s a pod), 5xx {counted.errors} ({apart})")
    if found.latency_bucket is not None:
        say(f"B, where stable reaches {plan.policy.latency_quantile:.0%} of its 2xx answers: "
            f"{found.latency_bucket:g} s; M, where it reaches half: {found.median_bucket:g} s")
    for item in found.checks:
        say(f"  {item.name}: {verdict.describe(item)}")
    if found.false_fail_probability is not None:
        say(f"an identical build would fail at these counts with probability at most "
            f"{found.false_fail_probability:.2e}")
    say(f"verdict: {found.result}" + (f" ({'; '.join(found.reasons)})" if found.reasons else ""))


# --- grey against production: the `analyze` verb ----------------------------------------------------------

def plan_for(candidate: Target, stable: Target, policy: DeployPolicy, track: str | None = None,
             window: int | None = None) -> Plan:
    """The plan of judging `candidate` (its stage's track, or `track`: a canary) against `stable`'s stable pods,
    with the thresholds conf/deploy.yaml and value.py (the production Deployment's release policy) give."""
    rendered = release.read_release_policy(stable.deployment())["verdict"]
    thresholds = release.verdict_policy(policy.verdict, rendered)
    if window is not None:
        if window < thresholds.window_seconds:
            raise BadInput(f"--window {window} is shorter than the {thresholds.window_seconds} s the platform and "
                           "value.py ask for (conf/deploy.yaml verdict.window_seconds, verdict_window_seconds): "
                           "a window may only be longer")
        thresholds = replace(thresholds, window_seconds=window)
    rule = next((o for o in stable.objects if o.get("kind") == "DestinationRule"), None)
    monitor = next((o for o in candidate.objects if o.get("kind") == "PodMonitor"), None)
    interval = ((monitor or {}).get("spec", {}).get("podMetricsEndpoints") or [{}])[0].get("interval", "15s")
    return Plan(Side(candidate.team, candidate.service, candidate.stage.name, track or candidate.stage.track,
                     candidate.namespace),
                Side(stable.team, stable.service, stable.stage.name, release.STABLE, stable.namespace),
                thresholds, release.slow_start_seconds(rule), _seconds(interval))


def _seconds(text: str) -> float:
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}
    for unit in ("ms", "s", "m", "h"):
        if text.endswith(unit):
            try:
                return float(text[:-len(unit)]) * units[unit]
            except ValueError:
                break
    return 15.0


def ready_pods(kube: Kube, namespace: str, match_labels: dict) -> list[PodState]:
    """The pods a Deployment's selector selects, with since when each is ready (None: not ready, or stopping)."""
    found = []
    for pod in kube.list(PODS, namespace, label_selector(match_labels)).get("items") or []:
        if (pod.get("metadata") or {}).get("deletionTimestamp"):
            continue
        ready = next((c for c in (pod.get("status") or {}).get("conditions") or [] if c.get("type") == "Ready"), {})
        since = None
        if ready.get("status") == "True":
            text = ready.get("lastTransitionTime") or ""
            since = datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp() if text else 0.0
        found.append(PodState(pod["metadata"]["name"], since))
    return found


@dataclass(frozen=True)
class GreyBuild:
    """What grey runs: its recorded revision, the pipeline that deployed it, its image and pod template's hash."""

    revision: int
    pipeline: int | None
    image: str
    template_hash: str | None


def grey_build(kube: Kube, target: Target, job: pipeline.Origin, since: GreyBuild | None = None) -> GreyBuild:
    """Return what grey runs; Refused (GREY_ANOTHER_BUILD) when it is not this pipeline's recorded revision (its
    history's pipeline, its live pod template), or no longer the build seen at the window's start (`since`)."""
    history = History.load(kube, target.namespace, target.service, target.stage.name)
    live = kube.get(MANAGED["Deployment"], target.namespace, target.service)
    current = history.current
    where = f"{target.service} in {target.stage.name} (namespace {target.namespace})"
    if current is None or live is None:
        raise Refused(failures.GREY_ANOTHER_BUILD, f"{where} has no recorded revision or no Deployment")
    found = GreyBuild(current.number, current.pipeline, current.image, drift.running_hash(live))
    if history.pending is not None:
        raise Refused(failures.GREY_ANOTHER_BUILD, f"{where}: revision {history.pending.number} is being deployed "
                                                   f"({history.pending.image})")
    if drift.template_drifted(history, live):
        raise Refused(failures.GREY_ANOTHER_BUILD, f"{where}: its live pod template is not recorded revision "
                                                   f"{current.number}'s (changed outside the tool)")
    if job.pipeline is not None and current.pipeline != job.pipeline:
        raise Refused(failures.GREY_ANOTHER_BUILD, f"{where} runs revision {current.number} ({current.image}) from "
                                                   f"pipeline {current.pipeline}, not this pipeline's ({job.pipeline})")
    if since is not None and found != since:
        raise Refused(failures.GREY_ANOTHER_BUILD, f"{where} was replaced during the window: revision "
                                                   f"{since.revision} ({since.image}) at its start, revision "
                                                   f"{found.revision} ({found.image}) at its end")
    return found


def analyze(kube: Kube, prometheus: PrometheusAPI, candidate: Target, stable: Target, policy: DeployPolicy,
            out: str | None = None, window: int | None = None, say=print) -> int:
    """Judge grey (`candidate`) against production's stable pods (`stable`); print, write `out`; return the exit."""
    job = pipeline.from_environment()
    plan = plan_for(candidate, stable, policy, window=window)
    if job.pipeline is None:
        say("pipeline not checked: $CI_PIPELINE_ID is not set (run by hand): grey is judged as it runs now")
    deployment = kube.get(MANAGED["Deployment"], candidate.namespace, candidate.service) or {}
    match = (deployment.get("spec") or {}).get("selector", {}).get("matchLabels") or \
        {"service": candidate.service, "stage": candidate.stage.name}
    seen: list[GreyBuild] = []

    def guard() -> None:
        seen.append(grey_build(kube, candidate, job, seen[0] if seen else None))

    try:
        found = analyse(prometheus, plan, lambda: ready_pods(kube, candidate.namespace, match), say, guard=guard)
    except Refused as exc:
        write(out, None, plan, seen[0] if seen else None, "refused", exc.message, job)
        raise
    report(found, plan, say)
    write(out, found, plan, seen[0] if seen else None, found.result, "; ".join(found.reasons), job)
    return EXIT_BY_RESULT[found.result]


def write(out: str | None, found: verdict.Verdict | None, plan: Plan, build: GreyBuild | None, result: str,
          why: str, job: pipeline.Origin) -> None:
    """Write the verdict file `apply --verdict` reads (nothing without `out`)."""
    if not out:
        return
    body = {"version": VERDICT_VERSION, "result": result, "why": why,
            "candidate": dict(plan.candidate.__dict__, **({"revision": build.revision, "image": build.image,
                                                           "pipeline": build.pipeline,
                                                           "template_hash": build.template_hash} if build else {})),
            "stable": plan.stable.__dict__, "pipeline": job.pipeline, "commit": job.commit,
            "thresholds": plan.policy.__dict__, "judged": found.as_dict() if found else None}
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(body, indent=2, sort_keys=True) + "\n", encoding="utf-8")
