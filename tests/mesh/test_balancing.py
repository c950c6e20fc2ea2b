"""Least request through the real Envoy: a slowed pod gets measurably fewer requests than its peers."""

from __future__ import annotations

from traffic import requests_per_pod, steady_load, switch_dir

PATH = "/api/like/test"


def test_a_slow_pod_gets_fewer_requests(mesh):
    slow = switch_dir(mesh, "test", "hk", 0) / "slow"
    slow.write_text("0.15")  # every batch of pod 0 takes 150 ms more
    try:
        before = requests_per_pod(mesh, "hk")
        outcomes = steady_load(mesh, PATH, clients=8, seconds=6)
    finally:
        slow.unlink()
    after = requests_per_pod(mesh, "hk")
    sent = {name: after[name] - before.get(name, 0) for name in after}
    total = sum(sent.values())
    shares = {name: round(count / total, 3) for name, count in sent.items()}
    slow_name = mesh.workload("hk", "test").pods[0].name
    others = [share for name, share in shares.items() if name != slow_name]
    print(f"\nleast request, 8 clients for 6 s, {total} requests; shares per pod: {shares} (slowed: {slow_name})")
    assert all(o.status == 200 for o in outcomes), {o.status for o in outcomes}
    assert total >= 100, "too few requests to compare shares"
    assert shares[slow_name] < 0.6 * min(others), shares
