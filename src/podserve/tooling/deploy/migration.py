"""Moving a production stage from the Deployment it ran before issue 66 to Argo's Rollout, no request dropped.

Applying the rendered Rollout over a live Deployment as any other change would prune the Deployment at once (its pods
stop while the Rollout's start) and hand the DestinationRule's subsets to Argo, which selects by its own pod template
hash (the Deployment's pods carry none: out of both subsets at once). So the first production apply with a Rollout
goes in two moves (commands.migrate_to_rollout):

1. the interim set: every rendered object, but the Rollout runs the live Deployment's pods (its template, its replica
   count), with no traffic routing and no steps. The rendered DestinationRule's subsets select no label, so both
   workloads' pods serve the stable subset; Argo creates the Rollout's ReplicaSet in full (a first revision has no
   canary) while the Deployment's pods go on serving;
2. once every Rollout pod is available, the Deployment is deleted (its pods drain as in any scale-down) and the wait
   lasts until they are gone, so that the canary's pods find their GPUs free.

The apply then goes on as for any Rollout: the rendered one (traffic routing, steps, analysis) replaces the interim
spec, and a new build is released as a canary against the pods that ran before, never straight to production. A
rollback to a revision that ran in the Deployment puts its pod template back into the Rollout (`into_rollout`): Argo
takes the old build back; the Deployment is never re-created beside a pruned Rollout.

    old = migration.legacy_deployment(live_deployment, rendered_objects)
    objects = migration.interim(rendered_objects, old)
"""

from __future__ import annotations

import copy

from podserve.tooling import release
from podserve.tooling.analysis_template import HASH_POD_LABEL
from podserve.tooling.deploy import drift
from podserve.tooling.rollout import workload_of

#: The Rollout's canary strategy fields the interim spec leaves out: no traffic routing (the subsets stay as rendered,
#: selecting both workloads' pods), no steps, and the scale-down delay Argo allows only with traffic routing.
_INTERIM_DROPS = ("trafficRouting", "steps", "scaleDownDelaySeconds")


def legacy_deployment(live: dict | None, objects: list[dict]) -> dict | None:
    """`live` (the production stage's Deployment of the Rollout's name, as the API server returns it) when `objects`
    run the stage in a Rollout: the Deployment to migrate from; else None."""
    workload = workload_of(objects)
    if live is None or workload is None or workload.get("kind") != "Rollout":
        return None
    return live if live["metadata"]["name"] == workload["metadata"]["name"] else None


def interim(objects: list[dict], deployment: dict, recorded: dict | None = None) -> list[dict]:
    """`objects` with the Rollout running `deployment`'s pods (`carrying`: its replica count, and the pod template
    of `recorded`, the history's copy of the same Deployment as the tool applied it, else the live one's) with no
    traffic routing and no steps. The live template holds the API server's defaults, which a Rollout's does not get:
    Argo would hash it apart from the rendered template of the same build and replace the pods a second time."""
    same = recorded is not None and (recorded.get("kind"), recorded["metadata"]["name"]) == (
        "Deployment", deployment["metadata"]["name"])
    source = dict(deployment, spec=dict(deployment["spec"], template=recorded["spec"]["template"])) \
        if same else deployment
    out = carrying(objects, source)
    for canary in (o["spec"]["strategy"]["canary"] for o in out if o.get("kind") == "Rollout"):
        for key in _INTERIM_DROPS:
            canary.pop(key, None)
    return out


def carrying(objects: list[dict], deployment: dict, replicas: bool = True) -> list[dict]:
    """`objects` with their Rollout running `deployment`'s pods: its pod template (without `track`, which Argo
    stamps; the tool's template hash annotation computed again) and, with `replicas`, its replica count."""
    out = []
    for obj in objects:
        if obj.get("kind") != "Rollout":
            out.append(obj)
            continue
        found = copy.deepcopy(obj)
        template = copy.deepcopy(deployment["spec"]["template"])
        template["metadata"].get("labels", {}).pop(release.TRACK_LABEL, None)
        found["spec"]["template"] = template
        if replicas and (deployment.get("spec") or {}).get("replicas") is not None:
            found["spec"]["replicas"] = deployment["spec"]["replicas"]
        out.append(drift.stamped(found))  # the template's hash again, `track` gone
    return out


def into_rollout(before: list[dict], live: list[dict]) -> list[dict]:
    """What a rollback to `before` (a revision that ran the stage in a Deployment) applies once the stage runs in a
    Rollout (`live`, its objects as applied): the live objects, their Rollout running the Deployment's pod template,
    so that Argo takes the old build back (its own ReplicaSet) rather than the rollback re-creating the Deployment
    beside a pruned Rollout; `before` itself when nothing runs in a Rollout."""
    was, runs = workload_of(before), workload_of(live)
    if was is None or runs is None or was.get("kind") != "Deployment" or runs.get("kind") != "Rollout":
        return before
    return carrying(live, was, replicas=False)


def old_pods_selector(deployment: dict) -> str:
    """The label selector of `deployment`'s pods and none of a Rollout's (each carries Argo's pod template hash)."""
    labels = ((deployment.get("spec") or {}).get("selector") or {}).get("matchLabels") or {}
    return ",".join([*(f"{key}={value}" for key, value in sorted(labels.items())), f"!{HASH_POD_LABEL}"])
