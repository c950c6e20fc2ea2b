"""The rollout's verdict: a pure function from the observed objects to serving, progressing or failed, and why.

`diagnose(Observed)` reads API-shaped dicts (a Deployment, or a production Rollout with its
AnalysisRuns, its ReplicaSets, pods and events, as the API server returns them) plus the server's last log lines, and returns a
`Verdict`: what a progress line says while the rollout goes on, or, as soon as the
outcome is certain, the failure in a service owner's words with the value.py field to
change (see `failures`). The watch loop around it is `rollout.py`; like kubectl's rollout
status, nothing here talks to the cluster or reads the clock.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from datetime import datetime

from podserve.tooling import analysis_template as at
from podserve.tooling.deploy import argo, drift, failures
from podserve.tooling.deploy.failures import Failure

SERVING, PROGRESSING, FAILED = "serving", "progressing", "failed"
#: Restarts after which a crash or an OOM kill is a certain failure, not a blip.
CERTAIN_RESTARTS = 2
#: How many of the server's last log lines a message quotes.
LOG_LINES = 8
IMAGE_PULL_REASONS = ("ImagePullBackOff", "ErrImagePull", "InvalidImageName", "ErrImageNeverPull")
#: Waiting reasons of a container the kubelet has not created yet (its sandbox, volumes or image being set up).
NOT_CREATED = ("ContainerCreating", "PodInitializing")
REVISION = "deployment.kubernetes.io/revision"
#: Refusals the ReplicaSet controller retries by itself, which pass: a write conflict (two pods admitted at once
#: both updating the namespace's ResourceQuota usage: 409), the API server shedding load (429) or timing out (504).
#: A ReplicaFailure saying one of these is no verdict; a refusal that stays ends at the progress deadline.
TRANSIENT_CREATE_ERRORS = ("the object has been modified; please apply your changes", "Too many requests",
                           "the server has received too many requests", "the server was unable to return a response "
                           "in the time allotted", "Timeout: request did not complete within")


@dataclass(frozen=True)
class Observed:
    """One snapshot of a rollout: API-shaped objects, the server's logs, and the time they were read."""

    deployment: dict | None
    replicasets: list[dict]
    pods: list[dict]
    events: list[dict]
    now: datetime
    logs: dict[str, str] = field(default_factory=dict)  # pod name -> the server's last log lines
    scheduling_grace_seconds: float = 90.0
    budget_left_seconds: float = 1.0  # the deploy tool's wait budget; <= 0 once it is spent
    node_offer: str = ""  # what the region's nodes can allocate, from conf/regions.yaml
    analysis_runs: tuple = ()  # a Rollout's AnalysisRuns, oldest first


@dataclass(frozen=True)
class Verdict:
    """Serving, still progressing (with a progress line), or failed (with the failure and its message)."""

    state: str
    message: str
    failure: Failure | None = None

    @property
    def done(self) -> bool:
        return self.state != PROGRESSING


def diagnose(obs: Observed) -> Verdict:
    """Return the verdict on one snapshot: failed as soon as certain, serving when complete, else progressing."""
    deployment = obs.deployment
    if deployment is None:
        return Verdict(PROGRESSING, "waiting for the Deployment to appear")
    if deployment.get("kind") == "Rollout" and not _observed(deployment):
        # its status (currentPodHash: which pods are new) is still the previous spec's, a rollback's failed pods
        return Verdict(PROGRESSING, "waiting for Argo Rollouts to observe the new spec")
    pods = new_pods(deployment, obs.replicasets, obs.pods)
    certain = next((v for v in (_certain_failure(pod, obs) for pod in pods) if v), None) or \
        _create_refused(deployment, obs.replicasets)
    if certain:
        return certain
    if _condition(deployment, "Progressing", "False", "ProgressDeadlineExceeded") and _observed(deployment):
        deadline = (deployment.get("spec") or {}).get("progressDeadlineSeconds")
        return _after_waiting(pods, obs, failures.PROGRESS_DEADLINE,
                              f"no new pod became available within progressDeadlineSeconds = {deadline}")
    if deployment.get("kind") == "Rollout":
        state = argo.state_of(deployment)
        aborted = state.aborted or (state.phase == argo.DEGRADED and state.message.startswith(ABORTED_MESSAGE))
        if state.observed and aborted and _back_on_stable(deployment, state, obs.replicasets):
            return Verdict(PROGRESSING, "Argo Rollouts taking stable's spec back after the abort")
        if state.observed and (state.aborted or state.phase == argo.DEGRADED):
            analysis = argo.failed_analysis(list(obs.analysis_runs))
            return _failed(failures.ROLLOUT_ABORTED, f"{state.message or 'aborted'}"
                           + (f"; {analysis}" if analysis else ""))
    done, line = rollout_status(deployment)
    progress = progress_line(deployment, pods, line, obs.events, obs.now)
    if done:
        return Verdict(SERVING, progress)
    if obs.budget_left_seconds <= 0:
        states = progress_line(deployment, pods, line)  # no events: the verdict quotes a pod's newest one itself
        return _after_waiting(pods, obs, failures.TIMED_OUT, f"the budget ran out with {states}")
    return Verdict(PROGRESSING, progress)


#: How Argo's message begins while a Rollout stays Degraded from an abort (one status write may outlast the abort).
ABORTED_MESSAGE = "RolloutAborted"


def _back_on_stable(rollout: dict, state: argo.State, replicasets: list[dict]) -> bool:
    """Whether an aborted Rollout's spec is its stable ReplicaSet's pod template again (a rollback re-applied it):
    Argo clears the abort, then the Degraded phase, once it acts on that spec, each a status write after it observed
    the spec."""
    ours = drift.running_hash(rollout)
    return bool(ours) and any(drift.running_hash(rs) == ours for rs in replicasets
                              if ((rs.get("metadata") or {}).get("labels") or {}).get(at.HASH_POD_LABEL)
                              == state.stable_hash)


def _observed(workload: dict) -> bool:
    status = workload.get("status") or {}
    return str(status.get("observedGeneration", "")) == str((workload.get("metadata") or {}).get("generation", ""))


def rollout_status(deployment: dict) -> tuple[bool, str]:
    """Return (complete, what it waits for), as kubectl's rollout status decides it; a Rollout as Argo says it
    (Healthy on its current pod template: every step done)."""
    if deployment.get("kind") == "Rollout":
        state = argo.state_of(deployment)
        return state.promoted, ("rollout complete" if state.promoted else state.describe())
    spec, status, meta = deployment.get("spec") or {}, deployment.get("status") or {}, deployment.get("metadata") or {}
    if meta.get("generation", 0) > status.get("observedGeneration", 0):
        return False, "waiting for the Deployment's new spec to be observed"
    wanted = spec.get("replicas", 1)
    updated = status.get("updatedReplicas", 0)
    if updated < wanted:
        return False, f"{updated} of {wanted} pods updated"
    if status.get("replicas", 0) > updated:
        return False, f"{status.get('replicas', 0) - updated} old pod(s) pending termination"
    if status.get("availableReplicas", 0) < updated:
        return False, f"{status.get('availableReplicas', 0)} of {updated} updated pods available"
    return True, "rollout complete"


def new_replicasets(deployment: dict, replicasets: list[dict]) -> list[dict]:
    """Return the Deployment's newest ReplicaSet (the revision being rolled out) among `replicasets`, as a list; a
    Rollout's is the one of its current pod template hash (status.currentPodHash, Argo's label on its ReplicaSets)."""
    if deployment.get("kind") == "Rollout":
        current = (deployment.get("status") or {}).get("currentPodHash")
        return [rs for rs in replicasets if _owner_uid(rs) == deployment["metadata"].get("uid") and current
                and (rs["metadata"].get("labels") or {}).get(at.HASH_POD_LABEL) == current]
    revision = ((deployment.get("metadata") or {}).get("annotations") or {}).get(REVISION)
    owned = [rs for rs in replicasets if _owner_uid(rs) == deployment["metadata"].get("uid")]
    current = [rs for rs in owned if ((rs["metadata"].get("annotations") or {}).get(REVISION)) == revision]
    if not current and owned:
        current = [max(owned, key=lambda rs: int((rs["metadata"].get("annotations") or {}).get(REVISION, 0)))]
    return current


def new_pods(deployment: dict, replicasets: list[dict], pods: list[dict]) -> list[dict]:
    """Return the pods of the Deployment's newest ReplicaSet (the revision being rolled out)."""
    uids = {rs["metadata"].get("uid") for rs in new_replicasets(deployment, replicasets)}
    return [pod for pod in pods if _owner_uid(pod) in uids and not pod["metadata"].get("deletionTimestamp")]


#: What the API server says when a policy's parameters (the platform's ConfigMap podserve-limits) are missing.
NO_PARAMS = "no params found for policy binding"
LIMITS_CONFIGMAP = "podserve-limits"


def platform_broken(message: str) -> str:
    """Name what is broken in the platform itself when an admission refusal says so ('' when nothing is): the limits
    ConfigMap the pod policies read is missing, or lacks a key. Every pod of every team is refused then, and no
    change of the service's helps."""
    policy = re.search(r"ValidatingAdmissionPolicy '([^']+)'", message)
    if NO_PARAMS in message:
        return (f"the platform's ConfigMap {LIMITS_CONFIGMAP} (the parameters of the admission policy "
                f"{policy.group(1) if policy else '?'}) is missing, so the cluster refuses every pod of every team: "
                "nothing in value.py can fix it; ask the platform team to install the platform chart again "
                "(charts/podserve-platform)")
    if f"{LIMITS_CONFIGMAP} lacks " in message:
        lacks = message.split(f"{LIMITS_CONFIGMAP} lacks ", 1)[1].split(":", 1)[0]
        return (f"the platform's ConfigMap {LIMITS_CONFIGMAP} lacks {lacks}, so the cluster refuses every pod of "
                "every team: nothing in value.py can fix it; ask the platform team to install the platform chart "
                "again (charts/podserve-platform)")
    return ""


def progress_line(deployment: dict, pods: list[dict], status_line: str, events: list[dict] = (),
                  now: datetime | None = None) -> str:
    """Return 'ready/wanted pods ready; <pod>: <what it waits for>; ...'."""
    wanted = (deployment.get("spec") or {}).get("replicas", 1)
    ready = sum(1 for pod in pods if _pod_ready(pod))
    waiting = [f"{pod['metadata']['name']}: {pod_state(pod, events, now)}" for pod in pods if not _pod_ready(pod)]
    return "; ".join([f"{ready}/{wanted} pods ready ({status_line})", *waiting])


def pod_state(pod: dict, events: list[dict] = (), now: datetime | None = None) -> str:
    """Return what a pod waits for, in a few words (Pending: unschedulable, ContainerCreating, not ready, ...).

    A pod whose containers are not created yet also gets the newest event on it (mostly the kubelet's: what it is
    doing or failing at, the sandbox, a volume, the pull), as `kubectl describe` would show.
    """
    if _pod_ready(pod):
        return "running, ready"
    scheduled = _pod_condition(pod, "PodScheduled")
    if scheduled and scheduled.get("status") == "False":
        said = scheduled.get("message")
        return f"Pending ({scheduled.get('reason') or 'not scheduled'}{': ' + said if said else ''})"
    story = last_events(pod, events, now) if not_started(pod) else ""
    story = f" ({story})" if story else ""
    for status in _container_statuses(pod):
        state = status.get("state") or {}
        if "waiting" in state:
            restarts = status.get("restartCount", 0)
            return (f"{state['waiting'].get('reason', 'waiting')}" + (f", {restarts} restart(s)" if restarts else "")
                    + story)
        if "terminated" in state:
            return f"terminated ({state['terminated'].get('reason', '')})"
    phase = (pod.get("status") or {}).get("phase", "Pending")
    return "running, not ready yet" if phase == "Running" else phase + story


def not_started(pod: dict) -> bool:
    """Return whether the pod is on a node but none of its containers was ever created (all wait in NOT_CREATED)."""
    if not (pod.get("spec") or {}).get("nodeName"):
        return False
    for status in _container_statuses(pod):
        waiting = (status.get("state") or {}).get("waiting")
        if not waiting or waiting.get("reason") not in NOT_CREATED or status.get("restartCount", 0) \
                or (status.get("lastState") or {}).get("terminated"):
            return False
    return True


#: Warnings a healthy pod shows, by reason: the tool leaves them out of its lines and names each once.
MISSING_CLUSTER_DNS = ("the node has no cluster DNS (MissingClusterDNS: make cluster's real node runs none; the pod "
                       "resolves names through the node's own resolv.conf)")
STARTUP_WHILE_LOADING = ("startup probe failures while the server loaded, within the start init_delay_second allows "
                         "(the pod is ready now)")


def known_noise(event: dict, pod_ready: bool) -> str | None:
    """What a warning that says nothing wrong is (one of the summaries above), or None for one worth reading: the
    kubelet's MissingClusterDNS, and a startup probe failing on a pod that became ready (its start was allowed)."""
    reason, message = event.get("reason"), event.get("message") or event.get("note") or ""
    if reason == "MissingClusterDNS":
        return MISSING_CLUSTER_DNS
    if reason == "Unhealthy" and message.startswith("Startup probe failed") and pod_ready:
        return STARTUP_WHILE_LOADING
    return None


def noise_in(pods: list[dict], events: list[dict]) -> set[str]:
    """The known noise among the pods' events (each summary once)."""
    return {note for pod in pods for event in events if _about(event, pod)
            for note in [known_noise(event, _pod_ready(pod))] if note}


def last_events(pod: dict, events: list[dict], now: datetime | None = None) -> str:
    """Return the newest event on the pod, and the newest warning when an ordinary event came after it (known noise
    left out: `known_noise`).

    'Warning FailedCreatePodSandBox (5 times, last 12 s ago): Failed to create pod sandbox: ...'; "" with none.
    """
    ready = _pod_ready(pod)
    about = sorted((e for e in events if _about(e, pod) and not known_noise(e, ready)), key=event_time)
    if not about:
        return ""
    newest = about[-1]
    said = [_event_words(newest, now)]
    warning = next((e for e in reversed(about) if e.get("type") == "Warning"), None)
    if warning is not None and warning is not newest:
        said.append("before it: " + _event_words(warning, now))
    return "; ".join(said)


def _event_words(event: dict, now: datetime | None) -> str:
    count = event.get("count") or (event.get("series") or {}).get("count") or 1
    when = _time(event_time(event))
    ago = f"{(now - when).total_seconds():.0f} s ago" if now and when else ""
    label = ago
    if count > 1:
        label = f"{count} times, last {ago}" if ago else f"{count} times"
    message = " ".join((event.get("message") or event.get("note") or "").split())  # the API caps it at 1 KiB
    return (f"{event.get('type', 'Normal')} {event.get('reason', '?')}" + (f" ({label})" if label else "")
            + (f": {message}" if message else ""))


# --- certain failures -------------------------------------------------------------------------

def _certain_failure(pod: dict, obs: Observed) -> Verdict | None:
    name = pod["metadata"]["name"]
    for status in _container_statuses(pod):
        waiting = (status.get("state") or {}).get("waiting") or {}
        last = (status.get("lastState") or {}).get("terminated") or {}
        ended = (status.get("state") or {}).get("terminated") or {}
        restarts = status.get("restartCount", 0)
        # The kubelet backs off (CrashLoopBackOff) only after a restarted container failed again.
        repeated = restarts >= CERTAIN_RESTARTS or (restarts >= 1 and waiting.get("reason") == "CrashLoopBackOff")
        if waiting.get("reason") in ("ImagePullBackOff", "InvalidImageName", "ErrImageNeverPull"):
            return _image_pull(pod, status, waiting)
        if "OOMKilled" in (last.get("reason"), ended.get("reason")) and repeated:
            limit = _container_spec(pod, status["name"]).get("resources", {}).get("limits", {}).get("memory", "none")
            code = last.get("exitCode", ended.get("exitCode", 137))
            return _failed(failures.OOM_KILLED, f"container {status['name']} of pod {name} was killed (exit {code}) for "
                           f"using more than its memory limit ({limit}, from value.py's memory) and restarted "
                           f"{restarts} time(s)")
        killed_by_startup = _startup_kills(pod, obs.events)
        if restarts >= 1 and killed_by_startup:
            probe = _probe_failures(pod, obs.events, "Startup")
            said = f"; the probe reported: {probe[-1]}" if probe else ""
            return _failed(failures.STARTUP_PROBE, f"pod {name} was killed by its startup probe and restarted "
                           f"({killed_by_startup[-1]}): start-up took longer than the {_startup_budget(pod)} s the "
                           f"probe allows (from init_delay_second){said}"
                           f"{_quote_logs(obs.logs.get(name) or last.get('message'))}")
        if repeated and (waiting.get("reason") == "CrashLoopBackOff" or last):
            code = last.get("exitCode", ended.get("exitCode"))
            return _failed(failures.CRASH_LOOP, f"container {status['name']} of pod {name} exited (code {code}, "
                           f"{last.get('reason') or ended.get('reason') or 'Error'}) and was restarted {restarts} "
                           f"time(s){_quote_logs(obs.logs.get(name) or last.get('message') or ended.get('message'))}")
    return _unschedulable(pod, obs)


def _create_refused(deployment: dict, replicasets: list[dict]) -> Verdict | None:
    """The new ReplicaSet's ReplicaFailure (FailedCreate): a quota or an admission policy refuses its pods.

    With maxUnavailable 0 nothing old goes until a new pod is ready, so the rollout cannot go on: certain, but for
    the refusals the controller retries and that pass (TRANSIENT_CREATE_ERRORS).
    """
    revision = ((deployment.get("metadata") or {}).get("annotations") or {}).get(REVISION)
    current = new_replicasets(deployment, replicasets) if deployment.get("kind") == "Rollout" else \
        [rs for rs in replicasets if _owner_uid(rs) == deployment["metadata"].get("uid")
         and ((rs["metadata"].get("annotations") or {}).get(REVISION)) == revision]
    for owner in [*current, deployment]:
        failure = next((c for c in (owner.get("status") or {}).get("conditions") or []
                        if c.get("type") == "ReplicaFailure" and c.get("status") == "True"), None)
        if failure and not any(words in failure.get("message", "") for words in TRANSIENT_CREATE_ERRORS):
            message = failure.get("message", "")
            quota = re.search(r"exceeded quota: ([^,]+)", message)
            policy = re.search(r"ValidatingAdmissionPolicy '([^']+)'", message)
            named = (platform_broken(message)
                     or (f"the ResourceQuota {deployment['metadata'].get('namespace')}/{quota.group(1)} is full"
                         if quota else f"the admission policy {policy.group(1)} refuses them" if policy else
                         "the API server refuses them"))
            return _failed(failures.CREATE_REFUSED, f"{owner.get('kind', 'ReplicaSet')} {owner['metadata']['name']} "
                           f"cannot create pods ({failure.get('reason', 'FailedCreate')}): {named}: \"{message}\"")
    return None


def _startup_kills(pod: dict, events: list[dict]) -> list[str]:
    """Return the kubelet's 'failed startup probe, will be restarted' messages about the pod."""
    return [event.get("message", "") for event in sorted((e for e in events if _about(e, pod)), key=event_time)
            if event.get("reason") == "Killing" and "startup probe" in event.get("message", "")]


def _image_pull(pod: dict, status: dict, waiting: dict) -> Verdict:
    image = status.get("image") or _container_spec(pod, status["name"]).get("image", "?")
    registry = image.split("/", 1)[0] if "/" in image else "docker.io"
    detail = f"pod {pod['metadata']['name']} cannot pull {image} from registry {registry}"
    if waiting.get("message"):
        detail += f" ({waiting['message']})"
    return _failed(failures.IMAGE_PULL, detail)


def _unschedulable(pod: dict, obs: Observed) -> Verdict | None:
    scheduled = _pod_condition(pod, "PodScheduled")
    if not scheduled or scheduled.get("status") != "False" or scheduled.get("reason") != "Unschedulable":
        return None
    since = _time(scheduled.get("lastTransitionTime")) or _time(pod["metadata"].get("creationTimestamp"))
    waited = (obs.now - since).total_seconds() if since else 0.0
    scaling_up = any(_about(event, pod) and event.get("reason") == "TriggeredScaleUp" for event in obs.events)
    if waited < obs.scheduling_grace_seconds or scaling_up:
        return None
    return _failed(failures.UNSCHEDULABLE, unschedulable_detail(pod, scheduled.get("message", ""), waited,
                                                                obs.node_offer))


def unschedulable_detail(pod: dict, scheduler_message: str, waited: float, node_offer: str) -> str:
    """Return why a pod cannot be scheduled: the scheduler's words, what the pod asks, what nodes offer, the field."""
    fields = short_fields(scheduler_message)
    detail = (f"for {waited:.0f} s the scheduler has refused pod {pod['metadata']['name']}: \"{scheduler_message}\"; "
              f"the pod asks for {asked(pod)}")
    if "node(s) were unschedulable" in scheduler_message:
        detail += " (\"were unschedulable\": those nodes are cordoned)"
    if node_offer:
        detail += f"; the region's nodes offer {node_offer}"
    return detail + f"; value.py field(s) to change: {', '.join(fields)}"


def short_fields(scheduler_message: str) -> list[str]:
    """Return the value.py fields behind what the scheduler says is short ('Insufficient cpu' -> cpu)."""
    fields = []
    for resource in re.findall(r"Insufficient ([\w./-]+)", scheduler_message):
        name = resource.lower().rstrip(".,")
        found = ("cpu" if name == "cpu" else "memory" if name == "memory" else
                 "gpu_memory" if "mem" in name else "gpu_num" if "gpu" in name or "/" in name else None)
        if found and found not in fields:
            fields.append(found)
    if not fields and ("node affinity" in scheduler_message or "node selector" in scheduler_message):
        fields.append("gpu_num")  # the pool (GPU or CPU nodes) follows gpu_num
    return [f"`{f}`" for f in fields] or ["`cpu`", "`memory`", "`gpu_num`"]


def asked(pod: dict) -> str:
    """Return the pod's requests (and extended-resource limits), summed over its containers."""
    totals: dict[str, list[str]] = {}
    for container in (pod.get("spec") or {}).get("containers") or []:
        resources = container.get("resources") or {}
        amounts = dict(resources.get("requests") or {})
        amounts.update({k: v for k, v in (resources.get("limits") or {}).items() if "/" in k})
        for name, value in amounts.items():
            totals.setdefault(name, []).append(str(value))
    return ", ".join(f"{name} {'+'.join(values)}" for name, values in sorted(totals.items())) or "nothing"


# --- failures found only when waiting is over -------------------------------------------------

def _after_waiting(pods: list[dict], obs: Observed, fallback: Failure, detail: str) -> Verdict:
    for pod in pods:
        name = pod["metadata"]["name"]
        scheduled = _pod_condition(pod, "PodScheduled")
        if scheduled and scheduled.get("status") == "False":
            waited = (obs.now - (_time(scheduled.get("lastTransitionTime")) or obs.now)).total_seconds()
            return _failed(failures.UNSCHEDULABLE, unschedulable_detail(pod, scheduled.get("message", ""), waited,
                                                                        obs.node_offer))
        running = (pod.get("status") or {}).get("phase") == "Running"
        if running and not _pod_ready(pod) and all(s.get("restartCount", 0) == 0 for s in _container_statuses(pod)):
            answered = _probe_failures(pod, obs.events, "Readiness")
            said = f"; the probe reported: {answered[-1]}" if answered else "; no probe failure was reported"
            return _failed(failures.NEVER_READY, f"{detail}; pod {name} runs but /api/ping never answered 200"
                           f"{said}{_quote_logs(_ping_lines(obs.logs.get(name)))}")
        if not_started(pod):
            node = pod["spec"]["nodeName"]
            since = _time(scheduled.get("lastTransitionTime")) if scheduled else None
            waited = f" {(obs.now - since).total_seconds():.0f} s ago" if since else ""
            story = last_events(pod, obs.events, obs.now) or "none (the node's kubelet reported nothing on it)"
            return _failed(failures.NOT_STARTED, f"{detail}; pod {name} was placed on node {node}{waited} and none "
                           f"of its containers was created; the last event on it: {story}")
    states = "; ".join(f"{pod['metadata']['name']}: {pod_state(pod)}" for pod in pods) or "no new pod was created"
    return _failed(fallback, f"{detail}; {states}")


def _ping_lines(logs: str | None) -> str | None:
    """Return the log lines that say what /api/ping answered, else the warnings and errors, else all."""
    if not logs:
        return logs
    lines = logs.splitlines()
    about = [line for line in lines if "ping" in line or "ready" in line.lower()]
    if about:
        return "\n".join(about)
    loud = [line for line in lines if _level(line) in ("warning", "error", "critical")]
    return "\n".join(loud or lines)


def _level(line: str) -> str:
    try:
        return str(json.loads(line).get("level", ""))
    except (ValueError, AttributeError):
        return ""


# --- helpers on API-shaped dicts --------------------------------------------------------------

def _failed(failure: Failure, detail: str) -> Verdict:
    return Verdict(FAILED, failure.say(detail), failure)


def _quote_logs(logs: str | None) -> str:
    if not logs:
        return ""
    tail = [line for line in logs.splitlines() if line.strip()][-LOG_LINES:]
    return "; its last log lines:\n    " + "\n    ".join(tail) + "\n" if tail else ""


def _probe_failures(pod: dict, events: list[dict], probe: str) -> list[str]:
    return [event.get("message", "") for event in sorted((e for e in events if _about(e, pod)), key=event_time)
            if event.get("reason") == "Unhealthy" and event.get("message", "").startswith(f"{probe} probe failed")]


def _startup_budget(pod: dict) -> str:
    for container in (pod.get("spec") or {}).get("containers") or []:
        probe = container.get("startupProbe")
        if probe:
            return str(probe.get("failureThreshold", 3) * probe.get("periodSeconds", 10))
    return "?"


def _about(event: dict, pod: dict) -> bool:
    involved = event.get("involvedObject") or event.get("regarding") or {}
    uid = pod["metadata"].get("uid")
    if uid and involved.get("uid"):
        return involved["uid"] == uid
    return involved.get("kind") == "Pod" and involved.get("name") == pod["metadata"]["name"]


def event_time(event: dict) -> str:
    """Return when an event last happened, whichever of its time fields the writer set."""
    series = event.get("series") or {}
    return (event.get("lastTimestamp") or series.get("lastObservedTime") or event.get("eventTime")
            or event.get("firstTimestamp") or (event.get("metadata") or {}).get("creationTimestamp") or "")


def _container_statuses(pod: dict) -> list[dict]:
    status = pod.get("status") or {}
    return list(status.get("initContainerStatuses") or []) + list(status.get("containerStatuses") or [])


def _container_spec(pod: dict, name: str) -> dict:
    spec = pod.get("spec") or {}
    for container in list(spec.get("initContainers") or []) + list(spec.get("containers") or []):
        if container.get("name") == name:
            return container
    return {}


def _pod_condition(pod: dict, kind: str) -> dict | None:
    return next((c for c in (pod.get("status") or {}).get("conditions") or [] if c.get("type") == kind), None)


def pod_is_ready(pod: dict) -> bool:
    """Whether the pod's Ready condition is true."""
    return _pod_ready(pod)


def _pod_ready(pod: dict) -> bool:
    ready = _pod_condition(pod, "Ready")
    return bool(ready and ready.get("status") == "True")


def _condition(obj: dict, kind: str, status: str, reason: str) -> bool:
    return any(c.get("type") == kind and c.get("status") == status and c.get("reason") == reason
               for c in (obj.get("status") or {}).get("conditions") or [])


def _owner_uid(obj: dict) -> str | None:
    owners = (obj.get("metadata") or {}).get("ownerReferences") or []
    return next((o.get("uid") for o in owners if o.get("controller")), None)


def _time(text: str | None) -> datetime | None:
    if not text:
        return None
    return datetime.fromisoformat(text.replace("Z", "+00:00"))
