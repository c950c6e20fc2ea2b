"""Releasing production: the canary's labels, the weights on the route, the copy of traffic to grey.

One place for these facts, read by render (manifests.py, checks.py, rollout.py) and the deploy tool:

- A production stage's pods are told apart by the label `track`, which Argo Rollouts stamps (rollout.py): the stable
  ReplicaSet's pods `stable`, the canary's `canary`. Its Service, PodDisruptionBudget, PodMonitor and topology spread
  select both (`service`, `stage`); the DestinationRule's subsets `stable` and `canary` split them by `track`, and the
  VirtualService always routes to those subsets by weight (stable 100 when no canary runs; Argo sets a canary's). No
  header reaches the canary.
- hk's VirtualService may mirror `grey_mirror_percent` of its requests to grey's Service (the one cross-namespace
  target a route has), to its subset MIRROR_SUBSET: grey's pods built from the protected default branch, which alone
  carry MIRROR_LABEL (provenance.py); Istio sends the copy with `-shadow` appended to its Host, and the caller is
  answered by production only.
"""

from __future__ import annotations

import json
import math

from podserve.tooling.conf import PRODUCTION_TRACK

#: The pod label that tells a production stage's stable and canary pods apart, and its values (the subsets).
TRACK_LABEL = "track"
STABLE = PRODUCTION_TRACK
CANARY = "canary"
SUBSETS = (STABLE, CANARY)
#: On the production Rollout: value.py's canary_steps and verdict thresholds (JSON), what its steps are made from.
RELEASE_ANNOTATION = "podserve.io/release"
#: grey's pods of the protected default branch's code (provenance.mark), and grey's DestinationRule subset of them:
#: production's mirror goes there and nowhere else, so another branch's grey pods never get a copy.
MIRROR_LABEL, MIRROR_LABEL_VALUE = "podserve.io/mirror-target", "default-branch"
MIRROR_SUBSET = "mirror-target"
#: A Kubernetes object name's longest.
MAX_NAME = 63


def canary_replicas(weight: int, stable_replicas: int) -> int:
    """Return the canary's pods at a step of `weight` percent: ceil(weight x stable's live replicas), at least 1."""
    return max(1, math.ceil(weight * max(stable_replicas, 0) / 100))


def weights(canary: int) -> list[int]:
    """Return [stable, canary] weights in percent for a canary share of `canary` percent."""
    return [100 - canary, canary]


def release_policy(canary_steps: list[int], verdict: dict) -> str:
    """Return the RELEASE_ANNOTATION's text: the canary's steps and value.py's verdict thresholds (None left out)."""
    return json.dumps({"canary_steps": list(canary_steps),
                       "verdict": {k: v for k, v in verdict.items() if v is not None}}, sort_keys=True)


def read_release_policy(deployment: dict | None) -> dict:
    """Return a rendered production Deployment's release policy ({"canary_steps": [], "verdict": {}} when it has
    none: rendered before canaries, or not a production stage)."""
    text = ((((deployment or {}).get("metadata") or {}).get("annotations") or {}).get(RELEASE_ANNOTATION)) or "{}"
    try:
        found = json.loads(text)
    except ValueError:
        found = {}
    return {"canary_steps": list(found.get("canary_steps") or []), "verdict": dict(found.get("verdict") or {})}


def verdict_policy(platform, rendered: dict):
    """Return the verdict's thresholds for a service: conf/deploy.yaml's (`platform`, a VerdictPolicy) with value.py's
    tighter ones as render wrote them (read_release_policy(...)["verdict"]); keys the platform lacks are ignored."""
    import dataclasses

    known = {f.name for f in dataclasses.fields(platform)}
    return dataclasses.replace(platform, **{k: v for k, v in (rendered or {}).items() if k in known})


def slow_start_seconds(destination_rule: dict | None) -> float:
    """Return a rendered DestinationRule's slow start (loadBalancer.warmup.duration) in seconds, 0 when it has none."""
    text = ((((destination_rule or {}).get("spec") or {}).get("trafficPolicy") or {}).get("loadBalancer") or {}) \
        .get("warmup", {}).get("duration") or "0s"
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}
    for unit in ("ms", "s", "m", "h"):
        if text.endswith(unit) and text[:-len(unit)].replace(".", "", 1).isdigit():
            return float(text[:-len(unit)]) * units[unit]
    return 0.0
