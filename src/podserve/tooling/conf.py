"""The platform's conf/ folder (platform defaults, teams, regions, stages) read and checked.

`load_conf(folder)` returns a `Conf` or raises ConfError listing every problem, each naming
the file and the key. conf/ is the platform team's; a service never changes it.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import re
import typing
from dataclasses import dataclass
from pathlib import Path

import yaml

from podserve import kafka_access
from podserve.routes import RESERVED_SERVICE_NAMES
from podserve.settings import ServingSettings
from podserve.tooling import quantity
from podserve.tooling.valuefile import Problem, ValueFileError

# Whole strings are checked with fullmatch: match's `$` also matches before a trailing newline.
DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
EXTENDED_RESOURCE = re.compile(r"[a-z0-9]([-a-z0-9.]*[a-z0-9])?/[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?")
_VERSION = re.compile(r"1\.\d+")
_PLACEHOLDER = re.compile(r"{([^}]*)}")
#: The track of the production stages (hk, eu, na): the regions' own copies, behind the grey and A/B ones.
PRODUCTION_TRACK = "stable"
TRACKS = ("grey", "ab", PRODUCTION_TRACK)


class ConfError(ValueFileError):
    """conf/ cannot be used; carries every problem found, each naming the file and key."""


# --- the shape of each file ---------------------------------------------------------------

@dataclass(frozen=True)
class KubernetesVersions:
    oldest: str
    newest: str


@dataclass(frozen=True)
class Quota:
    """What all pods of one namespace may ask at once (its ResourceQuota): requested cpu and memory, GPUs, pods."""

    cpu: str
    memory: str
    gpus: int
    pods: int


@dataclass(frozen=True)
class Limits:
    gpus_per_pod: int
    max_replicas: int
    max_init_delay_second: int
    host_port_min: int
    host_port_max: int
    min_memory: str
    preview_quota: Quota
    max_grey_mirror_percent: int
    max_canary_steps: int


@dataclass(frozen=True)
class PodDefaults:
    run_as_user: int
    tmp_size: str
    ephemeral_storage: str
    prestop_sleep_seconds: int
    grace_margin_seconds: int
    probe_period_seconds: int
    probe_timeout_seconds: int
    readiness_failure_threshold: int
    liveness_period_seconds: int
    liveness_failure_threshold: int
    max_surge: int
    max_unavailable: int


@dataclass(frozen=True)
class Mesh:
    sidecar_cpu: str
    sidecar_memory: str
    sidecar_ephemeral_storage: str
    route_timeout_margin_ms: int
    retries: dict
    outlier_detection: dict
    slow_start: str
    propagation_seconds: float  # istiod's push to every gateway: the deploy tool's make-before-break waits
    istiod: dict  # environment the region's istiod must run with (the test bed's istiod runs with it too)


@dataclass(frozen=True)
class Monitoring:
    podmonitor_labels: dict
    scrape_interval: str
    scrape_sample_limit: int
    scrape_label_limit: int
    prometheus_address: str


@dataclass(frozen=True)
class Autoscaling:
    """How every stage's KEDA ScaledObject (and the HPA it makes) moves: conf/platform.yaml `autoscaling`."""

    scale_down_stabilization_seconds: int
    scale_down_percent_per_minute: int
    scale_up_pods_per_minute: int
    scale_up_percent_per_minute: int
    polling_seconds: int


@dataclass(frozen=True)
class PeerPods:
    """Pods of the platform's that a team's pods hear from: their namespace and labels."""
    namespace: str
    selector: dict


@dataclass(frozen=True)
class PeerService:
    """Pods of the platform's that a team's pods connect to: their namespace, labels and port."""
    namespace: str
    selector: dict
    port: int


@dataclass(frozen=True)
class Network:
    """What a team namespace's NetworkPolicies let through besides the region's gateway (the chart's
    networkpolicies.yaml; docs/tenancy.md): everything else in and out of a team's pods is refused."""
    dns: PeerService      # every pod resolves names: UDP and TCP to these pods' port
    istiod: PeerService   # every pod's Istio sidecar: its configuration and certificates from istiod's port
    prometheus: PeerPods  # scrapes every pod's http port


#: The pod's HTTP front-end limits (conf/platform.yaml's `http`): exactly the platform-owned serving settings.
HttpLimits = dataclasses.make_dataclass(
    "HttpLimits", [(f.name, {"int": int, "float": float}.get(f.type, f.type)) for f in dataclasses.fields(ServingSettings)
                   if f.name in ServingSettings.platform_names()], frozen=True)


@dataclass(frozen=True)
class Platform:
    kubernetes: KubernetesVersions
    limits: Limits
    pod: PodDefaults
    http: HttpLimits
    mesh: Mesh
    monitoring: Monitoring
    autoscaling: Autoscaling
    network: Network


@dataclass(frozen=True)
class Gpu:
    resource: str
    memory_gib: int
    memory_resource: typing.Optional[str]


@dataclass(frozen=True)
class Allocatable:
    cpu: str
    memory: str
    gpus: int


@dataclass(frozen=True)
class NodePool:
    node_selector: dict
    tolerations: list
    allocatable: Allocatable


@dataclass(frozen=True)
class NodePools:
    gpu: NodePool
    cpu: NodePool


@dataclass(frozen=True)
class Region:
    registry: str
    gateway_selector: dict
    gateway_tls_secret: str
    kafka_bootstrap: str
    kafka_security_protocol: str
    kafka_networks: list  # the brokers' addresses (CIDRs): where offline pods may connect, on kafka_bootstrap's ports
    kong_networks: list   # where Kong's probes and proxies come from (CIDRs): use_srv pods take them on the http port
    gpu: Gpu
    node_pools: NodePools
    name: str = ""


@dataclass(frozen=True)
class Stage:
    region: str
    namespace: str
    ingress_host: str
    gateway: str
    route: str
    track: str
    replicas: typing.Union[int, str]
    service_discovery: bool
    autoscale: bool
    name: str = ""

    @property
    def production(self) -> bool:
        """Whether this is a region's production stage (track `stable`)."""
        return self.track == PRODUCTION_TRACK

    def public_path(self, service: str, user: str) -> str:
        """Return this stage's public path of a service: its route with the names filled in."""
        return self.route.format(service=service, user=user)

    def namespace_for(self, team: str) -> str:
        """Return the namespace `team`'s services run in at this stage (docs/tenancy.md: one per team)."""
        return self.namespace.format(team=team)

    def route_prefix_for(self, team: str) -> str:
        """Return the path prefix every route of `team` at this stage lies under ("/api/like/", "/grey/like/")."""
        return self.route.split("{service}")[0].format(user=team)


@dataclass(frozen=True)
class HostPorts:
    """A team's own range of host ports (teams.yaml host_ports), inside the platform's."""

    min: int
    max: int


@dataclass(frozen=True)
class Team:
    """One team of teams.yaml: its host ports and its production namespaces' quota."""

    host_ports: HostPorts
    quota: Quota


@dataclass(frozen=True)
class Conf:
    """Everything in conf/, checked."""

    folder: Path
    platform: Platform
    teams: tuple[str, ...]
    regions: dict[str, Region]
    stages: dict[str, Stage]
    #: The GitLab group of each team's projects, with {team} (teams.yaml gitlab_group).
    gitlab_group: str = "{team}"
    #: Each team's host ports and production quota (teams.yaml), by team name.
    team_settings: dict = dataclasses.field(default_factory=dict)

    def region_of(self, stage: Stage) -> Region:
        return self.regions[stage.region]

    def team(self, name: str) -> Team:
        """Return a team's settings (teams.yaml)."""
        return self.team_settings[name]

    def project_group(self, team: str) -> str:
        """Return the GitLab group path holding `team`'s projects ("models/like")."""
        return self.gitlab_group.format(team=team)


# --- loading --------------------------------------------------------------------------------

def default_conf_dir() -> Path:
    """Return the repository's conf/ (beside src/)."""
    return Path(__file__).resolve().parents[3] / "conf"


def load_conf(folder: str | Path | None = None) -> Conf:
    """Read and check conf/; raise ConfError listing every problem."""
    folder = Path(folder) if folder is not None else default_conf_dir()
    problems: list[Problem] = []
    raw = {name: _read_yaml(folder / f"{name}.yaml", problems) for name in ("platform", "teams", "regions", "stages")}
    if problems:
        raise ConfError(folder, problems)
    platform = _build(Platform, raw["platform"], "platform.yaml:", problems)
    teams_doc = _build_mapping(raw["teams"], "teams.yaml", problems)
    team_settings = {name: _build(Team, body, f"teams.yaml: teams.{name}", problems)
                     for name, body in _build_mapping(teams_doc.get("teams") or {}, "teams.yaml: teams",
                                                      problems).items()}
    teams = tuple(team_settings)
    unknown = sorted(set(teams_doc) - {"teams", "gitlab_group"})
    problems.extend(Problem(f"teams.yaml: {key}", "is not a key of teams.yaml; use teams and gitlab_group")
                    for key in unknown)
    gitlab_group = teams_doc.get("gitlab_group", "{team}")
    if not isinstance(gitlab_group, str) or set(_PLACEHOLDER.findall(gitlab_group)) != {"team"} \
            or gitlab_group.startswith("/") or gitlab_group.endswith("/"):
        problems.append(Problem("teams.yaml: gitlab_group", f"{gitlab_group!r} must be a GitLab group path naming each "
                                "team's group with {team}, e.g. models/{team}"))
    regions = {name: dataclasses.replace(_build(Region, body, f"regions.yaml: {name}", problems), name=name)
               for name, body in _build_mapping(raw["regions"], "regions.yaml", problems).items()}
    stages = {name: dataclasses.replace(_build(Stage, body, f"stages.yaml: {name}", problems), name=name)
              for name, body in _build_mapping(raw["stages"], "stages.yaml", problems).items()}
    if problems:
        raise ConfError(folder, problems)
    conf = Conf(folder, platform, teams, regions, stages, gitlab_group, team_settings)
    problems.extend(_check(conf))
    if problems:
        raise ConfError(folder, problems)
    return conf


def _read_yaml(path: Path, problems: list[Problem]):
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        problems.append(Problem(path.name, f"is missing from {path.parent}; the platform team keeps it in conf/"))
    except yaml.YAMLError as exc:
        problems.append(Problem(path.name, f"is not valid YAML: {exc}"))
    return None


def _build_mapping(data, where: str, problems: list[Problem]) -> dict:
    if not isinstance(data, dict):
        problems.append(Problem(where, f"must be a mapping, not {type(data).__name__}"))
        return {}
    return data


def _build(cls, data, where: str, problems: list[Problem]):
    """Build dataclass `cls` from a mapping, reporting unknown, missing and mistyped keys."""
    data = _build_mapping(data, where, problems)
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.name != "name"}
    for key in sorted(set(data) - set(fields)):
        problems.append(Problem(_key(where, key), f"is not a known key; known keys: {', '.join(fields)}"))
    values = {}
    for name in fields:
        if name not in data:
            problems.append(Problem(_key(where, name), "is missing; add it"))
            values[name] = None
            continue
        values[name] = _convert(hints[name], data[name], _key(where, name), problems)
    return cls(**values)


def _key(where: str, name: str) -> str:
    return f"{where} {name}" if where.endswith(":") else f"{where}.{name}"


def _convert(kind, value, where: str, problems: list[Problem]):
    options = typing.get_args(kind) if typing.get_origin(kind) is typing.Union else (kind,)
    if value is None and type(None) in options:
        return None
    for option in options:
        if dataclasses.is_dataclass(option) and isinstance(value, dict):
            return _build(option, value, where, problems)
        base = typing.get_origin(option) or option
        if base is int and isinstance(value, bool):
            continue
        if base is float and isinstance(value, int) and not isinstance(value, bool):
            return float(value)
        if isinstance(base, type) and isinstance(value, base):
            return value
    wanted = " or ".join(getattr(o, "__name__", str(o)) for o in options)
    problems.append(Problem(where, f"is {value!r} ({type(value).__name__}); it must be {wanted}"))
    return value


# --- meaning --------------------------------------------------------------------------------

def _check(conf: Conf) -> list[Problem]:
    problems: list[Problem] = []
    say = lambda where, message: problems.append(Problem(where, message))  # noqa: E731
    versions = conf.platform.kubernetes
    for key in ("oldest", "newest"):
        if not _VERSION.fullmatch(getattr(versions, key)):
            say(f"platform.yaml: kubernetes.{key}", f"{getattr(versions, key)!r} must look like \"1.30\"")
    _check_quantities(conf, say)
    if not conf.teams:
        say("teams.yaml: teams", "lists no team; add at least one")
    for team in conf.teams:
        if not isinstance(team, str) or not DNS_LABEL.fullmatch(team) or team in RESERVED_SERVICE_NAMES:
            say("teams.yaml: teams", f"{team!r} must be a lowercase DNS label and not one of "
                f"{sorted(RESERVED_SERVICE_NAMES)}, because it is part of /api/<team>/<service>")
        elif team.endswith(kafka_access.GREY_USER_SUFFIX):
            say("teams.yaml: teams", f"{team!r} must not end in {kafka_access.GREY_USER_SUFFIX!r}: its Kafka principal "
                f"would be team {team[:-len(kafka_access.GREY_USER_SUFFIX)]!r}'s grey one; choose another name")
    _check_host_ports(conf, say)
    for name, region in conf.regions.items():
        for key in ("kafka_networks", "kong_networks"):
            for network in getattr(region, key):
                if not _is_network(network):
                    say(f"regions.yaml: {name}.{key}", f"{network!r} must be a network in CIDR form, e.g. 10.20.0.0/16 "
                        "(a NetworkPolicy's ipBlock)")
        if not broker_ports(region):
            say(f"regions.yaml: {name}.kafka_bootstrap", f"{region.kafka_bootstrap!r} must list host:port,... ")
        for key, resource in (("resource", region.gpu.resource), ("memory_resource", region.gpu.memory_resource)):
            if resource is not None and not EXTENDED_RESOURCE.fullmatch(resource):
                say(f"regions.yaml: {name}.gpu.{key}", f"{resource!r} must be an extended resource name "
                    "such as nvidia.com/gpu")
    namespaces: dict[tuple[str, str], str] = {}
    for name, stage in conf.stages.items():
        where = f"stages.yaml: {name}"
        if not DNS_LABEL.fullmatch(name):
            say(where, f"the stage name {name!r} must be a lowercase DNS label")
        if stage.region not in conf.regions:
            say(f"{where}.region", f"{stage.region!r} is not in regions.yaml ({', '.join(conf.regions)})")
        if set(_PLACEHOLDER.findall(stage.namespace)) != {"team"}:
            say(f"{where}.namespace", f"{stage.namespace!r} must name each team's own namespace with {{team}}, "
                "e.g. podserve-{team} (docs/tenancy.md)")
        for team in conf.teams if set(_PLACEHOLDER.findall(stage.namespace)) == {"team"} else ():
            namespace = stage.namespace_for(team)
            if not DNS_LABEL.fullmatch(namespace) or len(namespace) > 63:
                say(f"{where}.namespace", f"{namespace!r} (team {team}) must be a lowercase DNS label of at most 63")
            other = namespaces.setdefault((stage.region, namespace), f"{name} of team {team}")
            if other != f"{name} of team {team}":
                say(f"{where}.namespace", f"{namespace!r} is also stage {other}'s in region {stage.region}; "
                    "give each stage and team of a region its own namespace")
        if stage.gateway.count("/") != 1 or not all(map(DNS_LABEL.fullmatch, stage.gateway.split("/"))):
            say(f"{where}.gateway", f"{stage.gateway!r} must be <namespace>/<name> of an Istio Gateway")
        placeholders = set(_PLACEHOLDER.findall(stage.route))
        if not stage.route.startswith("/") or stage.route.endswith("/") or "service" not in placeholders \
                or placeholders - {"service", "user"}:
            say(f"{where}.route", f"{stage.route!r} must start with /, not end with /, and use {{service}} "
                "(and optionally {user}) only")
        if stage.track not in TRACKS:
            say(f"{where}.track", f"{stage.track!r} must be one of {', '.join(TRACKS)}")
        if isinstance(stage.replicas, int) and stage.replicas < 1:
            say(f"{where}.replicas", f"{stage.replicas} must be 1 or more, or the value.py field that gives it")
    return problems


def _is_network(text) -> bool:
    try:
        ipaddress.ip_network(text, strict=True)
    except (TypeError, ValueError):
        return False
    return isinstance(text, str) and "/" in text


def broker_ports(region: Region) -> list[int]:
    """The ports of the region's brokers (kafka_bootstrap's host:port list), the ones offline pods may reach."""
    ports = set()
    for server in region.kafka_bootstrap.split(","):
        port = server.strip().rpartition(":")[2]
        if not port.isdigit() or not 0 < int(port) < 65536:
            return []
        ports.add(int(port))
    return sorted(ports)


def _check_host_ports(conf: Conf, say) -> None:
    """Each team's host ports lie inside the platform's range and no two teams' ranges overlap."""
    limits = conf.platform.limits
    ranges = sorted((t.host_ports.min, t.host_ports.max, name) for name, t in conf.team_settings.items())
    for low, high, name in ranges:
        if not limits.host_port_min <= low <= high <= limits.host_port_max:
            say(f"teams.yaml: teams.{name}.host_ports", f"{low}-{high} must be a range (min <= max) inside "
                f"platform.yaml's limits.host_port_min..max ({limits.host_port_min}-{limits.host_port_max})")
    for (_, high, name), (low, _, other) in zip(ranges, ranges[1:]):
        if low <= high:
            say(f"teams.yaml: teams.{other}.host_ports", f"overlaps team {name}'s (up to {high}): every team needs a "
                "range of its own, or one could hold another's Kong port on a node")


def _check_quantities(conf: Conf, say) -> None:
    platform = conf.platform
    quotas = [("platform.yaml: limits.preview_quota", platform.limits.preview_quota)]
    quotas += [(f"teams.yaml: teams.{name}.quota", team.quota) for name, team in conf.team_settings.items()]
    checks = [(f"{where}.{key}", getattr(quota, key), parse) for where, quota in quotas
              for key, parse in (("cpu", quantity.cpu_cores), ("memory", quantity.memory_bytes))]
    checks += [("platform.yaml: limits.min_memory", platform.limits.min_memory, quantity.memory_bytes),
              ("platform.yaml: pod.tmp_size", platform.pod.tmp_size, quantity.memory_bytes),
              ("platform.yaml: pod.ephemeral_storage", platform.pod.ephemeral_storage, quantity.memory_bytes),
              ("platform.yaml: mesh.sidecar_ephemeral_storage", platform.mesh.sidecar_ephemeral_storage,
               quantity.memory_bytes),
              ("platform.yaml: mesh.sidecar_cpu", platform.mesh.sidecar_cpu, quantity.cpu_cores),
              ("platform.yaml: mesh.sidecar_memory", platform.mesh.sidecar_memory, quantity.memory_bytes)]
    for name, region in conf.regions.items():
        for pool in ("gpu", "cpu"):
            allocatable = getattr(region.node_pools, pool).allocatable
            checks += [(f"regions.yaml: {name}.node_pools.{pool}.allocatable.cpu", allocatable.cpu, quantity.cpu_cores),
                       (f"regions.yaml: {name}.node_pools.{pool}.allocatable.memory", allocatable.memory,
                        quantity.memory_bytes)]
    for where, value, parse in checks:
        try:
            parse(value)
        except quantity.QuantityError as exc:
            say(where, str(exc))
    pod = platform.pod
    try:
        if quantity.memory_bytes(pod.ephemeral_storage) <= quantity.memory_bytes(pod.tmp_size):
            say("platform.yaml: pod.ephemeral_storage", f"is {pod.ephemeral_storage}, not above pod.tmp_size "
                f"({pod.tmp_size}): the server container's limit holds /tmp and its logs; raise it")
    except quantity.QuantityError:
        pass  # said above


# --- observability.yaml: what dashboards and alert rules are built from -----------------------

_DURATION = re.compile(r"([0-9]+[smhdw])+")


@dataclass(frozen=True)
class Slo:
    availability: float
    latency_seconds: float
    latency_target: float


@dataclass(frozen=True)
class BurnRate:
    long: str
    short: str
    factor: typing.Union[int, float]


@dataclass(frozen=True)
class BurnRates:
    page: list
    ticket: list


@dataclass(frozen=True)
class Thresholds:
    queue_saturated_ratio: float
    queue_saturated_for: str
    shedding_ratio: float
    deadline_ratio: float
    shedding_for: str
    not_ready_for: str
    replicas_mismatch_for: str
    scale_up_stopped_for: str
    rollout_stuck_for: str
    restarts: int
    restarts_window: str
    startup_budget_ratio: float
    gpu_memory_ratio: float
    gpu_memory_for: str
    absent_for: str
    dead_letter_ratio: float
    dead_letter_for: str
    consumer_stalled_for: str


@dataclass(frozen=True)
class Observability:
    """conf/observability.yaml, checked: selectors and thresholds shared by dashboards and alerts."""

    cluster_label: str
    server_container: str
    kube_state_metrics_selector: str
    rollouts_selector: str
    keda_selector: str
    dcgm_pod_label: str
    dcgm_namespace_label: str
    istio_reporter: str
    slo: Slo
    burn_rates: BurnRates
    thresholds: Thresholds
    runbook_url: str


def load_observability(folder: str | Path | None = None) -> Observability:
    """Read and check conf/observability.yaml; raise ConfError listing every problem."""
    folder = Path(folder) if folder is not None else default_conf_dir()
    problems: list[Problem] = []
    raw = _read_yaml(folder / "observability.yaml", problems)
    if problems:
        raise ConfError(folder, problems)
    where = "observability.yaml:"
    obs = _build(Observability, raw, where, problems)
    if not problems:
        rates = {kind: [_build(BurnRate, item, f"observability.yaml: burn_rates.{kind}[{i}]", problems)
                        for i, item in enumerate(getattr(obs.burn_rates, kind) or [])] for kind in ("page", "ticket")}
        obs = dataclasses.replace(obs, burn_rates=BurnRates(**rates))
    if not problems:
        problems.extend(_check_observability(obs))
    if problems:
        raise ConfError(folder, problems)
    return obs


def _check_observability(obs: Observability) -> list[Problem]:
    from podserve.metric_names import LATENCY_BUCKETS

    problems: list[Problem] = []
    say = lambda where, message: problems.append(Problem(f"observability.yaml: {where}", message))  # noqa: E731
    for name in ("availability", "latency_target"):
        if not 0 < getattr(obs.slo, name) < 1:
            say(f"slo.{name}", f"{getattr(obs.slo, name)!r} must be a share between 0 and 1, e.g. 0.999")
    if obs.slo.latency_seconds not in LATENCY_BUCKETS:
        say("slo.latency_seconds", f"{obs.slo.latency_seconds!r} must be a bucket bound of the latency "
            f"histogram, one of {', '.join(map(str, LATENCY_BUCKETS))}")
    for kind in ("page", "ticket"):
        if not getattr(obs.burn_rates, kind):
            say(f"burn_rates.{kind}", "lists no window pair; add {long: 1h, short: 5m, factor: 14.4}")
        for i, rate in enumerate(getattr(obs.burn_rates, kind)):
            for key in ("long", "short"):
                if not _DURATION.fullmatch(str(getattr(rate, key))):
                    say(f"burn_rates.{kind}[{i}].{key}", f"{getattr(rate, key)!r} must be a Prometheus duration "
                        "such as 5m or 1h")
    for f in dataclasses.fields(Thresholds):
        value = getattr(obs.thresholds, f.name)
        if f.name.endswith(("_for", "_window")) and not _DURATION.fullmatch(str(value)):
            say(f"thresholds.{f.name}", f"{value!r} must be a Prometheus duration such as 5m")
        if f.name.endswith("_ratio") and not 0 < value <= 1:
            say(f"thresholds.{f.name}", f"{value!r} must be a share above 0 and at most 1")
    return problems


# --- deploy.yaml: the deploy tool's policy (lock, freeze windows, scheduling grace) ------------

@dataclass(frozen=True)
class FreezeWindow:
    start: str
    end: str
    timezone: str
    reason: str


@dataclass(frozen=True)
class VerdictPolicy:
    """conf/deploy.yaml's `verdict`: how a candidate (grey, a canary) is judged against stable (analysis_template.py,
    run by Argo Rollouts); value.py's verdict_* fields may only tighten it."""

    window_seconds: int
    alpha: float
    error_margin: float
    error_ceiling: float
    latency_quantile: float
    latency_margin: float
    queue_margin: float
    comparable_rate_ratio: float
    min_requests: int
    max_extensions: int
    # Argo Rollouts' analysis (analysis_template.py): margins relative to stable's share, each with a floor
    relative_margin: float
    error_floor: float
    latency_floor: float
    queue_floor: float


@dataclass(frozen=True)
class DeployPolicy:
    """conf/deploy.yaml, checked: how long a deploy waits for the lock, when regions freeze deploys, how a canary
    is judged."""

    lock_wait_seconds: int
    ci_job_timeout_seconds: int
    lock_lease_seconds: int
    scheduling_grace_seconds: int
    canary_scale_down_delay_seconds: int
    exempt_stages: list
    freeze_windows: dict  # region -> list of FreezeWindow
    verdict: VerdictPolicy

    def windows_for(self, region: str) -> list[FreezeWindow]:
        return list(self.freeze_windows.get(region) or [])


def _check_verdict(verdict: VerdictPolicy, say) -> None:
    """Say what cannot be a verdict's threshold: shares outside (0, 1), counts below 1."""
    if not isinstance(verdict, VerdictPolicy):
        return
    for key in ("alpha", "error_margin", "error_ceiling", "latency_quantile", "latency_margin", "queue_margin",
                "error_floor", "latency_floor", "queue_floor"):
        value = getattr(verdict, key)
        if isinstance(value, float) and not 0 < value < 1:
            say(f"verdict.{key}", f"{value} must be a share between 0 and 1")
    for key in ("window_seconds", "min_requests"):
        if isinstance(getattr(verdict, key), int) and getattr(verdict, key) < 1:
            say(f"verdict.{key}", f"{getattr(verdict, key)} must be 1 or more")
    if isinstance(verdict.max_extensions, int) and verdict.max_extensions < 0:
        say("verdict.max_extensions", f"{verdict.max_extensions} must be 0 or more")
    if isinstance(verdict.relative_margin, float) and not verdict.relative_margin > 0:
        say("verdict.relative_margin", f"{verdict.relative_margin} must be above 0 (a share of stable's own)")
    if isinstance(verdict.comparable_rate_ratio, float) and verdict.comparable_rate_ratio < 1:
        say("verdict.comparable_rate_ratio", f"{verdict.comparable_rate_ratio} must be 1 or more")


def load_deploy_policy(folder: str | Path | None = None, conf: Conf | None = None) -> DeployPolicy:
    """Read and check conf/deploy.yaml against conf/'s regions and stages (`conf`: already loaded from `folder`);
    raise ConfError listing every problem."""
    from podserve.tooling.deploy import freeze

    folder = Path(folder) if folder is not None else (conf.folder if conf is not None else default_conf_dir())
    conf = conf if conf is not None else load_conf(folder)
    problems: list[Problem] = []
    raw = _read_yaml(folder / "deploy.yaml", problems)
    if problems:
        raise ConfError(folder, problems)
    policy = _build(DeployPolicy, raw, "deploy.yaml:", problems)
    if problems:
        raise ConfError(folder, problems)
    say = lambda where, message: problems.append(Problem(f"deploy.yaml: {where}", message))  # noqa: E731
    for key in ("lock_wait_seconds", "ci_job_timeout_seconds", "lock_lease_seconds", "scheduling_grace_seconds"):
        if getattr(policy, key) < 1:
            say(key, f"{getattr(policy, key)} must be 1 or more seconds")
    if policy.canary_scale_down_delay_seconds < 0:
        say("canary_scale_down_delay_seconds", f"{policy.canary_scale_down_delay_seconds} must be 0 or more seconds")
    _check_verdict(policy.verdict, say)
    for stage in policy.exempt_stages:
        if stage not in conf.stages:
            say("exempt_stages", f"{stage!r} is not a stage in stages.yaml ({', '.join(conf.stages)})")
    windows: dict[str, list[FreezeWindow]] = {}
    for region, items in _build_mapping(policy.freeze_windows, "deploy.yaml: freeze_windows", problems).items():
        if region not in conf.regions:
            say(f"freeze_windows.{region}", f"is not a region in regions.yaml ({', '.join(conf.regions)})")
        if not isinstance(items, list):
            say(f"freeze_windows.{region}", f"must be a list of windows, not {type(items).__name__}")
            continue
        windows[region] = [_build(FreezeWindow, item, f"deploy.yaml: freeze_windows.{region}[{i}]", problems)
                           for i, item in enumerate(items)]
        for i, window in enumerate(windows[region]):
            if all(isinstance(getattr(window, k), str) for k in ("start", "end", "timezone")):
                wrong = freeze.problem(window.start, window.end, window.timezone)
                if wrong:
                    say(f"freeze_windows.{region}[{i}]", wrong)
    if problems:
        raise ConfError(folder, problems)
    return dataclasses.replace(policy, freeze_windows=windows)
