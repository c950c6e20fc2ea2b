"""Grey's verdict, run by Argo Rollouts: one AnalysisRun of the canary's own statistic, grey against production.

    python -m podserve.tooling.deploy analyze --stage grey --against hk [--manifests DIR] [--out FILE]

The job creates, in grey's namespace, an AnalysisRun whose metrics are the ones every production canary step runs
(analysis_template.metrics on analysis_template.grey: grey's mirrored requests against the production stage's stable
pods, both namespaces named; the platform's Prometheus, conf/platform.yaml), waits for Argo to end it, and reports
its phase: Successful is a pass, Failed a fail, Error (Prometheus unreachable past its retries) or Inconclusive an
inconclusive. The sample grows window by window until it passes, fails or spans every extension, as a canary's;
one that never passes ends Inconclusive (a canary's fails: Argo must end its step).
Grey is judged only while it runs this pipeline's revision: the history (its pipeline) and the live pod template's
hash are checked before the run and once it ended; another build there is refused (exit 3). A job stopped while
the run goes on deletes it.

Exit: 0 pass, 1 fail, 2 bad input, 3 refused, 4 inconclusive. `--out` writes the verdict as JSON (what
`apply --verdict` reads).
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

from podserve.tooling import analysis_template as at
from podserve.tooling import release, tenancy
from podserve.tooling.conf import Conf, DeployPolicy, VerdictPolicy
from podserve.tooling.deploy import argo, drift, failures, pipeline
from podserve.tooling.deploy.errors import BadInput, Refused
from podserve.tooling.deploy.history import History
from podserve.tooling.deploy.kube import MANAGED, Kube
from podserve.tooling.deploy.target import Target
from podserve.tooling.rollout import seconds as duration_seconds

#: The verdict file's format, as `apply --verdict` reads it (2: the AnalysisRun's measurements).
VERDICT_VERSION = 2
PASS, FAIL, INCONCLUSIVE = "pass", "fail", "inconclusive"
#: Argo's AnalysisRun phases, as verdicts.
RESULT_BY_PHASE = {"Successful": PASS, "Failed": FAIL, "Error": INCONCLUSIVE, "Inconclusive": INCONCLUSIVE}
EXIT_BY_RESULT = {PASS: failures.EXIT_SERVING, FAIL: failures.EXIT_FAILED, INCONCLUSIVE: failures.EXIT_INCONCLUSIVE}
#: How often the wait reads the run's status.
TICK_SECONDS = 1.0
#: What the wait allows beyond the run's own schedule (the controller's reaction, Prometheus' timeouts).
RUN_MARGIN_SECONDS = 60
#: The AnalysisRuns of a service kept in grey's namespace (older ones are deleted as a new one starts).
RUNS_KEPT = 3
VERDICT_OF_LABEL = "podserve.io/verdict-of"
#: GitLab's predefined variable: this job's id (each retry its own).
JOB_ID_VARIABLE = "CI_JOB_ID"


@dataclass(frozen=True)
class Plan:
    """What grey's run judges: grey's stage and namespace against the production stage's, the thresholds, and the
    metrics Argo runs (one per check)."""

    service: str
    team: str
    candidate_namespace: str
    stable_stage: str
    stable_namespace: str
    policy: VerdictPolicy
    metrics: list[dict]

    def seconds(self) -> float:
        """The longest the run may take: its first measurement's delay, then an interval for each other one."""
        first = self.metrics[0]
        return (duration_seconds(first["initialDelay"]) + duration_seconds(first["interval"]) * first["count"]
                + at.CONSECUTIVE_ERROR_LIMIT * at.ERROR_RETRY_SECONDS + RUN_MARGIN_SECONDS)


def plan_for(candidate: Target, stable: Target, conf: Conf, policy: DeployPolicy, window: int | None = None,
             since: int | None = None) -> Plan:
    """Grey (`candidate`) against `stable`'s stable pods from `since` (Unix seconds) on, with the thresholds
    conf/deploy.yaml and value.py (the production workload's release annotation) give; `window` may only lengthen
    the window."""
    thresholds = release.verdict_policy(policy.verdict, release.read_release_policy(stable.deployment())["verdict"])
    if window is not None:
        if window < thresholds.window_seconds:
            raise BadInput(f"--window {window} is shorter than the {thresholds.window_seconds} s the platform and "
                           "value.py ask for (conf/deploy.yaml verdict.window_seconds, verdict_window_seconds): "
                           "a window may only be longer")
        thresholds = replace(thresholds, window_seconds=window)
    rule = next((o for o in stable.objects if o.get("kind") == "DestinationRule"), None)
    scrape = duration_seconds(conf.platform.monitoring.scrape_interval)
    comparison = at.grey(candidate.namespace, stable.namespace, candidate.team, candidate.service, stable.stage.name,
                         at.Thresholds.of(thresholds), scrape, since)
    # grey has nothing to abort: a sample that never passes ends the run Inconclusive, not Failed
    metrics = at.metrics(comparison, conf.platform.monitoring.prometheus_address, release.slow_start_seconds(rule),
                         full_sample_fails=False)
    return Plan(candidate.service, candidate.team, candidate.namespace, stable.stage.name, stable.namespace,
                thresholds, metrics)


def analysis_run(plan: Plan, name: str, owner: dict) -> dict:
    """The AnalysisRun of `plan` in grey's namespace, labelled as the service's verdict run, with the owner labels
    and project annotation of `owner` (grey's Deployment as rendered: what admission asks of every object there)."""
    meta = owner.get("metadata") or {}
    labels = {k: v for k, v in (meta.get("labels") or {}).items() if k in ("team", "service", "stage")}
    annotations = {k: v for k, v in (meta.get("annotations") or {}).items() if k == tenancy.PROJECT_ANNOTATION}
    return {"apiVersion": argo.ANALYSIS_RUNS.api_version, "kind": "AnalysisRun",
            "metadata": {"name": name, "namespace": plan.candidate_namespace,
                         "labels": {**labels, VERDICT_OF_LABEL: plan.service}, "annotations": annotations},
            "spec": {"metrics": plan.metrics}}


@dataclass(frozen=True)
class GreyBuild:
    """What grey runs: its recorded revision, the pipeline that deployed it, its image and pod template's hash."""

    revision: int
    pipeline: int | None
    image: str
    template_hash: str | None


def grey_build(kube: Kube, target: Target, job: pipeline.Origin, since: GreyBuild | None = None) -> GreyBuild:
    """Return what grey runs; Refused (GREY_ANOTHER_BUILD) when it is not this pipeline's recorded revision (its
    history's pipeline, its live pod template), or no longer the build seen before the run (`since`)."""
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
        raise Refused(failures.GREY_ANOTHER_BUILD, f"{where} was replaced while it was judged: revision "
                                                   f"{since.revision} ({since.image}) at the start, revision "
                                                   f"{found.revision} ({found.image}) at the end")
    return found


def run_name(service: str, environ=os.environ, now: Callable[[], float] = time.time) -> str:
    """<service>-grey-<GitLab's job id> (a retried job has its own; the Unix time when run by hand), within
    Kubernetes' 63 characters."""
    job_id = (environ.get(JOB_ID_VARIABLE) or "").strip()
    suffix = f"-grey-{job_id if job_id.isdigit() else int(now())}"
    return service[:release.MAX_NAME - len(suffix)] + suffix


def start(kube: Kube, plan: Plan, name: str, owner: dict, say=print) -> dict:
    """Delete the service's older verdict runs but the newest RUNS_KEPT - 1 (and one of this name), create this one."""
    runs = kube.list(argo.ANALYSIS_RUNS, plan.candidate_namespace, f"{VERDICT_OF_LABEL}={plan.service}")
    older = [r["metadata"]["name"] for r in sorted(runs.get("items") or [],
                                                   key=lambda r: r["metadata"].get("creationTimestamp", ""))]
    for old in {name, *older[:max(0, len(older) - RUNS_KEPT + 1)]}:  # a name already gone: delete says so
        kube.delete(argo.ANALYSIS_RUNS, plan.candidate_namespace, old)
    # created, not applied: the preview account may create and delete runs, never patch one
    created = kube.request("POST", argo.ANALYSIS_RUNS.path(plan.candidate_namespace),
                           body=analysis_run(plan, name, owner))
    first = plan.metrics[0]
    say(f"judging grey (namespace {plan.candidate_namespace}) against {plan.stable_stage}'s stable pods (namespace "
        f"{plan.stable_namespace}): AnalysisRun/{name}, Argo's first measurement {first['initialDelay']} after its "
        f"start, then one every {first['interval']} until a pass, a fail or {first['count']} measurements")
    return created


def wait(kube: Kube, plan: Plan, name: str, say=print, check: Callable[[], None] = lambda: None,
         now: Callable[[], float] = time.monotonic) -> dict:
    """The run once Argo ended it (its phase one of RESULT_BY_PHASE), printing each new measurement; a run still
    going at the deadline is returned as it is (its phase not an end: inconclusive)."""
    deadline = now() + plan.seconds()
    printed: set[tuple[str, int]] = set()
    while True:
        check()
        run = kube.get(argo.ANALYSIS_RUNS, plan.candidate_namespace, name) or {}
        for result in (run.get("status") or {}).get("metricResults") or []:
            for index, measurement in enumerate(result.get("measurements") or []):
                if measurement.get("finishedAt") and (result["name"], index) not in printed:
                    printed.add((result["name"], index))
                    counted = argo.counts_text(result["name"], measurement)
                    say(f"  {result['name']}: {measurement.get('phase')} {counted}"
                        + (f": {measurement['message']}" if measurement.get("message") else ""))
        if (run.get("status") or {}).get("phase") in RESULT_BY_PHASE or now() > deadline:
            return run
        time.sleep(TICK_SECONDS)


def outcome(run: dict) -> tuple[str, str]:
    """(result, why) of an ended run: its phase as a verdict, and each metric's line when it is not a pass."""
    status = run.get("status") or {}
    phase = status.get("phase", "")
    result = RESULT_BY_PHASE.get(phase, INCONCLUSIVE)
    if result == PASS:
        return result, ""
    if phase not in RESULT_BY_PHASE:
        return result, f"the AnalysisRun did not end in time (phase {phase or 'Pending'})"
    return result, "; ".join(line.strip() for line in argo.measurements(run)[1:])


def analyze(kube: Kube, conf: Conf, candidate: Target, stable: Target, policy: DeployPolicy, out: str | None = None,
            window: int | None = None, say=print, check: Callable[[], None] = lambda: None) -> int:
    """Judge grey (`candidate`) against production's stable pods (`stable`) by an AnalysisRun; print, write `out`;
    return the exit status."""
    job = pipeline.from_environment()
    plan = plan_for(candidate, stable, conf, policy, window, since=math.ceil(time.time()))
    if job.pipeline is None:
        say("pipeline not checked: $CI_PIPELINE_ID is not set (run by hand): grey is judged as it runs now")
    name = run_name(candidate.service)
    build = None
    try:
        build = grey_build(kube, candidate, job)
        start(kube, plan, name, candidate.deployment(), say)
        try:
            run = wait(kube, plan, name, say, check)
        except BaseException:
            kube.delete(argo.ANALYSIS_RUNS, plan.candidate_namespace, name)
            raise
        grey_build(kube, candidate, job, build)
    except Refused as exc:
        write(out, plan, build, "refused", exc.message, job, None)
        raise
    result, why = outcome(run)
    say(f"verdict: {result}" + (f" ({why})" if why else ""))
    write(out, plan, build, result, why, job, run)
    return EXIT_BY_RESULT[result]


def _value(measurement: dict):
    """A measurement's counts as a list (Argo stores them as text), or its text when not JSON, or None."""
    try:
        return json.loads(measurement["value"]) if measurement.get("value") else None
    except ValueError:
        return measurement["value"]


def write(out: str | None, plan: Plan, build: GreyBuild | None, result: str, why: str, job: pipeline.Origin,
          run: dict | None) -> None:
    """Write the verdict file `apply --verdict` reads (nothing without `out`)."""
    if not out:
        return
    measured = {r["name"]: {"phase": r.get("phase"), "names": list(at.COUNTS_OF.get(r["name"], at.COUNTS)),
                            "values": [_value(m) for m in r.get("measurements") or []]}
                for r in ((run or {}).get("status") or {}).get("metricResults") or []}
    body = {"version": VERDICT_VERSION, "result": result, "why": why,
            "candidate": {"stage": "grey", "namespace": plan.candidate_namespace, "service": plan.service,
                          "team": plan.team, **({"revision": build.revision, "image": build.image,
                                                  "pipeline": build.pipeline,
                                                  "template_hash": build.template_hash} if build else {})},
            "stable": {"stage": plan.stable_stage, "namespace": plan.stable_namespace},
            "pipeline": job.pipeline, "commit": job.commit, "thresholds": plan.policy.__dict__,
            "analysis_run": ((run or {}).get("metadata") or {}).get("name"), "measurements": measured}
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(body, indent=2, sort_keys=True) + "\n", encoding="utf-8")
