"""The platform chart's Gateway as istiod serves it to a stock Envoy (issue 65, It must show 1 and 3).

Port 80 is applied as the chart renders it (`tls.httpsRedirect: true`): istiod turns that into `require_tls: ALL` on
every virtual host of port 80's route table, and Envoy answers every plaintext request 301 to
https://<host><path> itself; no pod sees it. That is production's behaviour and the platform keeps it (docs/mesh.md:
callers use https://, as smoke.py does; a plaintext caller is told where to go, and a payload is never served over
plaintext from outside). The HTTPS server is served with its TLS left out (istiod.plaintext_gateway): its routes
answer. And a stock Envoy fed by istiod refuses nothing and runs no Istio extension.
"""

from __future__ import annotations

import requests

from mesh_setup import HOST
from traffic import body, requests_per_pod

PATH = "/api/like/test"


def test_plaintext_port_80_answers_301_to_https_from_the_gateway_itself_and_no_pod_sees_it(mesh):
    http_servers = [s for s in mesh.gateway.object["spec"]["servers"] if s["port"]["number"] == 80]
    assert [s["tls"] for s in http_servers] == [{"httpsRedirect": True}]  # the chart's, as rendered
    port_80 = [route_config for route_config in _route_configs(mesh) if route_config["name"] == "http.80"]
    assert port_80, [c["name"] for c in _route_configs(mesh)]
    hosts = [vh for vh in port_80[0]["virtual_hosts"] if HOST in vh["domains"]]
    assert hosts and all(vh.get("require_tls") == "ALL" for vh in hosts)  # istiod's translation of httpsRedirect
    before = requests_per_pod(mesh, "hk")
    redirected = requests.post(f"{mesh.plaintext_url}{PATH}?postid=7", json=body(3.0), headers={"Host": HOST},
                               allow_redirects=False, timeout=30)
    served = requests.post(f"{mesh.url}{PATH}", json=body(3.0), headers={"Host": HOST}, timeout=30)
    after = requests_per_pod(mesh, "hk")
    print(f"\nplaintext POST {PATH} to port 80: {redirected.status_code}, location "
          f"{redirected.headers.get('location')!r}, body {redirected.text!r}; the HTTPS server's routes (TLS left "
          f"out): {served.status_code} {served.json()}")
    assert redirected.status_code == 301
    assert redirected.headers["location"] == f"https://{HOST}{PATH}?postid=7"
    assert redirected.text == ""
    assert served.status_code == 200 and served.json()["results"] == [7.0, 1.0, 1.0, 1.0]
    assert sum(after.values()) - sum(before.values()) == 1  # the served one; the redirected one reached no pod


def test_a_stock_envoy_fed_by_istiod_refuses_no_update_and_runs_no_istio_extension(mesh, istiod):
    listeners = {c["active_state"]["listener"]["name"]
                 for c in mesh.envoy.config_dump("dynamic_listeners").get("configs", []) if "active_state" in c}
    print(f"\nEnvoy's listeners from istiod: {sorted(listeners)}; its rejected updates "
          f"{mesh.envoy.rejected_updates()}; istiod's pilot_total_xds_rejects {istiod.rejects()}; Istio type URLs "
          f"in its config dump: {mesh.envoy.istio_type_urls()}")
    assert {"0.0.0.0_80", "0.0.0.0_443"} <= listeners
    assert mesh.gateway_problems() == []
    assert istiod.rejects() == 0


def _route_configs(mesh) -> list[dict]:
    return [c["route_config"] for c in mesh.envoy.config_dump("dynamic_route_configs").get("configs", [])]


def test_istio_s_crds_in_the_cluster_are_the_istio_module_s_and_istiod_is_built_from_its_pinned_version(
        control_plane, istiod):
    """The control plane's Istio CRDs are those of the module istiod is built from (cluster/istiod/go.mod), not a copy
    kept beside the repository (the shared schemas' Gateway and DestinationRule differ from this module's)."""
    import json

    import yaml
    from kubernetes import client

    from podserve.testbed.mesh import build

    shipped = {doc["metadata"]["name"]: doc for doc in yaml.load_all((build.binaries_dir() / build.CRD_FILE).read_text(),
                                                                       Loader=yaml.CSafeLoader) if doc}
    extensions = client.ApiextensionsV1Api(control_plane.api_client())
    for name in ("gateways.networking.istio.io", "virtualservices.networking.istio.io",
                 "destinationrules.networking.istio.io"):
        live = json.loads(extensions.read_custom_resource_definition(name, _preload_content=False).data)
        assert [v["schema"] for v in live["spec"]["versions"]] == \
            [v["schema"] for v in shipped[name]["spec"]["versions"]], name
    assert build.binaries_dir().name.startswith(f"istio-{build.istio_version()}_")
    assert istiod.version == (build.binaries_dir() / build.VERSION_FILE).read_text().strip()
