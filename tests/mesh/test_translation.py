"""The translation on its own: rendered objects -> IR -> Envoy bootstrap, every option, unknown fields refused.

Both steps have golden files (tests/mesh/golden/, the example value.py in region hk;
regenerate with UPDATE_GOLDEN=1 after a deliberate change), every rendered variation of
value.py and of the platform's mesh settings translates with no field left over, Envoy
itself accepts the result (`envoy --mode validate`), and a field the translation does not
know is refused by name.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil

import pytest
import yaml

from mesh_setup import REPO, write_values
from podserve.testbed.mesh import envoy, istio
from podserve.testbed.mesh.gateway import validate
from podserve.testbed.mesh.mesh import gateway_objects
from podserve.tooling import render
from podserve.tooling.conf import load_conf

GOLDEN = REPO / "tests" / "mesh" / "golden"
REGIONS = ("hk", "eu", "na")
#: Every value.py option that changes a VirtualService or DestinationRule (names, timeout, limits, autoscaling).
VARIED = {
    "plain": {},
    "autoscaled": dict(max_replicas=8, autoscale_metric="in_flight", autoscale_target=2.5, hk_replicas=None),
    "many_instances": dict(gpu_num=1, gpu_memory=1, ins_num_per_gpu=4, queue_size=100, max_batch_size=32, memory="3Gi"),
    "slow_service": dict(request_timeout_ms=120000, drain_seconds=30),
    "other_team": dict(username="imo", replicas=1, hk_replicas=None, eu_replicas=None, na_replicas=None),
}
#: Every Istio outlierDetection field the platform may set in conf/platform.yaml.
EVERY_OUTLIER_FIELD = {"consecutive5xxErrors": 7, "consecutiveGatewayErrors": 0, "interval": "5s",
                       "baseEjectionTime": "15s", "maxEjectionPercent": 34, "minHealthPercent": 0,
                       "splitExternalLocalOriginErrors": True, "consecutiveLocalOriginFailures": 3}


def _example_objects(conf, region: str = "hk") -> list[dict]:
    stages = [name for name, stage in conf.stages.items() if stage.region == region]
    rendered = render.render(REPO / "value.py", stages=stages, conf=conf, image_tag="golden")
    return gateway_objects(conf, region) + [doc for docs in rendered.stages.values() for doc in docs]


def _check_golden(name: str, data) -> None:
    path = GOLDEN / name
    text = json.dumps(data, indent=1, sort_keys=True) + "\n"
    data = json.loads(text)  # tuples as lists, as the file holds them
    if os.environ.get("UPDATE_GOLDEN"):
        path.parent.mkdir(exist_ok=True)
        path.write_text(text)
    assert path.is_file(), f"{path} is missing: run UPDATE_GOLDEN=1 pytest {__file__}"
    assert json.loads(path.read_text()) == data, f"{path} differs; if the change is meant, UPDATE_GOLDEN=1"


def test_step_one_the_example_to_the_ir_matches_its_golden_file():
    conf = load_conf()
    config = istio.translate(_example_objects(conf), "istio-ingress/podserve")
    _check_golden("hk-ir.json", dataclasses.asdict(config))
    production = config.cluster("outbound|8080|stable|text-direction.podserve-like.svc.cluster.local")
    assert production.limits.max_requests == 96  # 2 pods x 64 queued x 3/4 (mesh_limits.MESH_SHARE)
    assert production.subset_labels == (("track", "stable"),)
    canary = config.cluster("outbound|8080|canary|text-direction.podserve-like.svc.cluster.local")
    assert canary.limits.max_requests == 48 and canary.outlier == production.outlier  # its own pool, the rest shared
    assert production.outlier.consecutive_5xx == 5 and production.slow_start_s == 30
    assert production.idle_timeout_s < conf.platform.http.idle_timeout_seconds  # the mesh closes an idle line first
    routes = {route.match_value: route for vh in config.virtual_hosts for route in vh.routes}
    exact = next(r for vh in config.virtual_hosts for r in vh.routes if r.name == "text-direction-exact"
                 and r.match_value == "/api/like/text-direction")
    assert (exact.match_kind, exact.rewrite_uri, exact.timeout_s) == ("exact", "/api/text-direction", 11)
    assert exact.cluster == production.name and exact.weighted == ()  # stable 100: istiod drops a weight of 0
    header = next(r for vh in config.virtual_hosts for r in vh.routes if r.name == "text-direction-canary-exact")
    assert header.headers == (("x-podserve-track", "canary"),) and header.cluster == canary.name
    assert routes["/api/like/text-direction/"].rewrite_uri == "/api/text-direction/"
    assert exact.retries.retry_on == ("connect-failure", "refused-stream") and exact.retries.attempts == 2


def test_step_two_the_ir_to_envoy_matches_its_golden_file_and_envoy_accepts_it(tmp_path):
    conf = load_conf()
    config = istio.translate(_example_objects(conf), "istio-ingress/podserve")
    bootstrap = envoy.bootstrap(config, port=8080, admin_port=0, eds_folder=tmp_path / "eds", local_any_host=True)
    _check_golden("hk-envoy.json", json.loads(json.dumps(bootstrap).replace(str(tmp_path), "/work")))
    (cluster,) = [c for c in bootstrap["static_resources"]["clusters"]
                  if c["name"] == "outbound|8080|stable|text-direction.podserve-like.svc.cluster.local"]
    assert cluster["outlier_detection"]["enforcing_consecutive_5xx"] == 100
    assert cluster["outlier_detection"]["enforcing_success_rate"] == 0
    assert cluster["circuit_breakers"]["thresholds"][0]["max_requests"] == 96
    assert cluster["common_lb_config"]["healthy_panic_threshold"] == {"value": 0.0}
    path = tmp_path / "envoy.json"
    path.write_text(json.dumps(bootstrap))
    envoy.write_empty_endpoints(config, tmp_path / "eds")
    validate(path)


@pytest.fixture(scope="module")
def varied_conf(tmp_path_factory):
    """conf/ with every outlier-detection field Istio exposes set, and every region."""
    folder = tmp_path_factory.mktemp("conf") / "conf"
    shutil.copytree(REPO / "conf", folder)
    platform = yaml.safe_load((folder / "platform.yaml").read_text())
    platform["mesh"]["outlier_detection"] = EVERY_OUTLIER_FIELD
    (folder / "platform.yaml").write_text(yaml.safe_dump(platform))
    return load_conf(folder)


@pytest.mark.parametrize("region", REGIONS)
def test_every_rendered_option_translates_with_no_unknown_field(tmp_path, varied_conf, region):
    objects = gateway_objects(varied_conf, region)
    stages = [name for name, stage in varied_conf.stages.items() if stage.region == region]  # a region's cluster
    for name, changes in VARIED.items():
        values = write_values(tmp_path, **dict(changes, service_name=name.replace("_", "-")))
        for docs in render.render(values, stages=stages, conf=varied_conf).stages.values():
            objects.extend(docs)
    mesh_objects = [d for d in objects if d["apiVersion"].startswith("networking.istio.io/")]
    for doc in mesh_objects:
        istio.check_known(doc)  # every field at every level is one the translation reads
    config = istio.translate(objects, varied_conf.stages[region].gateway)
    served = {route.owner for vh in config.virtual_hosts for route in vh.routes}
    assert len(served) == len(VARIED) * len(stages)
    outlier = config.clusters[0].outlier
    assert (outlier.consecutive_local_origin_failure, outlier.split_local_origin, outlier.max_ejection_percent) == \
        (3, True, 34)
    path = tmp_path / "envoy.json"
    path.write_text(json.dumps(envoy.bootstrap(config, port=8080, admin_port=0, eds_folder=tmp_path)))
    envoy.write_empty_endpoints(config, tmp_path)
    validate(path)


@pytest.mark.parametrize("template, field, text", [
    ("virtualservice.yaml.j2", "http[0].corsPolicy", "      timeout:", ),
    ("destinationrule.yaml.j2", "trafficPolicy.tls", "    outlierDetection:"),
])
def test_a_rendered_field_the_translation_does_not_know_is_refused(tmp_path, template, field, text):
    templates = tmp_path / "templates"
    shutil.copytree(REPO / "templates", templates)
    source = (templates / template).read_text()
    injected = {"virtualservice.yaml.j2": "      corsPolicy: {allowOrigins: [{exact: '*'}]}\n",
                "destinationrule.yaml.j2": "    tls: {mode: ISTIO_MUTUAL}\n"}[template]
    assert text in source
    (templates / template).write_text(source.replace(text, injected + text, 1))
    conf = load_conf()
    rendered = render.render(REPO / "value.py", stages=["hk"], conf=conf, templates=templates)
    objects = gateway_objects(conf, "hk") + rendered.stages["hk"]
    with pytest.raises(istio.UnknownFieldError) as refused:
        istio.translate(objects, "istio-ingress/podserve")
    print(f"\nrefused: {refused.value}")
    assert f"field spec.{field} is not translated" in str(refused.value)


def test_weights_a_mirror_and_a_header_route_reach_envoy_as_istiod_writes_them(tmp_path):
    """A canary at 10% (the deploy tool's weights on the rendered route) and hk's mirror to grey at 20%: Envoy's
    weighted_clusters, request_mirror_policies in millionths, and the header match; Envoy accepts them."""
    conf = load_conf()
    values = write_values(tmp_path, service_name="shadowed", grey_mirror_percent=20, canary_steps=[10])
    stages = ["grey", "hk"]
    objects = gateway_objects(conf, "hk") + [d for docs in render.render(values, stages=stages, conf=conf)
                                             .stages.values() for d in docs]
    vs = next(d for d in objects if d["kind"] == "VirtualService" and d["metadata"]["namespace"] == "podserve-like")
    for http in vs["spec"]["http"][2:]:
        http["route"][0]["weight"], http["route"][1]["weight"] = 90, 10
    config = istio.translate(objects, "istio-ingress/podserve")
    host = "shadowed.podserve-like.svc.cluster.local"
    route = next(r for vh in config.virtual_hosts for r in vh.routes
                 if r.name == "shadowed-subpaths" and r.owner == "podserve-like/shadowed")
    assert route.weighted == ((f"outbound|8080|stable|{host}", 90), (f"outbound|8080|canary|{host}", 10))
    assert route.mirror.cluster == "outbound|8080||shadowed.podserve-like-grey.svc.cluster.local"
    assert route.mirror.percent == 20.0
    bootstrap = envoy.bootstrap(config, port=8080, admin_port=0, eds_folder=tmp_path)
    routes = {r["name"]: r for vh in bootstrap["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
              ["typed_config"]["route_config"]["virtual_hosts"] for r in vh["routes"]
              if r["match"].get("path", r["match"].get("prefix", "")).startswith("/api/")}  # production's, not grey's
    action = routes["shadowed-subpaths"]["route"]
    assert action["weighted_clusters"]["clusters"] == [{"name": f"outbound|8080|stable|{host}", "weight": 90},
                                                       {"name": f"outbound|8080|canary|{host}", "weight": 10}]
    assert action["request_mirror_policies"] == [{"cluster": route.mirror.cluster, "runtime_fraction": {
        "default_value": {"numerator": 200_000, "denominator": "MILLION"}}}]
    assert routes["shadowed-canary-subpaths"]["match"]["headers"] == [
        {"name": "x-podserve-track", "string_match": {"exact": "canary"}}]
    path = tmp_path / "envoy.json"
    path.write_text(json.dumps(bootstrap))
    envoy.write_empty_endpoints(config, tmp_path)
    validate(path)


def test_an_unknown_gateway_field_and_an_unknown_kind_are_refused():
    conf = load_conf()
    objects = _example_objects(conf)
    gateway = next(d for d in objects if d["kind"] == "Gateway")
    gateway["spec"]["servers"][0]["port"]["targetPort"] = 8443
    with pytest.raises(istio.UnknownFieldError, match=r"spec\.servers\[0\]\.port\.targetPort"):
        istio.translate(objects, "istio-ingress/podserve")
    with pytest.raises(istio.UnknownFieldError, match="kind 'ServiceEntry' is not translated"):
        istio.check_known({"apiVersion": "networking.istio.io/v1", "kind": "ServiceEntry", "metadata": {"name": "x"}})
