"""The deploy tool as Argo Rollouts' client: a production Rollout's status read, its canary promoted or aborted, its
analysis runs' measurements.

Argo's controller runs in the cluster and owns a production release from the moment its Rollout is applied: it
creates the canary's ReplicaSet, sets the weights on the VirtualService, runs the service's AnalysisTemplate at each
step, and promotes or aborts. Nothing here moves a weight; a CI job killed at any moment leaves the release to Argo,
and the next job attaches to it (commands.apply). The verbs Argo's kubectl plugin has are the same status patches:

    argo.abort(kube, namespace, name)        # {"status": {"abort": true}}: weights back to stable, canary scaled down
    argo.promote_full(kube, namespace, name)  # {"status": {"promoteFull": true}}: every step and analysis skipped
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

from podserve.tooling import analysis_template as at
from podserve.tooling.deploy.kube import MANAGED, Kind, Kube

ROLLOUTS = MANAGED["Rollout"]
ANALYSIS_RUNS = Kind("argoproj.io/v1alpha1", "analysisruns")
#: The phases Argo writes to status.phase (utils/rollout CalculateRolloutPhase).
HEALTHY, PROGRESSING, PAUSED, DEGRADED = "Healthy", "Progressing", "Paused", "Degraded"
_MERGE = "application/merge-patch+json"
#: The annotation Argo puts on a DestinationRule whose subsets' labels it writes (its value: the Rollout's name).
MANAGED_BY = "argo-rollouts.argoproj.io/managed-by-rollouts"


@dataclass(frozen=True)
class State:
    """What a Rollout's status says, in the words `status` and the wait print."""

    observed: bool  # Argo has seen the current spec (status.observedGeneration == metadata.generation)
    phase: str
    message: str
    aborted: bool
    current_hash: str
    stable_hash: str
    step: int | None  # status.currentStepIndex, from 0 (None: no steps; len(steps): every step done)
    steps: int
    weights: tuple[int, int]  # (stable, canary) as Argo set them on the route

    @property
    def promoted(self) -> bool:
        """Healthy on the current pod template: every step done, the new ReplicaSet stable."""
        return self.observed and self.phase == HEALTHY and bool(self.current_hash) \
            and self.current_hash == self.stable_hash

    def describe(self) -> str:
        """One line: phase, Argo's message, step and weights."""
        step = f", step {min(self.step + 1, self.steps)} of {self.steps}" if self.steps and self.step is not None \
            else ""
        said = f" ({self.message})" if self.message else ""
        return (f"Argo Rollouts: {self.phase or 'not yet observed'}{said}{step}, weights stable {self.weights[0]}, "
                f"canary {self.weights[1]}")


def state_of(rollout: dict) -> State:
    """The State of a Rollout as the API server returns it."""
    meta, spec, status = rollout.get("metadata") or {}, rollout.get("spec") or {}, rollout.get("status") or {}
    observed = str(status.get("observedGeneration", "")) == str(meta.get("generation", ""))
    steps = (((spec.get("strategy") or {}).get("canary") or {}).get("steps")) or []
    weights = ((status.get("canary") or {}).get("weights")) or {}
    canary = int((weights.get("canary") or {}).get("weight", 0))
    stable = int((weights.get("stable") or {}).get("weight", 100 - canary))
    return State(observed, status.get("phase", ""), status.get("message", ""), bool(status.get("abort")),
                 status.get("currentPodHash", ""), status.get("stableRS", ""), status.get("currentStepIndex"),
                 len(steps), (stable, canary))


def in_progress(rollout: dict | None) -> bool:
    """Whether Argo is releasing a revision of this Rollout now (a canary between its first step and its end)."""
    if rollout is None:
        return False
    state = state_of(rollout)
    return bool(state.current_hash) and state.current_hash != state.stable_hash and not state.aborted


def abort(kube: Kube, namespace: str, name: str) -> dict:
    """Abort the Rollout's release (as `kubectl argo rollouts abort`): Argo sends every request back to stable, then
    scales the canary down; the Rollout stays Degraded until its spec changes (a rollback re-applies stable's)."""
    return kube.request("PATCH", ROLLOUTS.path(namespace, name) + "/status", body={"status": {"abort": True}},
                        content_type=_MERGE)


def promote_full(kube: Kube, namespace: str, name: str, paused: bool) -> dict:
    """Promote the Rollout's canary now, every step and analysis left skipped (as `kubectl argo rollouts promote
    --full`); a Rollout paused by hand (spec.paused) is unpaused too."""
    found = kube.request("PATCH", ROLLOUTS.path(namespace, name) + "/status", body={"status": {"promoteFull": True}},
                         content_type=_MERGE)
    if paused:
        found = kube.request("PATCH", ROLLOUTS.path(namespace, name), body={"spec": {"paused": False}},
                             content_type=_MERGE)
    return found


def analysis_runs(kube: Kube, rollout: dict) -> list[dict]:
    """The Rollout's AnalysisRuns (owned by it), oldest first."""
    uid = rollout["metadata"].get("uid")
    runs = kube.list(ANALYSIS_RUNS, rollout["metadata"]["namespace"]).get("items") or []
    owned = [r for r in runs if any(o.get("uid") == uid for o in r["metadata"].get("ownerReferences") or [])]
    return sorted(owned, key=lambda r: r["metadata"].get("creationTimestamp", ""))


def counts_text(metric: str, measurement: dict) -> str:
    """A measurement's value with its counts' names (analysis_template.COUNTS_OF), '' when it has none."""
    if not measurement.get("value"):
        return ""
    return f"{measurement['value']} ({', '.join(at.COUNTS_OF.get(metric, at.COUNTS))})"


def measurements(run: dict) -> list[str]:
    """One line per metric of an AnalysisRun: its phase, counts and its last measurement's value (the verdict's
    counts, named as analysis_template.COUNTS_OF names them) and message."""
    lines = []
    hashes = {a["name"]: a.get("value", "") for a in (run.get("spec") or {}).get("args") or []}
    for result in (run.get("status") or {}).get("metricResults") or []:
        last = (result.get("measurements") or [{}])[-1]
        counts = ", ".join(f"{key} {result.get(key, 0)}" for key in ("successful", "failed", "inconclusive", "error")
                           if result.get(key))
        value = f" value {counts_text(result.get('name'), last)}" if last.get("value") else ""
        message = f": {last['message']}" if last.get("message") else ""
        lines.append(f"{result.get('name')}: {result.get('phase', '?')} [{counts}]{value}{message}")
    head = (f"analysis {run['metadata']['name']} ({(run.get('status') or {}).get('phase', 'Pending')}), canary "
            f"{hashes.get(at.CANARY_HASH_ARG, '?')} against stable {hashes.get(at.STABLE_HASH_ARG, '?')}")
    return [head, *(f"  {line}" for line in lines)]


def failed_analysis(runs: list[dict]) -> str:
    """What the newest failed or errored AnalysisRun says ('' when none did): its metrics' lines."""
    for run in reversed(runs):
        if (run.get("status") or {}).get("phase") in ("Failed", "Error", "Inconclusive"):
            return "; ".join(line.strip() for line in measurements(run))
    return ""


def keep_subset_hashes(obj: dict, live: dict | None) -> dict:
    """`obj` with the labels Argo wrote on the live DestinationRule's subsets (each one's pod template hash), when
    Argo manages it; `obj` itself otherwise.

    Render writes the subsets without labels, and a server-side apply replaces the whole list: applied as rendered,
    both subsets would select every pod of the Service until Argo wrote its hashes again, the pods an abort keeps up
    for its scale-down delay among them. On the real node, the apply that began the next release sent a caller's
    request to the aborted build's pod that way (its 500; issue 66). Argo moves the hashes itself once it sees the
    new Rollout."""
    managed = live is not None and MANAGED_BY in (live["metadata"].get("annotations") or {})
    if obj.get("kind") != "DestinationRule" or not managed:
        return obj
    hashes = {s["name"]: s["labels"] for s in (live.get("spec") or {}).get("subsets") or [] if s.get("labels")}
    if not hashes:
        return obj
    kept = copy.deepcopy(obj)
    for subset in kept["spec"].get("subsets") or []:
        if subset["name"] in hashes and not subset.get("labels"):
            subset["labels"] = dict(hashes[subset["name"]])
    return kept
