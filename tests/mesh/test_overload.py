"""Overload through the real Envoy: the mesh's connection-pool limits shed the excess, fast, before the pods do.

The DestinationRule admits three quarters of what the pods hold before they shed
(mesh_limits.py); past that, Envoy answers 503 itself with x-envoy-overloaded, which outlier
detection never counts against a pod. This is the other half of the outlier decision (see
templates/destinationrule.yaml.j2): under global overload the pods do not shed, so no
healthy pod is ejected for shedding.
"""

from __future__ import annotations

from mesh_setup import VALUES
from podserve.tooling import mesh_limits
from traffic import counts, percentile, steady_load, switch_dir

PATH = "/api/like/test"
CLIENTS, SECONDS, BATCH_SLEEP = 96, 5, "0.1"


def test_excess_gets_fast_503s_from_the_mesh_and_no_pod_is_ejected(mesh):
    workload = mesh.workload("hk", "test")
    (rule,) = [d for d in mesh.objects if d["kind"] == "DestinationRule" and d["metadata"]["name"] == "test"
               and d["metadata"]["namespace"] == mesh.conf.stages["hk"].namespace_for("like")]
    limit = rule["spec"]["trafficPolicy"]["connectionPool"]["http"]["http2MaxRequests"]
    assert limit == mesh_limits.connection_pool(VALUES, len(workload.pods), 300)["http"]["http2MaxRequests"] == 72
    ejections = "outlier_detection.ejections_enforced_total"
    ejected_before = mesh.envoy.cluster_stat(workload.cluster, ejections)
    flags = [switch_dir(mesh, "test", "hk", i) / "slow" for i in range(len(workload.pods))]
    for flag in flags:
        flag.write_text(BATCH_SLEEP)  # each pod: at most 4 requests per 100 ms
    try:
        outcomes = steady_load(mesh, PATH, clients=CLIENTS, seconds=SECONDS, pause_after_503=0.05)
    finally:
        for flag in flags:
            flag.unlink()
    answered = [o.seconds for o in outcomes if o.status == 200]
    mesh_503 = [o.seconds for o in outcomes if o.status == 503 and o.overloaded]
    pod_503 = [o for o in outcomes if o.status == 503 and not o.overloaded]
    overflow = mesh.envoy.cluster_stat(workload.cluster, "upstream_rq_active_overflow")  # max_requests
    ejected = mesh.envoy.cluster_stat(workload.cluster, ejections) - ejected_before
    print(f"\noverload: {CLIENTS} clients for {SECONDS} s against a limit of {limit}: {counts(outcomes)}; "
          f"503 from the mesh (x-envoy-overloaded) {len(mesh_503)}, p50 {percentile(mesh_503, .5) * 1000:.1f} ms, "
          f"p99 {percentile(mesh_503, .99) * 1000:.1f} ms; from the pods {len(pod_503)}; answered p50 "
          f"{percentile(answered, .5) * 1000:.0f} ms, p99 {percentile(answered, .99) * 1000:.0f} ms; "
          f"ejections during the test: {ejected}; Envoy's upstream_rq_active_overflow {overflow}")
    if pod_503:
        print(f"pods' own 503s: {sorted({o.detail for o in pod_503})}")
    assert set(counts(outcomes)) <= {200, 503}
    assert len(answered) > 100 and len(mesh_503) > 100 and overflow >= len(mesh_503)
    assert percentile(mesh_503, .5) < 0.25 and percentile(mesh_503, .99) < 2.0
    assert percentile(answered, .99) < 3.0  # ~0.6 s expected: 24 held per pod, 40 answered per second
    assert len(pod_503) <= 0.02 * len(mesh_503)
    assert ejected == 0
