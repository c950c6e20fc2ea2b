"""Step two: the IR to Envoy config (a listener, routes and clusters, endpoints from files).

The output is what istiod would push to the region's ingress gateway over xDS, written either as a
static bootstrap (`bootstrap`: one HTTP listener, one route table, the clusters) or as Envoy's
file-based xDS (`dynamic_bootstrap` and `write_xds`: the same listener reading its routes (RDS) and
the clusters (CDS) from files the harness rewrites, so routes and clusters change while Envoy runs,
as istiod's pushes change them); either way per cluster an EDS subscription to a file (`eds_path`)
that the harness rewrites atomically. TLS is not played: the gateway's
HTTPS server's routes are served over plain HTTP on loopback (simulated, said here and in
the README). `local_any_host` adds a catch-all virtual host with the same routes, so that
`curl localhost:8080/...` works without setting Host.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from podserve.testbed.mesh import ir

MAX = 2**32 - 1  # Istio starts every circuit-breaker threshold here
HCM = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
ROUTER = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
CLA = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"
ROUTE_CONFIGURATION = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration"
CLUSTER = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
#: The route table's name (istiod's for the gateway's port 80 server).
ROUTE_CONFIG_NAME = "http.80"
PREVIOUS_HOSTS = "type.googleapis.com/envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate"


def _duration(seconds: float) -> str:
    return f"{seconds:.3f}s"


def eds_path(folder: Path, cluster: str) -> Path:
    """Return the file a cluster's endpoints are read from."""
    return Path(folder) / ("eds-" + cluster.replace("|", "_") + ".json")


def bootstrap(config: ir.GatewayConfig, *, port: int, admin_port: int, eds_folder: Path,
              local_any_host: bool = False) -> dict:
    """Return the Envoy bootstrap for `config`, listening on 127.0.0.1:port."""
    route_config = {"name": ROUTE_CONFIG_NAME, "virtual_hosts": _virtual_hosts(config, local_any_host)}
    return {
        "node": _node(config.name),
        "admin": {"address": _address(admin_port)},
        "static_resources": {
            "listeners": [_listener(port, {"route_config": route_config})],
            "clusters": [_cluster(c, eds_folder) for c in config.clusters],
        },
    }


def dynamic_bootstrap(gateway: str, *, port: int, admin_port: int, xds_folder: Path) -> dict:
    """Return an Envoy bootstrap whose listener on 127.0.0.1:port reads its routes and clusters from the files
    write_xds keeps in `xds_folder` (Envoy's file-based xDS: it follows each file's atomic replacement)."""
    return {
        "node": _node(gateway),
        "admin": {"address": _address(admin_port)},
        "dynamic_resources": {"cds_config": _file_source(xds_path(xds_folder, "cds"))},
        "static_resources": {"listeners": [_listener(port, {"rds": {
            "route_config_name": ROUTE_CONFIG_NAME, "config_source": _file_source(xds_path(xds_folder, "rds"))}})]},
    }


def xds_path(folder: Path, kind: str) -> Path:
    """Return the file a dynamic bootstrap reads its routes ("rds") or clusters ("cds") from."""
    return Path(folder) / f"{kind}.json"


def write_xds(config: ir.GatewayConfig, xds_folder: Path, eds_folder: Path, version: int,
              local_any_host: bool = False) -> None:
    """Write `config` where a dynamic bootstrap reads it: each new cluster's empty endpoint file first, then the
    clusters, then the routes, so that no route ever names a cluster Envoy does not have."""
    Path(xds_folder).mkdir(parents=True, exist_ok=True)
    write_empty_endpoints(config, eds_folder)
    write_atomically(xds_path(xds_folder, "cds"), {"version_info": str(version), "resources": [
        dict(_cluster(c, eds_folder), **{"@type": CLUSTER}) for c in config.clusters]})
    write_atomically(xds_path(xds_folder, "rds"), {"version_info": str(version), "resources": [
        {"@type": ROUTE_CONFIGURATION, "name": ROUTE_CONFIG_NAME,
         "virtual_hosts": _virtual_hosts(config, local_any_host)}]})


def _file_source(path: Path) -> dict:
    return {"path_config_source": {"path": str(path)}, "resource_api_version": "V3"}


def _node(gateway: str) -> dict:
    return {"id": f"gateway-{gateway.replace('/', '-')}", "cluster": "istio-ingressgateway"}


def _listener(port: int, routes: dict) -> dict:
    return {"name": "http", "address": _address(port),
            "filter_chains": [{"filters": [{"name": "envoy.filters.network.http_connection_manager",
                                            "typed_config": _connection_manager(routes)}]}]}


def _virtual_hosts(config: ir.GatewayConfig, local_any_host: bool) -> list[dict]:
    virtual_hosts = [_virtual_host(vh) for vh in config.virtual_hosts]
    if local_any_host:
        routes = [route for vh in config.virtual_hosts for route in vh.routes]
        virtual_hosts.append(_virtual_host(ir.VirtualHost("local-any-host", ("*",), tuple(routes))))
    return virtual_hosts


def _address(port: int) -> dict:
    return {"socket_address": {"address": "127.0.0.1", "port_value": port}}


def _connection_manager(routes: dict) -> dict:
    """The HTTP connection manager of the gateway's listener; `routes`: {"route_config": ...} or {"rds": ...}."""
    return {
        "@type": HCM,
        "stat_prefix": "gateway",
        "use_remote_address": True,  # an ingress gateway, as Istio configures it
        # Callers on loopback stand for callers inside the cluster's network: internal, so Envoy honours their
        # x-envoy-upstream-rq-timeout-ms and passes X-Envoy-Expected-Rq-Timeout-Ms on (Envoy 1.40 treats no
        # address as internal unless told; an Internet caller's x-envoy-* headers are stripped).
        "internal_address_config": {"cidr_ranges": [{"address_prefix": "127.0.0.0", "prefix_len": 8}]},
        "normalize_path": True,
        **routes,
        "http_filters": [{"name": "envoy.filters.http.router", "typed_config": {"@type": ROUTER}}],
    }


def _virtual_host(vh: ir.VirtualHost) -> dict:
    return {"name": vh.name, "domains": list(vh.domains), "routes": [_route(r) for r in vh.routes]}


def _route(route: ir.Route) -> dict:
    match = {"path": route.match_value} if route.match_kind == "exact" else {"prefix": route.match_value}
    match["case_sensitive"] = True
    if route.headers:
        match["headers"] = [{"name": name, "string_match": {"exact": value}} for name, value in route.headers]
    if route.weighted:
        action = {"weighted_clusters": {"clusters": [{"name": cluster, "weight": weight}
                                                     for cluster, weight in route.weighted]}}
    else:
        action = {"cluster": route.cluster}
    action["timeout"] = _duration(route.timeout_s)
    if route.rewrite_uri is not None:
        action["prefix_rewrite"] = route.rewrite_uri
    if route.retries is not None:
        action["retry_policy"] = _retry_policy(route.retries)
    if route.mirror is not None:  # Istio's translateRequestMirrorPolicy: a share in millionths
        action["request_mirror_policies"] = [{"cluster": route.mirror.cluster, "runtime_fraction": {
            "default_value": {"numerator": round(route.mirror.percent * 10_000), "denominator": "MILLION"}}}]
    return {"name": route.name, "match": match, "route": action}


def _retry_policy(retries: ir.Retries) -> dict:
    policy = {"num_retries": retries.attempts, "retry_on": ",".join(retries.retry_on),
              "retry_host_predicate": [{"name": "envoy.retry_host_predicates.previous_hosts",
                                        "typed_config": {"@type": PREVIOUS_HOSTS}}],
              "host_selection_retry_max_attempts": 5}
    if retries.retriable_status_codes:
        policy["retriable_status_codes"] = list(retries.retriable_status_codes)
    if retries.per_try_timeout_s is not None:
        policy["per_try_timeout"] = _duration(retries.per_try_timeout_s)
    return policy


def _cluster(cluster: ir.Cluster, eds_folder: Path) -> dict:
    limits = cluster.limits
    out = {
        "name": cluster.name,
        "type": "EDS",
        "eds_cluster_config": {"service_name": cluster.name, "eds_config": {
            "path_config_source": {"path": str(eds_path(eds_folder, cluster.name))},
            "resource_api_version": "V3"}},
        "connect_timeout": _duration(cluster.connect_timeout_s),
        "lb_policy": "LEAST_REQUEST",
        "circuit_breakers": {"thresholds": [{
            "max_connections": limits.max_connections or MAX,
            "max_pending_requests": limits.max_pending_requests or MAX,
            "max_requests": limits.max_requests or MAX,
            "max_retries": limits.max_retries or MAX,
            "track_remaining": True}]},
        "common_lb_config": {},
    }
    if cluster.idle_timeout_s is not None:  # where Istio's cluster builder puts connectionPool.http.idleTimeout
        out["typed_extension_protocol_options"] = {"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
            "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
            "common_http_protocol_options": {"idle_timeout": _duration(cluster.idle_timeout_s)},
            "explicit_http_config": {"http_protocol_options": {}}}}
    if cluster.slow_start_s is not None:
        out["least_request_lb_config"] = {"slow_start_config": {"slow_start_window": _duration(cluster.slow_start_s)}}
    if cluster.outlier is not None:
        out["outlier_detection"] = _outlier(cluster.outlier)
        out["common_lb_config"]["healthy_panic_threshold"] = {"value": float(cluster.outlier.min_health_percent)}
    return out


def _outlier(o: ir.OutlierDetection) -> dict:
    """Istio's applyOutlierDetection: success rate off; a consecutive count of 0 turns its ejection off."""
    out: dict = {"enforcing_success_rate": 0}
    if o.consecutive_5xx is not None:
        out["consecutive_5xx"] = o.consecutive_5xx
        out["enforcing_consecutive_5xx"] = 100 if o.consecutive_5xx > 0 else 0
    if o.consecutive_gateway_failure is not None:
        out["consecutive_gateway_failure"] = o.consecutive_gateway_failure
        out["enforcing_consecutive_gateway_failure"] = 100 if o.consecutive_gateway_failure > 0 else 0
    if o.interval_s is not None:
        out["interval"] = _duration(o.interval_s)
    if o.base_ejection_s is not None:
        out["base_ejection_time"] = _duration(o.base_ejection_s)
    if o.max_ejection_percent is not None:
        out["max_ejection_percent"] = o.max_ejection_percent
    if o.split_local_origin:
        out["split_external_local_origin_errors"] = True
        if o.consecutive_local_origin_failure:
            out["consecutive_local_origin_failure"] = o.consecutive_local_origin_failure
            out["enforcing_consecutive_local_origin_failure"] = 100
        out["enforcing_local_origin_success_rate"] = 0
    return out


def load_assignment(cluster: str, ports: list[int], version: int) -> dict:
    """Return the DiscoveryResponse of one cluster's endpoints: each ready pod on 127.0.0.1."""
    endpoints = [{"endpoint": {"address": _address(port)}} for port in sorted(ports)]
    return {"version_info": str(version), "resources": [
        {"@type": CLA, "cluster_name": cluster, "endpoints": [{"lb_endpoints": endpoints}] if endpoints else []}]}


def subset_hosts(cluster: ir.Cluster, hosts: list[tuple[str, int, dict]]) -> list[tuple[str, int, dict]]:
    """The (ip, port, pod labels) of a Service's ready endpoints that are `cluster`'s: its subset's pods, or all."""
    return [host for host in hosts if cluster.selects(host[2])]


def load_assignment_hosts(cluster: str, hosts: list[tuple[str, int, dict]], version: int) -> dict:
    """The DiscoveryResponse of one cluster's endpoints at pod addresses: (ip, port, pod labels) each, the labels
    as the endpoint's metadata (istiod sends the workload's labels the same way)."""
    endpoints = [{"endpoint": {"address": {"socket_address": {"address": ip, "port_value": port}}},
                  "metadata": {"filter_metadata": {"podserve.testbed": {"labels": labels}}}}
                 for ip, port, labels in sorted(hosts, key=lambda h: (h[0], h[1]))]
    return {"version_info": str(version), "resources": [
        {"@type": CLA, "cluster_name": cluster, "endpoints": [{"lb_endpoints": endpoints}] if endpoints else []}]}


def write_atomically(path: Path, document: dict) -> None:
    """Write `document` as JSON to a temporary file beside `path`, then rename it over `path` (Envoy watches moves)."""
    path = Path(path)
    with tempfile.NamedTemporaryFile("w", dir=path.parent, prefix=".tmp-", suffix=".json", delete=False) as tmp:
        json.dump(document, tmp)
    os.replace(tmp.name, path)


def write_empty_endpoints(config: ir.GatewayConfig, eds_folder: Path) -> None:
    """Write an endpoint file with no endpoints for each cluster that has none yet (Envoy needs them at start)."""
    Path(eds_folder).mkdir(parents=True, exist_ok=True)
    for cluster in config.clusters:
        path = eds_path(eds_folder, cluster.name)
        if not path.exists():
            write_atomically(path, load_assignment(cluster.name, [], 0))
