"""The objects of a production canary, as pure functions of rendered objects (tooling/deploy/canary_objects.py)."""

from __future__ import annotations

import copy
from pathlib import Path

from podserve.tooling import release
from podserve.tooling.conf import load_conf
from podserve.tooling.deploy import canary_objects, drift
from podserve.tooling.deploy.target import from_values

REPO = Path(__file__).resolve().parents[2]


def _rendered(tmp_path) -> dict:
    """The example's hk objects with canary_steps [10, 50] and Kong's host port (use_srv)."""
    values = tmp_path / "value.py"
    text = (REPO / "value.py").read_text().replace("use_srv = False ", "use_srv = True ", 1)
    values.write_text(text.replace("host_port = 0 ", "host_port = 20001 ", 1) + "\ncanary_steps = [10, 50]\n")
    conf = load_conf()
    return {o["kind"]: o for o in from_values(values, conf, conf.stages["hk"], "v2").objects}


def test_the_canary_is_the_new_template_on_track_canary_without_host_port_with_its_replicas_and_state(tmp_path):
    rendered = _rendered(tmp_path)
    stable = drift.stamped(rendered["Deployment"])
    assert any("hostPort" in p for c in stable["spec"]["template"]["spec"]["containers"] for p in c.get("ports", []))
    before = copy.deepcopy(stable)
    state = {"revision": 7, "step": 0, "weights": [90, 10], "analyses": ["not in the annotation"]}
    canary = canary_objects.canary_deployment(stable, 2, state)
    assert stable == before  # the rendered object is left as it was
    assert canary["metadata"]["name"] == release.canary_name(stable["metadata"]["name"])
    assert canary["spec"]["replicas"] == 2
    assert canary["spec"]["selector"]["matchLabels"] == dict(stable["spec"]["selector"]["matchLabels"],
                                                             track="canary")
    labels = canary["spec"]["template"]["metadata"]["labels"]
    assert labels["track"] == "canary" and {k: v for k, v in labels.items() if k != "track"} == \
        {k: v for k, v in stable["spec"]["template"]["metadata"]["labels"].items() if k != "track"}
    assert not any("hostPort" in p for c in canary["spec"]["template"]["spec"]["containers"]
                   for p in c.get("ports", []))  # Kong registers stable's; two pods must not want one node port
    assert canary["metadata"]["labels"]["team"] == stable["metadata"]["labels"]["team"]
    assert canary_objects.read_annotation(canary) == {"revision": 7, "step": 0, "weights": [90, 10]}
    containers = lambda d: [{k: v for k, v in c.items() if k != "ports"}  # noqa: E731
                            for c in d["spec"]["template"]["spec"]["containers"]]
    assert containers(canary) == containers(stable)  # the image, env, probes and resources: the new revision's


def test_weights_go_on_every_split_route_only_and_the_state_on_the_route(tmp_path):
    route = _rendered(tmp_path)["VirtualService"]
    assert canary_objects.weights_of(route) == [100, 0] and canary_objects.splits(route, _rendered(tmp_path)[
        "DestinationRule"])
    state = {"revision": 3, "step": 1, "weights": [50, 50]}
    weighted = canary_objects.weighted(route, [50, 50], state)
    assert canary_objects.weights_of(weighted) == [50, 50] and canary_objects.weights_of(route) == [100, 0]
    header_routes = [h for h in weighted["spec"]["http"] if any("headers" in m for m in h["match"])]
    assert header_routes and all([d["destination"]["subset"] for d in h["route"]] == ["canary"] and
                                 "weight" not in h["route"][0] for h in header_routes)
    assert canary_objects.read_annotation(weighted) == state
    back = canary_objects.weighted(weighted, [100, 0])
    assert canary_objects.weights_of(back) == [100, 0] and canary_objects.read_annotation(back) is None
    edited = copy.deepcopy(weighted)
    next(h for h in edited["spec"]["http"] if "headers" not in h["match"][0])["route"][0]["weight"] = 70
    assert canary_objects.weights_of(edited) is None  # routes that disagree: no one weight to record


def test_a_route_rendered_before_canaries_does_not_split(tmp_path):
    rendered = _rendered(tmp_path)
    old = copy.deepcopy(rendered["VirtualService"])
    old["spec"]["http"] = [dict(h, route=[{"destination": {k: v for k, v in h["route"][0]["destination"].items()
                                                           if k != "subset"}}])
                           for h in old["spec"]["http"] if "headers" not in h["match"][0]]
    assert canary_objects.weights_of(old) is None and not canary_objects.splits(old, rendered["DestinationRule"])
    rule = copy.deepcopy(rendered["DestinationRule"])
    rule["spec"].pop("subsets")
    assert not canary_objects.splits(rendered["VirtualService"], rule)
