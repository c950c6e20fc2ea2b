"""The objects of a production canary, as pure functions of rendered or live objects (release.py names them).

- `canary_deployment`: the new revision's Deployment as `<service>-canary`: track canary (in its selector too), no
  hostPort (two pods of one service must not want one port of a node; Kong registers stable's), its replicas, the
  canary annotation; everything else (the team label, the project annotation, priority, the pod template) as
  rendered, so the platform's policies admit it as they admit stable.
- `weighted`: a VirtualService with every weighted route set to [stable, canary] percent and the canary annotation
  (or none): the whole `http` list is applied each time (Istio's CRD makes it atomic), so every apply during a
  canary carries the recorded weights.
"""

from __future__ import annotations

import copy
import json

from podserve.tooling import release


def canary_deployment(deployment: dict, replicas: int, state: dict) -> dict:
    """Return `deployment` (the new revision's, as applied: stamped) as the canary's, with `replicas` pods."""
    found = copy.deepcopy(deployment)
    meta = found["metadata"]
    meta["name"] = release.canary_name(meta["name"])
    meta["labels"] = dict(meta.get("labels") or {}, **{release.TRACK_LABEL: release.CANARY})
    meta["annotations"] = dict(meta.get("annotations") or {}, **{release.CANARY_ANNOTATION: annotation(state)})
    spec = found["spec"]
    spec["replicas"] = replicas
    spec["selector"] = {"matchLabels": dict(spec["selector"]["matchLabels"], **{release.TRACK_LABEL: release.CANARY})}
    template = spec["template"]
    template["metadata"]["labels"] = dict(template["metadata"]["labels"], **{release.TRACK_LABEL: release.CANARY})
    for container in template["spec"].get("containers") or []:
        for port in container.get("ports") or []:
            port.pop("hostPort", None)
    return found


def annotation(state: dict | None) -> str:
    """The canary annotation's text for a canary state (revision, step, weights)."""
    if not state:
        return ""
    return json.dumps({k: state[k] for k in ("revision", "step", "weights") if k in state}, sort_keys=True)


def read_annotation(obj: dict | None) -> dict | None:
    """The canary state an object's annotation records (None: no canary)."""
    text = (((obj or {}).get("metadata") or {}).get("annotations") or {}).get(release.CANARY_ANNOTATION)
    try:
        return json.loads(text) if text else None
    except ValueError:
        return {"unreadable": text}


def weighted(virtual_service: dict, weights: list[int], state: dict | None = None) -> dict:
    """Return the VirtualService with each route that splits stable and canary weighted [stable, canary], and the
    canary annotation set to `state` (removed when None)."""
    found = copy.deepcopy(virtual_service)
    for http in found.get("spec", {}).get("http") or []:
        routes = http.get("route") or []
        subsets = [(r.get("destination") or {}).get("subset") for r in routes]
        if subsets == list(release.SUBSETS):
            for route, weight in zip(routes, weights):
                route["weight"] = weight
    annotations = dict((found["metadata"].get("annotations") or {}))
    annotations.pop(release.CANARY_ANNOTATION, None)
    if state:
        annotations[release.CANARY_ANNOTATION] = annotation(state)
    if annotations:
        found["metadata"]["annotations"] = annotations
    else:
        found["metadata"].pop("annotations", None)
    return found


def weights_of(virtual_service: dict | None) -> list[int] | None:
    """The [stable, canary] weights of a VirtualService's weighted routes (None: it has none, or they disagree)."""
    found = set()
    for http in ((virtual_service or {}).get("spec") or {}).get("http") or []:
        routes = http.get("route") or []
        if [(r.get("destination") or {}).get("subset") for r in routes] == list(release.SUBSETS):
            found.add(tuple(r.get("weight", 0) for r in routes))
    return list(found.pop()) if len(found) == 1 else None


def splits(virtual_service: dict | None, destination_rule: dict | None) -> bool:
    """Whether a live route can carry a canary: weighted routes to stable and canary, and a rule with both subsets."""
    subsets = {s.get("name") for s in ((destination_rule or {}).get("spec") or {}).get("subsets") or []}
    return weights_of(virtual_service) is not None and set(release.SUBSETS) <= subsets
