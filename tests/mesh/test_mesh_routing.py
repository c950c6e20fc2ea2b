"""Routing and rewrites through the real Envoy, configured from the rendered VirtualServices of `test` and `test-2`.

Both services run side by side, each with its grey, ab and production stage. Every public
path reaches its own service's pods (rewritten to the pod's /api/<service>), and no path
of one ever reaches the other's: which pods Envoy sent a request to is read from its
per-host counters, not inferred from the answer.
"""

from __future__ import annotations

import pytest

from mesh_setup import HOST, SERVICES
from traffic import post

#: Suffixes after a route's path: sub-paths, and the names that caught the old prefix routes.
SUFFIXES = ["", "/", "-2", "-2/", "2", "-2/x", "/x", "/-2", "x", "-", "/api/ping", "-2/predict"]


def sent_per_service(mesh) -> dict[str, int]:
    """Return {service: requests Envoy has sent to its pods, every stage}."""
    totals = dict.fromkeys(SERVICES, 0)
    for workload in mesh.workloads:
        hosts = mesh.envoy.hosts(workload.cluster)
        totals[workload.service] += sum(h["rq_total"] for h in hosts.values())
    return totals


def owner_of(mesh, path: str, host: str = HOST) -> tuple[int, list[str]]:
    """POST `path`; return the status and the services whose pods Envoy sent it to."""
    before = sent_per_service(mesh)
    status = post(mesh, path, headers={"Host": host}).status_code
    after = sent_per_service(mesh)
    return status, [s for s in SERVICES if after[s] > before[s]]


@pytest.mark.parametrize("stage", ["grey", "ab", "hk"])
def test_every_stage_routes_and_rewrites_to_its_own_pods(mesh, stage):
    for service in SERVICES:
        public = mesh.conf.stages[stage].public_path(service, "like")
        reply = post(mesh, public, first=3.0)
        assert reply.status_code == 200, (public, reply.text)
        assert reply.json()["results"] == [7.0, 1.0, 1.0, 1.0]  # 2x + 1 from the pod's /api/<service>
        status, owners = owner_of(mesh, public)
        assert (status, owners) == (200, [service])
        # A sub-path goes to the same service, rewritten under /api/<service>/ (which the pod does not serve).
        status, owners = owner_of(mesh, public + "/x")
        assert (status, owners) == (404, [service])


def test_test_and_test_2_never_receive_each_others_requests(mesh):
    checked = []
    for stage in ("grey", "ab", "hk"):
        roots = {service: mesh.conf.stages[stage].public_path(service, "like") for service in SERVICES}
        for root in roots.values():
            for suffix in SUFFIXES:
                path = root + suffix
                # The stage's rule (conf/stages.yaml): the path itself and sub-paths under "<path>/", nothing else.
                expected = [s for s, r in roots.items() if path == r or path.startswith(r + "/")]
                status, owners = owner_of(mesh, path)
                checked.append((path, status, owners))
                assert owners == expected, f"{path} reached {owners}, expected {expected}"
                assert owners or status == 404  # no route: Envoy's own 404
    reached = sum(bool(owners) for _, _, owners in checked)
    print(f"\nrouting: {len(checked)} paths of test and test-2 through Envoy: {reached} reached exactly their own "
          f"service, {len(checked) - reached} none (404 from Envoy); none reached both")
    assert len(checked) == 3 * 2 * len(SUFFIXES)


def test_a_host_the_gateway_does_not_serve_gets_404(mesh):
    status, owners = owner_of(mesh, "/api/like/test", host="infer-eu.example.com")
    assert (status, owners) == (404, [])
