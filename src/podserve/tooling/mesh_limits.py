"""What the mesh lets through to one stage's pods: the DestinationRule's connection-pool limits.

A pod answers 503 once it holds `queue_size` requests per model instance (the server's
admission limit, runtime/protocols/service_route.py: every request from the moment it is read until
it is answered). The mesh admits at most `MESH_SHARE` of what the stage's pods hold, so global
overload is shed by the gateway's Envoy (a fast local 503 with `x-envoy-overloaded`, never
counted against a pod by outlier detection) before it reaches a pod's own limit; the rest
absorbs least request's imbalance between pods, so that a pod does not shed while the mesh
still has room. `http_threads` does not enter: requests beyond the threads wait in the
request threads' queue, which the admission limit already counts.

The mesh also closes an idle connection to a pod before the pod would (`MESH_IDLE_SHARE` of the pod's
idle timeout, conf/platform.yaml's `http`): a connection the pod closes just as Envoy reuses it fails that
request (Istio's default upstream idle timeout, an hour, is far longer than the pod's).

Envoy applies these per gateway replica (each Envoy has its own circuit breakers), and
`max_requests` to HTTP/1.1 upstreams too (Istio's comment calling it HTTP/2-only is old).
"""

from __future__ import annotations

import math

#: The share of the pods' own limit the mesh fills, on average, before it sheds the excess itself.
MESH_SHARE = 0.75
#: The mesh's idle timeout towards a pod, as a share of the pod's own: the mesh always closes first.
MESH_IDLE_SHARE = 0.8


def instances_per_pod(values) -> int:
    """Return the model instances one pod runs: ins_num_per_gpu per GPU, or ins_num_per_gpu on the CPU."""
    return values["ins_num_per_gpu"] * max(values["gpu_num"], 1)


def pod_capacity(values) -> int:
    """Return how many requests one pod holds (read, not yet answered) before it sheds: queue_size per instance."""
    return instances_per_pod(values) * values["queue_size"]


def most_pods(values, replicas: int, autoscaled: bool) -> int:
    """Return the most pods the stage may run: its replicas, or the HPA's maximum when it autoscales."""
    return max(replicas, values["max_replicas"]) if autoscaled else replicas


def connection_pool(values, pods: int, pod_idle_seconds: float) -> dict:
    """Return the DestinationRule's connectionPool for a stage of `pods` pods (Istio's field names), given the
    pods' own idle timeout."""
    limit = max(1, math.floor(pods * pod_capacity(values) * MESH_SHARE))
    idle = max(1, math.floor(pod_idle_seconds * MESH_IDLE_SHARE))
    return {"http": {"http2MaxRequests": limit, "http1MaxPendingRequests": limit, "idleTimeout": f"{idle}s"}}
