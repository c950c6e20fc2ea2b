"""Where a team's routes may send traffic (podserve.tooling.tenancy): the one place the rule is made, for the chart's
podserve-routes and render's own check alike."""

from __future__ import annotations

import copy

import pytest

from podserve.tooling import checks, render, tenancy
from podserve.tooling.values import load_values
from service_files import write_values


def test_a_team_s_routes_may_reach_its_own_namespaces_of_the_region_only(conf):
    assert tenancy.route_namespaces(conf, "imo", "hk") == ["podserve-imo", "podserve-imo-ab", "podserve-imo-grey"]
    assert tenancy.route_namespaces(conf, "imo", "eu") == ["podserve-imo"]  # grey and ab run in hk only


@pytest.mark.parametrize("change, says", [
    (lambda http: http["route"][0]["destination"].update(host="alertmanager.monitoring.svc.cluster.local"),
     "routes or mirrors to 'alertmanager.monitoring.svc.cluster.local'"),
    (lambda http: http.update(mirror={"host": "text-direction.podserve-imo.svc.cluster.local"}),
     "only Services of team like's namespaces"),
    (lambda http: http.update(mirrors=[{"destination": {"host": "metrics.podserve-like.svc.cluster.local."}}]),
     "routes or mirrors to 'metrics.podserve-like.svc.cluster.local.'"),
    (lambda http: http["route"][0]["destination"].update(host="text-direction"), "routes or mirrors to 'text-direction'"),
    (lambda http: http.update(delegate={"name": "x", "namespace": "podserve-like"}), "delegate is not allowed"),
], ids=["alertmanager", "mirror-to-another-team", "mirrors-with-a-dot", "short-name", "delegate"])
def test_render_refuses_what_podserve_routes_refuses(tmp_path, conf, change, says):
    rendered = render.render(write_values(tmp_path), stages=["grey"], conf=conf).stages["grey"]
    docs = copy.deepcopy(rendered)
    vs = next(d for d in docs if d["kind"] == "VirtualService")
    change(vs["spec"]["http"][0])
    problems = [str(p) for p in checks.check_stage(docs, load_values(write_values(tmp_path), conf), conf,
                                                   conf.stages["grey"])]
    assert any(says in p for p in problems), problems


def test_grey_mirroring_its_own_production_and_the_stage_s_gateway_pass(tmp_path, conf):
    rendered = render.render(write_values(tmp_path), stages=["grey"], conf=conf).stages["grey"]
    vs = copy.deepcopy(next(d for d in rendered if d["kind"] == "VirtualService"))
    vs["spec"]["http"][0]["mirror"] = {"host": "text-direction.podserve-like.svc.cluster.local"}
    assert tenancy.destination_problems(vs, conf, "like", conf.stages["grey"]) == []
    vs["spec"]["gateways"] = ["mesh"]
    assert tenancy.destination_problems(vs, conf, "like", conf.stages["grey"]) == [
        "binds ['mesh']: only the stage's Gateway istio-ingress/podserve"]
