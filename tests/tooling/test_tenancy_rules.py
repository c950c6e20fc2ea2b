"""Where a team's routes may send traffic (podserve.tooling.tenancy): the one place the rule is made, for the chart's
podserve-routes and render's own check alike."""

from __future__ import annotations

import copy

import pytest

from podserve.tooling import checks, render, tenancy
from podserve.tooling.values import load_values
from service_files import write_values


def test_production_routes_reach_its_namespace_and_grey_s_and_grey_and_ab_only_their_own(conf):
    stages = conf.stages
    assert tenancy.route_namespaces(conf, "imo", stages["hk"]) == ["podserve-imo", "podserve-imo-grey"]  # the mirror
    assert tenancy.route_namespaces(conf, "imo", stages["eu"]) == ["podserve-imo"]  # grey runs in hk only
    # any branch's code: never production's pods under grey's or ab's path
    assert tenancy.route_namespaces(conf, "imo", stages["grey"]) == ["podserve-imo-grey"]
    assert tenancy.route_namespaces(conf, "imo", stages["ab"]) == ["podserve-imo-ab"]


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


def test_grey_routing_into_its_own_production_is_refused_and_the_stage_s_gateway_passes(tmp_path, conf):
    rendered = render.render(write_values(tmp_path), stages=["grey"], conf=conf).stages["grey"]
    vs = copy.deepcopy(next(d for d in rendered if d["kind"] == "VirtualService"))
    assert tenancy.destination_problems(vs, conf, "like", conf.stages["grey"]) == []
    into_production = copy.deepcopy(vs)
    into_production["spec"]["http"][0]["route"][0]["destination"]["host"] = "text-direction.podserve-like.svc.cluster.local"
    assert tenancy.destination_problems(into_production, conf, "like", conf.stages["grey"]) == [
        "routes or mirrors to 'text-direction.podserve-like.svc.cluster.local': only Services of team like's namespaces "
        "(podserve-like-grey) as <name>.<namespace>.svc.cluster.local"]
    vs["spec"]["gateways"] = ["mesh"]
    assert tenancy.destination_problems(vs, conf, "like", conf.stages["grey"]) == [
        "binds ['mesh']: only the stage's Gateway istio-ingress/podserve"]
