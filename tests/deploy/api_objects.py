"""API-shaped objects for the diagnosis's unit tests: a Deployment, its ReplicaSet, pods and events.

Shapes follow what the API server returns (Kubernetes 1.35) and what a kubelet writes in
each failure (pkg/kubelet: kuberuntime_manager.go, images/image_manager.go, prober).
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

NOW = datetime(2026, 11, 22, 10, 0, 0, tzinfo=timezone.utc)
DEPLOYMENT_UID = "d-uid"
RS_UID = "rs-uid-2"
IMAGE = "registry.hk.example.com/like/text-direction:abc123"


def stamp(seconds_ago: float = 0) -> str:
    return (NOW - timedelta(seconds=seconds_ago)).strftime("%Y-%m-%dT%H:%M:%SZ")


def deployment(replicas=1, updated=0, ready=0, available=0, total=None, generation=2, observed=2,
               conditions=(), deadline=185) -> dict:
    return {
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "text-direction", "namespace": "podserve-grey", "uid": DEPLOYMENT_UID,
                     "generation": generation, "annotations": {"deployment.kubernetes.io/revision": "2"}},
        "spec": {"replicas": replicas, "progressDeadlineSeconds": deadline,
                 "selector": {"matchLabels": {"service": "text-direction", "stage": "grey"}}},
        "status": {"observedGeneration": observed, "replicas": updated if total is None else total,
                   "updatedReplicas": updated, "readyReplicas": ready, "availableReplicas": available,
                   "conditions": list(conditions)},
    }


def replicasets() -> list[dict]:
    old = {"kind": "ReplicaSet", "metadata": {"name": "text-direction-old", "uid": "rs-uid-1",
                                             "annotations": {"deployment.kubernetes.io/revision": "1"},
                                             "ownerReferences": [{"uid": DEPLOYMENT_UID, "controller": True}]}}
    new = {"kind": "ReplicaSet", "metadata": {"name": "text-direction-new", "uid": RS_UID,
                                             "annotations": {"deployment.kubernetes.io/revision": "2"},
                                             "ownerReferences": [{"uid": DEPLOYMENT_UID, "controller": True}]}}
    return [old, new]


def pod(name="text-direction-new-x1", owner=RS_UID, phase="Running", ready=False, statuses=None,
        conditions=None, memory="8Gi", created_ago=60) -> dict:
    cond = conditions if conditions is not None else [
        {"type": "PodScheduled", "status": "True", "lastTransitionTime": stamp(created_ago)},
        {"type": "Ready", "status": "True" if ready else "False", "lastTransitionTime": stamp(10)}]
    return {
        "kind": "Pod",
        "metadata": {"name": name, "namespace": "podserve-grey", "uid": f"uid-{name}",
                     "creationTimestamp": stamp(created_ago), "ownerReferences": [{"uid": owner, "controller": True}]},
        "spec": {"containers": [{
            "name": "server", "image": IMAGE,
            "resources": {"requests": {"cpu": "4", "memory": memory},
                          "limits": {"cpu": "4", "memory": memory, "nvidia.com/gpu": "1"}},
            "startupProbe": {"httpGet": {"path": "/api/ping", "port": "http"}, "periodSeconds": 5,
                             "failureThreshold": 12}}]},
        "status": {"phase": phase, "conditions": cond, "containerStatuses": statuses if statuses is not None else [
            {"name": "server", "image": IMAGE, "ready": ready, "restartCount": 0,
             "state": {"running": {"startedAt": stamp(30)}}}]},
    }


def crashed(reason="Error", exit_code=1, restarts=1, message="") -> list[dict]:
    """A container the kubelet is backing off after it terminated (OOMKilled or Error)."""
    return [{"name": "server", "image": IMAGE, "ready": False, "restartCount": restarts,
             "lastState": {"terminated": {"exitCode": exit_code, "reason": reason, "message": message}},
             "state": {"waiting": {"reason": "CrashLoopBackOff",
                                   "message": "back-off 10s restarting failed container=server"}}}]


def unschedulable(message: str, seconds_ago: float) -> list[dict]:
    return [{"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": message,
             "lastTransitionTime": stamp(seconds_ago)}]


def event(pod_obj: dict, reason: str, message: str, kind="Warning", seconds_ago=5) -> dict:
    return {"kind": "Event", "type": kind, "reason": reason, "message": message,
            "metadata": {"name": f"{pod_obj['metadata']['name']}.{reason.lower()}"},
            "involvedObject": {"kind": "Pod", "name": pod_obj["metadata"]["name"],
                               "uid": pod_obj["metadata"]["uid"]},
            "lastTimestamp": stamp(seconds_ago)}
