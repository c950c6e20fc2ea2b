"""The platform's conf/ folder (platform defaults, teams, regions, stages) read and checked.

`load_conf(folder)` returns a `Conf` or raises ConfError listing every problem, each naming
the file and the key. conf/ is the platform team's; a service never changes it.
"""

from __future__ import annotations

import dataclasses
import re
import typing
from dataclasses import dataclass
from pathlib import Path

import yaml

from podserve.routes import RESERVED_SERVICE_NAMES
from podserve.tooling import quantity
from podserve.tooling.valuefile import Problem, ValueFileError

DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
EXTENDED_RESOURCE = re.compile(r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?/[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$")
_VERSION = re.compile(r"^1\.\d+$")
_PLACEHOLDER = re.compile(r"{([^}]*)}")
TRACKS = ("grey", "ab", "stable")


class ConfError(ValueFileError):
    """conf/ cannot be used; carries every problem found, each naming the file and key."""


# --- the shape of each file ---------------------------------------------------------------

@dataclass(frozen=True)
class KubernetesVersions:
    oldest: str
    newest: str


@dataclass(frozen=True)
class Limits:
    gpus_per_pod: int
    max_replicas: int
    max_init_delay_second: int
    host_port_min: int
    host_port_max: int
    min_memory: str


@dataclass(frozen=True)
class PodDefaults:
    run_as_user: int
    tmp_size: str
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
    route_timeout_margin_ms: int
    retries: dict
    outlier_detection: dict
    slow_start: str


@dataclass(frozen=True)
class Monitoring:
    podmonitor_labels: dict
    scrape_interval: str


@dataclass(frozen=True)
class Autoscaling:
    scale_down_stabilization_seconds: int


@dataclass(frozen=True)
class DecodeSidecar:
    image: str
    cpu: str
    memory: str


@dataclass(frozen=True)
class Platform:
    kubernetes: KubernetesVersions
    limits: Limits
    pod: PodDefaults
    mesh: Mesh
    monitoring: Monitoring
    autoscaling: Autoscaling
    decode_sidecar: typing.Optional[DecodeSidecar]


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

    def public_path(self, service: str, user: str) -> str:
        """Return this stage's public path of a service: its route with the names filled in."""
        return self.route.format(service=service, user=user)


@dataclass(frozen=True)
class Conf:
    """Everything in conf/, checked."""

    folder: Path
    platform: Platform
    teams: tuple[str, ...]
    regions: dict[str, Region]
    stages: dict[str, Stage]

    def region_of(self, stage: Stage) -> Region:
        return self.regions[stage.region]


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
    teams = tuple(teams_doc.get("teams") or ())
    regions = {name: dataclasses.replace(_build(Region, body, f"regions.yaml: {name}", problems), name=name)
               for name, body in _build_mapping(raw["regions"], "regions.yaml", problems).items()}
    stages = {name: dataclasses.replace(_build(Stage, body, f"stages.yaml: {name}", problems), name=name)
              for name, body in _build_mapping(raw["stages"], "stages.yaml", problems).items()}
    if problems:
        raise ConfError(folder, problems)
    conf = Conf(folder, platform, teams, regions, stages)
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
        if not _VERSION.match(getattr(versions, key)):
            say(f"platform.yaml: kubernetes.{key}", f"{getattr(versions, key)!r} must look like \"1.30\"")
    _check_quantities(conf, say)
    if not conf.teams:
        say("teams.yaml: teams", "lists no team; add at least one")
    for team in conf.teams:
        if not isinstance(team, str) or not DNS_LABEL.match(team) or team in RESERVED_SERVICE_NAMES:
            say("teams.yaml: teams", f"{team!r} must be a lowercase DNS label and not one of "
                f"{sorted(RESERVED_SERVICE_NAMES)}, because it is part of /api/<team>/<service>")
    for name, region in conf.regions.items():
        for key, resource in (("resource", region.gpu.resource), ("memory_resource", region.gpu.memory_resource)):
            if resource is not None and not EXTENDED_RESOURCE.match(resource):
                say(f"regions.yaml: {name}.gpu.{key}", f"{resource!r} must be an extended resource name "
                    "such as nvidia.com/gpu")
    namespaces: dict[tuple[str, str], str] = {}
    for name, stage in conf.stages.items():
        where = f"stages.yaml: {name}"
        if not DNS_LABEL.match(name):
            say(where, f"the stage name {name!r} must be a lowercase DNS label")
        if stage.region not in conf.regions:
            say(f"{where}.region", f"{stage.region!r} is not in regions.yaml ({', '.join(conf.regions)})")
        if not DNS_LABEL.match(stage.namespace):
            say(f"{where}.namespace", f"{stage.namespace!r} must be a lowercase DNS label")
        other = namespaces.setdefault((stage.region, stage.namespace), name)
        if other != name:
            say(f"{where}.namespace", f"{stage.namespace!r} is also stage {other}'s in region {stage.region}; "
                "give each stage of a region its own namespace")
        if stage.gateway.count("/") != 1 or not all(map(DNS_LABEL.match, stage.gateway.split("/"))):
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


def _check_quantities(conf: Conf, say) -> None:
    platform = conf.platform
    checks = [("platform.yaml: limits.min_memory", platform.limits.min_memory, quantity.memory_bytes),
              ("platform.yaml: pod.tmp_size", platform.pod.tmp_size, quantity.memory_bytes),
              ("platform.yaml: mesh.sidecar_cpu", platform.mesh.sidecar_cpu, quantity.cpu_cores),
              ("platform.yaml: mesh.sidecar_memory", platform.mesh.sidecar_memory, quantity.memory_bytes)]
    if platform.decode_sidecar:
        checks += [("platform.yaml: decode_sidecar.cpu", platform.decode_sidecar.cpu, quantity.cpu_cores),
                   ("platform.yaml: decode_sidecar.memory", platform.decode_sidecar.memory, quantity.memory_bytes)]
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
