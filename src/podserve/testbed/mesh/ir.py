"""The small intermediate form between Istio's objects and Envoy's config: routes and clusters.

Step one (`istio.py`) fills it from rendered Gateways, VirtualServices and DestinationRules;
step two (`envoy.py`) turns it into an Envoy bootstrap. Each step is testable alone, and
nothing here knows about YAML or protobuf field names.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Retries:
    """A route's retry policy: how many retries, on what, and the status codes that count."""

    attempts: int
    retry_on: tuple[str, ...]
    retriable_status_codes: tuple[int, ...] = ()
    per_try_timeout_s: float | None = None


@dataclass(frozen=True)
class Mirror:
    """A copy of a route's requests sent to another cluster, whose answers are dropped: `percent` of them."""

    cluster: str
    percent: float = 100.0


@dataclass(frozen=True)
class Route:
    """One match of a virtual host: a path match (and exact header matches), its rewrite, the cluster (or clusters by
    weight), timeout, retries and mirror."""

    name: str
    match_kind: str  # exact | prefix
    match_value: str
    cluster: str  # the one cluster, or "" when `weighted` splits the route
    timeout_s: float  # 0: no timeout (Istio's default)
    rewrite_uri: str | None = None
    retries: Retries | None = None
    owner: str = ""  # namespace/name of the VirtualService it came from
    headers: tuple[tuple[str, str], ...] = ()  # (name, exact value): every one must match
    weighted: tuple[tuple[str, int], ...] = ()  # (cluster, weight), weights of more than one destination
    mirror: Mirror | None = None


@dataclass(frozen=True)
class VirtualHost:
    """The routes served for a set of hosts (Host/authority), in order."""

    name: str
    domains: tuple[str, ...]
    routes: tuple[Route, ...]


@dataclass(frozen=True)
class OutlierDetection:
    """Passive ejection of a failing host; None fields are left to Envoy's defaults."""

    interval_s: float | None = None
    base_ejection_s: float | None = None
    max_ejection_percent: int | None = None
    consecutive_5xx: int | None = None
    consecutive_gateway_failure: int | None = None
    split_local_origin: bool = False
    consecutive_local_origin_failure: int | None = None
    min_health_percent: int = 0


@dataclass(frozen=True)
class CircuitBreakers:
    """Per-cluster limits of one Envoy; None means Istio's default (no limit: 2^32 - 1)."""

    max_connections: int | None = None
    max_pending_requests: int | None = None
    max_requests: int | None = None
    max_retries: int | None = None


@dataclass(frozen=True)
class Cluster:
    """The endpoints of one Kubernetes Service port, balanced by least request."""

    name: str
    service_host: str
    port: int
    slow_start_s: float | None = None
    outlier: OutlierDetection | None = None
    limits: CircuitBreakers = field(default_factory=CircuitBreakers)
    connect_timeout_s: float = 10.0  # Istio's mesh-wide connectTimeout default
    idle_timeout_s: float | None = None  # an upstream connection idle this long is closed (None: Envoy's 1 h)
    subset: str = ""  # a DestinationRule subset: only the Service's endpoints whose pods carry `subset_labels`
    subset_labels: tuple[tuple[str, str], ...] = ()

    def selects(self, labels: dict) -> bool:
        """Whether a pod with `labels` is one of this cluster's endpoints (every pod of the Service without a subset)."""
        return all(labels.get(key) == value for key, value in self.subset_labels)


@dataclass(frozen=True)
class GatewayConfig:
    """What one ingress gateway Envoy serves: virtual hosts over clusters."""

    name: str
    virtual_hosts: tuple[VirtualHost, ...]
    clusters: tuple[Cluster, ...]

    def cluster(self, name: str) -> Cluster:
        return next(c for c in self.clusters if c.name == name)


def cluster_name(service_host: str, port: int, subset: str = "") -> str:
    """Return istiod's name for the outbound cluster of a Service port (and DestinationRule subset)."""
    return f"outbound|{port}|{subset}|{service_host}"
