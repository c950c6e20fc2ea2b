"""Step one: rendered Istio objects (Gateway, VirtualService, DestinationRule) to the IR, as istiod would.

Only the fields we render are translated, the way istiod translates them (see
../shared/notes/istio-to-envoy.md and istio/istio pilot/pkg/networking/core): a field this
module does not know is an `UnknownFieldError` naming it, never silently dropped. Each
object is first checked against `SCHEMAS` (every key, every level), then read.
"""

from __future__ import annotations

import re

from podserve.testbed.mesh import ir

API_VERSION = "networking.istio.io/v1"
#: Istio's default retry policy pieces that every route gets (pilot/pkg/networking/core/route/retry).
DEFAULT_RETRY_HOST_PREDICATE = "envoy.retry_host_predicates.previous_hosts"

ANY = object()  # a free-form mapping (labels, selectors): not translated, not checked inside
NUMBER = (int, float)


class MapOf:
    """A mapping whose keys are free (header names) and whose values each follow `schema`."""

    def __init__(self, schema):
        self.schema = schema


_DESTINATION = {"host": str, "port": {"number": int}, "subset": str}
_TRAFFIC_POLICY = {
    "loadBalancer": {"simple": str, "warmup": {"duration": str}},
    "outlierDetection": {"consecutive5xxErrors": int, "consecutiveGatewayErrors": int, "interval": str,
                         "baseEjectionTime": str, "maxEjectionPercent": int, "minHealthPercent": int,
                         "splitExternalLocalOriginErrors": bool, "consecutiveLocalOriginFailures": int},
    "connectionPool": {"http": {"http2MaxRequests": int, "http1MaxPendingRequests": int, "maxRetries": int,
                                "idleTimeout": str},
                       "tcp": {"maxConnections": int, "connectTimeout": str}},
}
_METADATA = {"name": str, "namespace": str, "labels": ANY, "annotations": ANY}
SCHEMAS = {
    "Gateway": {
        "selector": ANY,
        "servers": [{"port": {"number": int, "name": str, "protocol": str}, "hosts": [str],
                     "tls": {"mode": str, "credentialName": str, "httpsRedirect": bool}}],
    },
    "VirtualService": {
        "hosts": [str],
        "gateways": [str],
        "http": [{
            "name": str,
            "match": [{"uri": {"exact": str, "prefix": str}, "headers": MapOf({"exact": str})}],
            "rewrite": {"uri": str},
            "route": [{"destination": _DESTINATION, "weight": int}],
            "mirror": _DESTINATION,
            "mirrorPercentage": {"value": NUMBER},
            "timeout": str,
            "retries": {"attempts": int, "retryOn": str, "perTryTimeout": str},
        }],
    },
    "DestinationRule": {
        "host": str,
        "trafficPolicy": _TRAFFIC_POLICY,
        "subsets": [{"name": str, "labels": ANY, "trafficPolicy": _TRAFFIC_POLICY}],
    },
}
#: The load-balancing choices translated (LEAST_REQUEST is what we render).
LB_POLICIES = ("LEAST_REQUEST",)


class UnknownFieldError(ValueError):
    """A rendered field the translation does not know: the message names the object and the field's path."""


def check_known(doc: dict) -> None:
    """Raise UnknownFieldError for the first field of `doc` (a whole object) that is not in SCHEMAS."""
    kind = doc.get("kind")
    where = f"{kind} {doc.get('metadata', {}).get('namespace', '')}/{doc.get('metadata', {}).get('name', '')}"
    if kind not in SCHEMAS:
        raise UnknownFieldError(f"{where}: kind {kind!r} is not translated; known kinds: {', '.join(SCHEMAS)}")
    if doc.get("apiVersion") != API_VERSION:
        raise UnknownFieldError(f"{where}: apiVersion {doc.get('apiVersion')!r} is not translated; use {API_VERSION}")
    _walk({"apiVersion": str, "kind": str, "metadata": _METADATA, "spec": SCHEMAS[kind]}, doc, "", where)


def _walk(schema, value, path: str, where: str) -> None:
    if schema is ANY:
        return
    if isinstance(schema, MapOf):
        if not isinstance(value, dict):
            raise UnknownFieldError(f"{where}: {path} is {type(value).__name__}, expected a mapping")
        for key, item in value.items():
            _walk(schema.schema, item, f"{path}.{key}", where)
        return
    if isinstance(schema, dict):
        if not isinstance(value, dict):
            raise UnknownFieldError(f"{where}: {path or 'the object'} is {type(value).__name__}, expected a mapping")
        for key, item in value.items():
            if key not in schema:
                raise UnknownFieldError(f"{where}: field {path + '.' if path else ''}{key} is not translated to Envoy "
                                        f"(known here: {', '.join(schema)}); teach podserve.testbed.mesh.istio "
                                        "how istiod translates it, or stop rendering it")
            _walk(schema[key], item, f"{path}.{key}" if path else key, where)
        return
    if isinstance(schema, list):
        if not isinstance(value, list):
            raise UnknownFieldError(f"{where}: {path} is {type(value).__name__}, expected a list")
        for i, item in enumerate(value):
            _walk(schema[0], item, f"{path}[{i}]", where)
        return
    if not isinstance(value, schema) or (schema in (int, NUMBER) and isinstance(value, bool)):
        wanted = "a number" if schema is NUMBER else schema.__name__
        raise UnknownFieldError(f"{where}: {path} is {value!r}, expected {wanted}")


_DURATION = re.compile(r"^(\d+(?:\.\d+)?)(ms|s|m|h)$")


def seconds(text: str, where: str) -> float:
    """Return an Istio duration ("11s", "500ms", "1.5s", "2m") in seconds."""
    match = _DURATION.match(text)
    if not match:
        raise UnknownFieldError(f"{where}: {text!r} is not a duration this translation reads (e.g. 11s, 500ms)")
    return float(match.group(1)) * {"ms": 0.001, "s": 1, "m": 60, "h": 3600}[match.group(2)]


def translate(docs: list[dict], gateway: str) -> ir.GatewayConfig:
    """Return what the Envoy of `gateway` (namespace/name) serves, from every rendered object in `docs`.

    Objects of other kinds (Deployments, Services, ...) are skipped: they are not the
    gateway's config. VirtualServices bound to other gateways are skipped, as istiod does.
    """
    mesh_docs = [d for d in docs if d.get("apiVersion", "").startswith("networking.istio.io/")]
    for doc in mesh_docs:
        check_known(doc)
    gateways = [d for d in mesh_docs if d["kind"] == "Gateway" and _ref(d) == gateway]
    if not gateways:
        raise UnknownFieldError(f"no Gateway {gateway} among the objects; render the platform chart's gateway.yaml")
    served = {host for gw in gateways for server in gw["spec"]["servers"] for host in server["hosts"]}
    rules = {d["spec"]["host"]: d for d in mesh_docs if d["kind"] == "DestinationRule"}
    hosts: dict[str, list[ir.Route]] = {}
    destinations: dict[str, tuple[str, int, str]] = {}
    for vs in (d for d in mesh_docs if d["kind"] == "VirtualService"):
        spec = vs["spec"]
        if gateway not in spec.get("gateways", []):
            continue
        routes = _routes(vs, destinations)
        for host in spec["hosts"]:
            if host not in served:
                raise UnknownFieldError(f"VirtualService {_ref(vs)}: host {host} is not served by Gateway {gateway} "
                                        f"(it serves {', '.join(sorted(served))})")
            hosts.setdefault(host, []).extend(routes)
    virtual_hosts = tuple(ir.VirtualHost(f"{host}:80", (host, f"{host}:*"), tuple(routes))
                          for host, routes in sorted(hosts.items()))
    clusters = tuple(_cluster(name, host, port, rules.get(host), subset)
                     for name, (host, port, subset) in sorted(destinations.items()))
    return ir.GatewayConfig(gateway, virtual_hosts, clusters)


def _ref(doc: dict) -> str:
    return f"{doc['metadata'].get('namespace', '')}/{doc['metadata']['name']}"


def _routes(vs: dict, destinations: dict[str, tuple[str, int, str]]) -> list[ir.Route]:
    """Each http rule's matches as routes. Destinations by weight as istiod weighs them (route.go): a destination of
    weight 0 is left out while another has weight, and a rule left with one destination goes to it alone."""
    where = f"VirtualService {_ref(vs)}"
    routes = []
    for i, http in enumerate(vs["spec"].get("http", [])):
        weighted = [(_destination(r["destination"], destinations), r.get("weight", 0)) for r in http["route"]]
        if len(weighted) > 1:
            if sum(w for _, w in weighted) <= 0:
                _refuse(where, f"http[{i}].route: weights adding up to more than 0")
            weighted = [(cluster, w) for cluster, w in weighted if w > 0]
        cluster = weighted[0][0] if len(weighted) == 1 else ""
        mirror = None
        if "mirror" in http:
            percent = (http.get("mirrorPercentage") or {}).get("value", 100.0)
            mirror = ir.Mirror(_destination(http["mirror"], destinations), float(percent))
        retries = _retries(http.get("retries"), f"{where}: http[{i}].retries")
        timeout = seconds(http["timeout"], f"{where}: http[{i}].timeout") if "timeout" in http else 0.0
        for match in http.get("match") or [{"uri": {"prefix": "/"}}]:
            ((kind, value),) = match["uri"].items()
            headers = tuple(sorted((name, matcher["exact"]) for name, matcher in (match.get("headers") or {}).items()))
            routes.append(ir.Route(http.get("name", f"{_ref(vs)}-{i}"), kind, value, cluster, timeout,
                                   (http.get("rewrite") or {}).get("uri"), retries, _ref(vs), headers,
                                   tuple(weighted) if not cluster else (), mirror))
    return routes


def _destination(destination: dict, destinations: dict[str, tuple[str, int, str]]) -> str:
    """Return the cluster of one destination (host, port, subset) and note it among the gateway's clusters."""
    host, port, subset = destination["host"], destination["port"]["number"], destination.get("subset", "")
    cluster = ir.cluster_name(host, port, subset)
    destinations[cluster] = (host, port, subset)
    return cluster


def _refuse(where: str, what: str):
    raise UnknownFieldError(f"{where}: only {what} is translated")


def _retries(block: dict | None, where: str) -> ir.Retries:
    if block is None:  # Istio's default policy (503 is not retried since 1.24)
        return ir.Retries(2, ("connect-failure", "refused-stream", "unavailable", "cancelled",
                              "retriable-status-codes"))
    policies = [p.strip() for p in block.get("retryOn", "").split(",") if p.strip()]
    codes = tuple(int(p) for p in policies if p.isdigit())
    retry_on = tuple(p for p in policies if not p.isdigit()) + (("retriable-status-codes",) if codes else ())
    per_try = seconds(block["perTryTimeout"], where + ".perTryTimeout") if "perTryTimeout" in block else None
    return ir.Retries(max(block.get("attempts", 0), 0), retry_on, codes, per_try)


def _cluster(name: str, host: str, port: int, rule: dict | None, subset: str = "") -> ir.Cluster:
    """One cluster: the Service's (no subset) or a DestinationRule subset's, whose own trafficPolicy replaces the
    rule's piece by piece (loadBalancer, outlierDetection, connectionPool), as Istio's MergeTrafficPolicy does."""
    if rule is None:  # no DestinationRule: Istio's defaults (least request, no limits, no ejection)
        if subset:
            raise UnknownFieldError(f"cluster {name}: subset {subset!r} of {host}, which has no DestinationRule")
        return ir.Cluster(name, host, port)
    where = f"DestinationRule {_ref(rule)}"
    policy = dict(rule["spec"].get("trafficPolicy", {}))
    labels: tuple[tuple[str, str], ...] = ()
    if subset:
        found = next((s for s in rule["spec"].get("subsets") or [] if s["name"] == subset), None)
        if found is None:
            raise UnknownFieldError(f"{where}: no subset {subset!r}, which a route names")
        policy.update(found.get("trafficPolicy") or {})
        labels = tuple(sorted((found.get("labels") or {}).items()))
    balancer = policy.get("loadBalancer", {})
    if balancer.get("simple", "LEAST_REQUEST") not in LB_POLICIES:
        raise UnknownFieldError(f"{where}: loadBalancer.simple {balancer['simple']!r} is not translated "
                                f"(known: {', '.join(LB_POLICIES)})")
    warmup = balancer.get("warmup", {}).get("duration")
    pool = policy.get("connectionPool", {})
    http, tcp = pool.get("http", {}), pool.get("tcp", {})
    positive = lambda value: value if value and value > 0 else None  # noqa: E731 - Istio: 0 means unset
    limits = ir.CircuitBreakers(max_connections=positive(tcp.get("maxConnections")),
                                max_pending_requests=positive(http.get("http1MaxPendingRequests")),
                                max_requests=positive(http.get("http2MaxRequests")),
                                max_retries=positive(http.get("maxRetries")))
    connect = seconds(tcp["connectTimeout"], where + ": tcp.connectTimeout") if "connectTimeout" in tcp else 10.0
    idle = seconds(http["idleTimeout"], where + ": http.idleTimeout") if "idleTimeout" in http else None
    return ir.Cluster(name, host, port, seconds(warmup, where + ": warmup.duration") if warmup else None,
                      _outlier(policy.get("outlierDetection"), where), limits, connect, idle, subset, labels)


def _outlier(block: dict | None, where: str) -> ir.OutlierDetection | None:
    if block is None:
        return None
    def duration(key: str) -> float | None:
        return seconds(block[key], f"{where}: outlierDetection.{key}") if key in block else None

    return ir.OutlierDetection(
        interval_s=duration("interval"), base_ejection_s=duration("baseEjectionTime"),
        max_ejection_percent=block.get("maxEjectionPercent") or None,
        consecutive_5xx=block.get("consecutive5xxErrors"),
        consecutive_gateway_failure=block.get("consecutiveGatewayErrors"),
        split_local_origin=block.get("splitExternalLocalOriginErrors", False),
        consecutive_local_origin_failure=block.get("consecutiveLocalOriginFailures") or None,
        min_health_percent=block.get("minHealthPercent", 0))
