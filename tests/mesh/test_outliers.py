"""Outlier detection through the real Envoy, per the rendered DestinationRule as istiod translates it (see its
template's comment).

A pod whose handler is broken answers 500: after consecutive5xxErrors of them Envoy ejects
it, and it returns after baseEjectionTime (at the next interval sweep). maxEjectionPercent
is minded: with two of three pods broken, only one is ejected (50% allows one host of three).
"""

from __future__ import annotations

import time

from podserve.testbed.processes import poll_until
from traffic import post, switch_dir

PATH = "/api/like/test"


def _outlier_settings(mesh) -> dict:
    (rule,) = [d for d in mesh.objects if d["kind"] == "DestinationRule" and d["metadata"]["name"] == "test"
               and d["metadata"]["namespace"] == mesh.conf.stages["hk"].namespace_for("like")]
    return rule["spec"]["trafficPolicy"]["outlierDetection"]


def _seconds(text: str) -> float:
    return float(text.rstrip("s"))


def test_a_broken_pod_is_ejected_and_returns_after_the_ejection_time(mesh):
    rendered = _outlier_settings(mesh)
    threshold, base, interval = (rendered["consecutive5xxErrors"], _seconds(rendered["baseEjectionTime"]),
                                 _seconds(rendered["interval"]))
    workload = mesh.workload("hk", "test")
    pods = {pod.address: pod.name for pod in workload.pods}
    # Envoy's host stats and ejections last as long as the session's mesh: an earlier test (a SIGKILLed pod's
    # connect failures) may have ejected a host. Start from no ejection and count each host's errors from here on.
    def none_ejected() -> dict | None:
        found = mesh.envoy.hosts(workload.cluster)
        return found if found and not any(host["ejected"] for host in found.values()) else None

    hosts = poll_until(none_ejected, f"no host of {workload.cluster} ejected", timeout=60)
    errors_before = {address: host["rq_error"] for address, host in hosts.items()}
    broken_addresses = [workload.pods[i].address for i in (1, 2)]  # pods[i] runs with switch_dir(..., i)
    broken = [switch_dir(mesh, "test", "hk", i) / "broken" for i in (1, 2)]
    for flag in broken:
        flag.write_text("")
    try:
        started, ejected, statuses = time.monotonic(), None, []
        for _ in range(200):
            statuses.append(post(mesh, PATH).status_code)
            hosts = mesh.envoy.hosts(workload.cluster)
            ejected = next((address for address in broken_addresses if hosts.get(address, {}).get("ejected")), None)
            if ejected or time.monotonic() - started > 20:
                break
        ejected_at = time.monotonic()
        assert ejected is not None, f"no broken pod ejected after {len(statuses)} requests: {statuses}"
        errors_at_ejection = hosts[ejected]["rq_error"] - errors_before.get(ejected, 0)
        # The other broken pod stays in: a second ejection would be 2/3 = 67% > maxEjectionPercent.
        after = [post(mesh, PATH).status_code for _ in range(60)]
        hosts = mesh.envoy.hosts(workload.cluster)
        still_ejected = [pods[a] for a, h in hosts.items() if h["ejected"]]
        overflow = mesh.envoy.cluster_stat(workload.cluster, "outlier_detection.ejections_overflow")
    finally:
        for flag in broken:
            flag.unlink()
    while hosts[ejected]["ejected"] and time.monotonic() - ejected_at < base + interval + 10:
        time.sleep(0.1)
        hosts = mesh.envoy.hosts(workload.cluster)
    returned_after = time.monotonic() - ejected_at
    print(f"\noutlier detection (rendered: {rendered}): {pods[ejected]} ejected after {errors_at_ejection} "
          f"consecutive 500s, {len(statuses)} requests, {ejected_at - started:.2f} s; while ejected, 60 requests "
          f"gave {after.count(200)} x 200 and {after.count(500)} x 500 (the second broken pod, kept in by "
          f"maxEjectionPercent; ejections_overflow={overflow}); back in rotation {returned_after:.2f} s after "
          f"its ejection (baseEjectionTime {base:g} s, interval {interval:g} s)")
    assert errors_at_ejection == threshold
    assert still_ejected == [pods[ejected]]
    assert after.count(500) > 0 and overflow >= 1
    assert not hosts[ejected]["ejected"], f"still ejected {returned_after:.1f} s after its ejection"
    assert base - 0.5 <= returned_after <= base + interval + 10
    assert post(mesh, PATH).status_code == 200
