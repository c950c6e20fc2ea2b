"""Services `test` and `test-2` side by side: Istio's matching rules show no path of one reaches the other.

Istio merges the VirtualServices bound to one gateway host with no defined order, so a
path that two services' routes both accept may go to either. These tests render both
services for every stage, evaluate every route's uri match on many paths, and require
each path to reach at most one service, and every path of `test` to reach `test` only.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from podserve.tooling import render, routing
from podserve.tooling.valuefile import ValueFileError
from service_files import write_values

#: Suffixes after a route's path: sub-paths, and the names that caught the old prefix routes.
SUFFIXES = ["", "/", "-2", "-2/", "2", "-2/x", "/x", "/-2", "x", "-", "/api/ping", "-2/predict", "?q=1"]


@pytest.fixture(scope="module")
def side_by_side(tmp_path_factory, conf):
    folder = tmp_path_factory.mktemp("services")
    rendered = {}
    for name in ("test", "test-2"):
        path = write_values(folder, f"{name}.py", service_name=name)
        rendered[name] = render.render(path, conf=conf).stages
    virtual_services = [doc for stages in rendered.values() for docs in stages.values() for doc in docs
                        if doc["kind"] == "VirtualService"]
    return rendered, virtual_services


def paths_of(public_path: str) -> list[str]:
    return [public_path + suffix for suffix in SUFFIXES]


def test_no_path_reaches_both_services(side_by_side, conf):
    rendered, virtual_services = side_by_side
    hosts = {stage.ingress_host for stage in conf.stages.values()}
    checked = 0
    for stage in conf.stages.values():
        for service in ("test", "test-2"):
            for path in paths_of(stage.public_path(service, "like")):
                for host in hosts:
                    owners = routing.owners_of(virtual_services, host, path)
                    assert len(owners) <= 1, f"{host}{path} reaches {owners}"
                    checked += 1
    assert checked > 300


def test_each_service_gets_its_own_paths_and_only_those(side_by_side, conf):
    _, virtual_services = side_by_side
    for stage in conf.stages.values():
        for service in ("test", "test-2"):
            root = stage.public_path(service, "like")
            assert _services(routing.owners_of(virtual_services, stage.ingress_host, root)) == [service]
            assert _services(routing.owners_of(virtual_services, stage.ingress_host, root + "/x")) == [service]
            assert service not in _services(routing.owners_of(virtual_services, stage.ingress_host, root + "-2"))
    # the prefix that `test` would have had in the old system is exactly what is gone
    assert _services(routing.owners_of(virtual_services, "infer-hk.example.com", "/api/like/test-2")) == ["test-2"]


def test_no_pair_of_rendered_routes_overlaps(side_by_side):
    _, virtual_services = side_by_side
    routes = [r for doc in virtual_services for r in routing.routes_of(doc)]
    by_owner = {owner: [r for r in routes if _services([r.owner]) == [owner]] for owner in ("test", "test-2")}
    assert len(by_owner["test"]) == len(by_owner["test-2"]) == 10  # 5 stages x (exact + "/"-prefix)
    assert routing.conflicts(by_owner["test"], by_owner["test-2"]) == []


@settings(max_examples=200, deadline=None)
@given(suffix=st.text(alphabet="abt-2/._~0", max_size=12))
def test_any_path_reaches_at_most_one_service(side_by_side, suffix):
    _, virtual_services = side_by_side
    for root in ("/api/like/test", "/grey/like/test", "/api/ab-test/like/test"):
        for host in ("infer-hk.example.com", "infer-eu.example.com"):
            owners = routing.owners_of(virtual_services, host, root + suffix)
            assert len(owners) <= 1
            if owners and suffix.startswith("-2"):
                assert _services(owners) == ["test-2"]


def test_the_old_bare_prefix_route_would_have_caught_test_2():
    """The evaluator sees the old bug: a prefix without '/' for test accepts test-2's path."""
    legacy = routing.UriMatch("prefix", "/api/like/test")
    assert legacy.accepts("/api/like/test-2")
    assert routing.overlaps(legacy, routing.UriMatch("exact", "/api/like/test-2"))
    assert not routing.overlaps(routing.UriMatch("prefix", "/api/like/test/"), routing.UriMatch("exact", "/api/like/test-2"))


def legacy_virtual_service(prefix: str) -> str:
    return f"""apiVersion: v1
kind: List
items:
  - apiVersion: networking.istio.io/v1
    kind: VirtualService
    metadata: {{name: test, namespace: legacy}}
    spec:
      hosts: [infer-hk.example.com]
      http:
        - match: [{{uri: {{prefix: {prefix}}}}}]
          route: [{{destination: {{host: test.legacy.svc.cluster.local}}}}]
"""


def test_a_service_is_refused_when_an_existing_route_would_catch_it(tmp_path, conf):
    existing = tmp_path / "existing.yaml"
    existing.write_text(legacy_virtual_service("/api/like/test"))
    path = write_values(tmp_path, service_name="test-2")
    with pytest.raises(ValueFileError) as caught:
        render.render(path, conf=conf, existing_routes=routing.load_existing_routes(existing))
    assert [p.field for p in caught.value.problems] == ["service_name"]
    assert "legacy/test" in str(caught.value) and "choose another service_name" in str(caught.value)
    out = tmp_path / "out"
    assert render.main(["--all", "--values", str(path), "--existing-routes", str(existing), "--out", str(out)]) == 2
    assert not out.exists()


def test_an_existing_route_of_another_path_or_the_same_service_is_fine(tmp_path, conf):
    existing = tmp_path / "existing.yaml"
    existing.write_text(legacy_virtual_service("/api/like/other/"))
    path = write_values(tmp_path, service_name="test-2")
    render.render(path, conf=conf, existing_routes=routing.load_existing_routes(existing))


def test_regex_routes_are_probed():
    regex = routing.UriMatch("regex", "/api/like/te[a-z]+(/.*)?")
    assert routing.overlaps(regex, routing.UriMatch("exact", "/api/like/test"))
    assert routing.overlaps(regex, routing.UriMatch("prefix", "/api/like/test/"))
    assert not routing.overlaps(regex, routing.UriMatch("exact", "/api/imo/test"))


def _services(owners: list[str]) -> list[str]:
    """The service names of route owners ("<namespace>/<service>")."""
    return [owner.rpartition("/")[2] for owner in owners]
