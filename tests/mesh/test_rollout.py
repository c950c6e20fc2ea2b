"""Pods going away under steady load through the real Envoy: a rolling restart costs callers nothing, SIGKILL a few.

Rolling restart: every production pod replaced one at a time as a Deployment rollout does
(new pod ready and in the endpoints; the old one leaves the endpoints, gets SIGTERM after
the preStop sleep, drains and exits). SIGKILL: a pod dies with requests in flight; those
fail, the route's retries (connect-failure) send new ones elsewhere, the kubelet's probe
takes it out of the endpoints and the restarted pod comes back.
"""

from __future__ import annotations

import threading
import time

from traffic import counts, post, steady_load, switch_dir

PATH = "/api/like/test"
CLIENTS = 32


def test_a_rolling_restart_of_every_production_pod_fails_no_request(mesh):
    workload = mesh.workload("hk", "test")
    old = {pod.name: pod.pid for pod in workload.pods}
    steps: list[str] = []
    rollout = threading.Thread(target=lambda: mesh.rolling_restart("hk", "test", on_step=steps.append))
    started = time.monotonic()
    outcomes: list = []
    load = threading.Thread(target=lambda: outcomes.extend(steady_load(mesh, PATH, CLIENTS, seconds=45, stop=rollout)))
    load.start()
    time.sleep(1)
    rollout.start()
    rollout.join(120)
    load.join(120)
    seconds = time.monotonic() - started
    failed = [o for o in outcomes if o.status != 200]
    print(f"\nrolling restart of {len(old)} pods under {CLIENTS} clients for {seconds:.1f} s: "
          f"{len(outcomes)} requests, {len(failed)} failed {counts(outcomes)}")
    for step in steps:
        print(f"  {step}")
    assert not rollout.is_alive()
    assert len(workload.pods) == len(old) and not {p.pid for p in workload.pods} & set(old.values())
    assert len(outcomes) > 500
    assert failed == [], sorted({o.detail for o in failed})


def test_a_pod_killed_with_sigkill_costs_a_bounded_number_of_requests_and_the_mesh_recovers(mesh):
    workload = mesh.workload("hk", "test")
    victim = workload.pods[0]
    killed_pid = victim.pid
    slow = switch_dir(mesh, "test", "hk", 0) / "slow"
    slow.write_text("0.3")  # so that the victim has requests in flight when it dies
    outcomes: list = []
    load = threading.Thread(target=lambda: outcomes.extend(steady_load(mesh, PATH, 16, seconds=4)))
    load.start()
    time.sleep(1.5)
    victim.kill()
    killed_at = time.monotonic()
    slow.unlink()
    load.join(60)
    # Recovered: the kubelet (simulated) restarted the container, the probe found it ready, it is back in the endpoints.
    while time.monotonic() - killed_at < 30 and not (victim.ready and victim.address in mesh.endpoints(workload.cluster)
                                                     and victim.pid != killed_pid):
        time.sleep(0.1)
    back_after = time.monotonic() - killed_at
    after = [post(mesh, PATH).status_code for _ in range(30)]
    failed = [o for o in outcomes if o.status != 200]
    in_flight = [o for o in failed if o.started <= killed_at]
    # Sent in the few milliseconds before Envoy read the closed connections: may still go to the dead pod.
    unseen = [o for o in failed if killed_at < o.started <= killed_at + 0.25]
    print(f"\nSIGKILL of {victim.name} under 16 clients: {len(outcomes)} requests, {len(failed)} failed "
          f"({len(in_flight)} in flight when it died, {len(unseen)} sent just after) {counts(outcomes)} "
          f"{sorted({o.detail[:60] for o in failed})}; "
          f"restarted and back in the endpoints after {back_after:.1f} s; then 30 requests: {after.count(200)} x 200")
    # Each client has at most one request in flight: those on the dead pod fail (a POST that may have run is not
    # retried); requests sent after the kill are retried elsewhere on connect failure and must all succeed.
    assert len(in_flight) <= 16 and len(unseen) <= 16 and len(failed) == len(in_flight) + len(unseen)
    assert victim.pid != killed_pid and victim.address in mesh.endpoints(workload.cluster)
    assert after == [200] * 30
