"""What really runs against what the history recorded: a killed deploy, a `kubectl rollout undo`, an incident scale.

Every Deployment the tool applies carries, on its pod template, the hash of that template as
rendered (TEMPLATE_HASH). Comparing the live Deployment's hash with the recorded revisions'
tells which revision's pods really run, whoever put them there. A `pending` revision left in
the history was started and never finished: its deploy was killed (SIGKILL: nothing could
run), or its rollback was cut short (commands.roll_back_to). `differences` is a pure
function of the history and the live Deployment; the deploy tool reports its lines at the
start of `apply` and in `status`.
"""

from __future__ import annotations

import copy
import hashlib
import json

from podserve.tooling.deploy.history import History, Revision
from podserve.tooling.rollout import WORKLOAD_KINDS, workload_of

#: The pod-template annotation holding the hash of the template as rendered.
TEMPLATE_HASH = "podserve.io/template-hash"


def template_hash(deployment: dict) -> str:
    """Return the hash of a Deployment's pod template as rendered (its own hash annotation left out)."""
    template = copy.deepcopy((deployment.get("spec") or {}).get("template") or {})
    ((template.get("metadata") or {}).get("annotations") or {}).pop(TEMPLATE_HASH, None)
    return hashlib.sha256(json.dumps(template, sort_keys=True).encode()).hexdigest()[:16]


def stamped(obj: dict) -> dict:
    """Return a Deployment or Rollout with its template's hash on the template (other kinds unchanged)."""
    if obj.get("kind") not in WORKLOAD_KINDS:
        return obj
    obj = copy.deepcopy(obj)
    metadata = obj["spec"]["template"].setdefault("metadata", {})
    metadata.setdefault("annotations", {})[TEMPLATE_HASH] = template_hash(obj)
    return obj


def running_hash(deployment: dict | None) -> str | None:
    """Return the template hash a (live or recorded) Deployment carries, or None."""
    template = ((deployment or {}).get("spec") or {}).get("template") or {}
    return ((template.get("metadata") or {}).get("annotations") or {}).get(TEMPLATE_HASH)


def _deployment(revision: Revision | None) -> dict | None:
    return workload_of(revision.objects if revision else [])


def _image(deployment: dict | None) -> str:
    containers = (((deployment or {}).get("spec") or {}).get("template") or {}).get("spec", {}).get("containers") or []
    return containers[0].get("image", "?") if containers else "?"


def differences(history: History, live: dict | None) -> list[str]:
    """Return one line per way the live Deployment differs from the recorded current revision (none: it matches)."""
    found = []
    pending = history.pending
    if pending is not None:
        found.append(f"revision {pending.number} ({pending.image}) was started by {pending.applied_by} at "
                     f"{pending.applied_at} and never finished: that deploy was killed (SIGKILL, a lost runner) or "
                     "its rollback was cut short (an API error, SIGTERM), so what it applied may be running "
                     f"unrecorded; `python -m podserve.tooling.deploy rollback --stage {history.stage}` puts back "
                     "what ran before it")
    current = history.current
    recorded = _deployment(current)
    if current is None or recorded is None or running_hash(recorded) is None:
        return found  # nothing recorded to compare with (or recorded before hashes were kept)
    kind = recorded.get("kind", "Deployment")
    if live is None:
        return found + [f"the {kind} of recorded revision {current.number} is gone (deleted outside the tool)"]
    live_hash = running_hash(live)
    if live_hash != running_hash(recorded):
        known = [(name, r) for name, r in (("pending", pending), ("previous", history.previous))
                 if r is not None and running_hash(_deployment(r)) == live_hash]
        what = (f"revision {known[0][1].number}'s pod template" if known and known[0][0] == "previous" else
                f"the pod template of unfinished revision {known[0][1].number}" if known else
                "a pod template no recorded revision has")
        found.append(f"the live {kind} runs {what} (image {_image(live)}), not recorded revision "
                     f"{current.number} ({_image(recorded)}): changed outside the tool (`kubectl rollout undo`, an "
                     "edit)" + (" or by the killed deploy" if known and known[0][0] == "pending" else ""))
    scaled = not any(o.get("kind") in ("HorizontalPodAutoscaler", "ScaledObject") for o in current.objects)
    want, have = (recorded.get("spec") or {}).get("replicas"), (live.get("spec") or {}).get("replicas")
    if scaled and want is not None and have != want:
        found.append(f"the live {kind} has {have} replicas, recorded revision {current.number} {want}: "
                     "scaled by hand (an incident scale?)")
    return found


def template_drifted(history: History, live: dict | None) -> bool:
    """Whether the live Deployment runs another pod template than the recorded current revision's."""
    recorded = running_hash(_deployment(history.current))
    return recorded is not None and live is not None and running_hash(live) != recorded


def running_revision(history: History, live: dict | None) -> Revision | None:
    """Return the recorded (or pending) revision whose pod template the live Deployment runs, or None."""
    live_hash = running_hash(live)
    for revision in (history.current, history.pending, history.previous):
        if revision is not None and live_hash and running_hash(_deployment(revision)) == live_hash:
            return revision
    return None
