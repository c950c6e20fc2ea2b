"""The fields of a service's `value.py`: their types, defaults, and checks.

`load_values` is the only way the tooling reads a value.py: it parses it without running
it (see `valuefile`), checks every field against its type and range, the fields against
each other, and the service against the platform's conf/ (teams, node sizes, GPUs, host
ports, routes already taken), and reports every problem at once, each with its fix.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import NamedTuple, Sequence

from podserve import kafka_access, memory_plan
from podserve import offline_settings
from podserve.routes import RESERVED_SERVICE_NAMES
from podserve.settings import ServingSettings, SettingsError
from podserve.tooling import handler_source, quantity, routing, tenancy
from podserve.tooling.conf import Conf, Region, Stage, load_conf
from podserve.tooling.scaling import SERIES
from podserve.tooling.valuefile import Problem, ValueFileError, read_assignments

_SERVING_DEFAULTS = ServingSettings()
REQUIRED = object()
NONE = type(None)
#: A Kubernetes object name that must be a DNS-1035 label (a letter first; at most 63 long, checked apart). Patterns
#: here are used with fullmatch: match's `$` also matches before a trailing newline.
DNS_1035_LABEL = re.compile(r"[a-z]([-a-z0-9]*[a-z0-9])?")
#: Service names are Service names too.
SERVICE_NAME = DNS_1035_LABEL
_HANDLER = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*")
#: value.py's autoscale_metric choices (podserve.tooling.scaling.SERIES: what each scales on).
AUTOSCALE_METRICS = tuple(SERIES)


class Field(NamedTuple):
    """One value.py field: accepted types, default, and the range of a number.

    `high` may name a limit in conf/platform.yaml (`limits.<high>`) instead of a number.
    """

    kinds: tuple[type, ...]
    default: object
    low: float | None = None
    high: float | str | None = None


FIELDS: dict[str, Field] = {
    "service_name": Field((str,), REQUIRED),
    "username": Field((str,), REQUIRED),
    "handler": Field((str,), _SERVING_DEFAULTS.handler),
    "model_path": Field((str,), _SERVING_DEFAULTS.model_path),
    "cpu": Field((int, float, str), 4),
    "memory": Field((str,), "8Gi"),
    "replicas": Field((int,), 1, 1, "max_replicas"),
    "ab_replicas": Field((int,), 1, 1, "max_replicas"),
    "hk_replicas": Field((int, NONE), None, 1, "max_replicas"),
    "eu_replicas": Field((int, NONE), None, 1, "max_replicas"),
    "na_replicas": Field((int, NONE), None, 1, "max_replicas"),
    "max_replicas": Field((int,), 0, 0, "max_replicas"),
    "regions": Field((list, NONE), None),
    "autoscale_metric": Field((str,), "queue_depth"),
    "autoscale_target": Field((int, float, NONE), None, 0.001, 1_000_000),
    "gpu_num": Field((int,), 1, 0, "gpus_per_pod"),
    "ins_num_per_gpu": Field((int,), _SERVING_DEFAULTS.ins_num_per_gpu, 1, 16),
    "gpu_memory": Field((int,), 0, 0, 1024),
    "init_delay_second": Field((int,), _SERVING_DEFAULTS.init_delay_second, 1, "max_init_delay_second"),
    "use_decode_sidecar": Field((bool,), False),  # the old platform's; only False: the server decodes videos
    "use_srv": Field((bool,), False),
    "host_port": Field((int,), 0, 0, 65535),
    "max_batch_size": Field((int,), _SERVING_DEFAULTS.max_batch_size, 1, 4096),
    "max_batch_delay_ms": Field((int, float), _SERVING_DEFAULTS.max_batch_delay_ms, 0, 10_000),
    "queue_size": Field((int,), _SERVING_DEFAULTS.queue_size, 1, 100_000),
    "request_timeout_ms": Field((int,), _SERVING_DEFAULTS.request_timeout_ms, 1, 600_000),
    "drain_seconds": Field((int, float), _SERVING_DEFAULTS.drain_seconds, 0, 300),
    "http_threads": Field((int,), _SERVING_DEFAULTS.http_threads, 0, 1024),
    "decode_processes": Field((int,), _SERVING_DEFAULTS.decode_processes, -1, 256),
    "max_body_bytes": Field((int,), _SERVING_DEFAULTS.max_body_bytes, 1, 2**30),
    "max_image_pixels": Field((int,), _SERVING_DEFAULTS.max_image_pixels, 1, 10**9),
    "stuck_batch_seconds": Field((int, float), _SERVING_DEFAULTS.stuck_batch_seconds, 1, 86_400),
    "video_fps": Field((int, float), _SERVING_DEFAULTS.video_fps, 0.01, 60),
    "max_video_bytes": Field((int,), _SERVING_DEFAULTS.max_video_bytes, 1, 2**30),
    "max_video_seconds": Field((int, float), _SERVING_DEFAULTS.max_video_seconds, 0.1, 3600),
    "max_video_frames": Field((int,), _SERVING_DEFAULTS.max_video_frames, 1, 100_000),
    "max_video_pixels": Field((int,), _SERVING_DEFAULTS.max_video_pixels, 1, 10**9),
    "video_decode_timeout_seconds": Field((int, float), _SERVING_DEFAULTS.video_decode_timeout_seconds, 0.1, 3600),
    # SLO objectives the alert rules hold this service to; 0: conf/observability.yaml's.
    "slo_availability": Field((int, float), _SERVING_DEFAULTS.slo_availability, 0, 0.99999),
    "slo_latency_target": Field((int, float), _SERVING_DEFAULTS.slo_latency_target, 0, 0.99999),
    # Releasing production (docs/deploy.md): a share of hk's requests copied to grey (hk only), the canary's weighted
    # steps (empty: a rolling update), and the verdict's thresholds, tighter than conf/deploy.yaml's (None: those).
    "grey_mirror_percent": Field((int, float), 0, 0, "max_grey_mirror_percent"),
    "canary_steps": Field((list,), ()),
    "verdict_error_margin": Field((int, float, NONE), None, 0.0001, 1),
    "verdict_latency_margin": Field((int, float, NONE), None, 0.0001, 1),
    "verdict_window_seconds": Field((int, NONE), None, 1, 3600),
    # Offline (Kafka worker) mode; see podserve.offline_settings.
    "mode": Field((str,), offline_settings.ONLINE),
    "source_topic": Field((str, NONE), None),
    "consumer_group": Field((str, NONE), None),
    "sink_topic": Field((str, NONE), None),
    "sink_file": Field((str, NONE), None),
    "dead_letter_topic": Field((str, NONE), None),
    "lag_target": Field((int,), offline_settings.DEFAULT_LAG_TARGET, 1, 10_000_000),
}

#: value.py's verdict_* fields: each the conf/deploy.yaml `verdict` key it tightens, and whether tighter is lower.
VERDICT_FIELDS = {"verdict_error_margin": ("error_margin", True), "verdict_latency_margin": ("latency_margin", True),
                  "verdict_window_seconds": ("window_seconds", False)}

#: The fields only an offline service may set (consumer_group defaults to service_name there).
OFFLINE_FIELDS = ("source_topic", "consumer_group", "sink_topic", "sink_file", "dead_letter_topic")


#: Per-region replicas: None takes `replicas`.
REGION_REPLICAS = tuple(name for name, f in FIELDS.items() if name.endswith("_replicas") and NONE in f.kinds)


@dataclass(frozen=True)
class ServiceValues:
    """A checked value.py: every field present, defaults filled in, cpu in cores.

    Region replicas left at None are filled with `replicas`; autoscale_target left at None
    with max_batch_size.
    """

    fields: dict
    #: The platform's serving settings every service gets (conf/platform.yaml's `http`), by setting name.
    platform: dict = dataclasses.field(default_factory=dict)
    #: The fields value.py itself sets (the others took their defaults).
    assigned: frozenset = frozenset()

    def source(self, name: str) -> str:
        """Where a field's value came from, for a message: "hk_replicas = 1 in value.py", or "1, the default"."""
        value = self.fields[name]
        return f"{name} = {value!r} in value.py" if name in self.assigned else f"{name} = {value!r}, the default"

    def __getitem__(self, name: str):
        return self.fields[name]

    def deploys_to(self, stage: Stage) -> bool:
        """Whether the service runs in `stage`: grey and ab always, a production stage when its region is among
        `regions` (None: every region)."""
        regions = self.fields.get("regions")
        return not stage.production or regions is None or stage.region in regions

    def serving_settings(self) -> ServingSettings:
        """Return the settings the in-pod server gets for this service: value.py's and the platform's (`make serve`
        changes a few: serve_local.LOCAL_DEFAULTS)."""
        shared = set(ServingSettings.names()) & set(self.fields)
        return ServingSettings(**{name: self.fields[name] for name in shared}, **self.platform,
                               memory_bytes=quantity.memory_bytes(self.fields["memory"]),
                               require_gpu=int(self.fields["gpu_num"] > 0))

    @property
    def offline(self) -> bool:
        return self.fields["mode"] == offline_settings.OFFLINE

    def worker_settings(self, grey: bool = False) -> offline_settings.OfflineSettings:
        """Return the offline worker's settings (no bootstrap servers: those come from the environment).

        The grey stage has a stream of its own: it reads its source, joins its group and writes its sink and
        dead-letter topics each under the team's grey prefix (`like.text-lines` -> `like.grey.text-lines`), the only
        topics grey's principal may touch (podserve.kafka_access): production's stream is production's data, and grey
        runs any branch's code. The team feeds grey's source.
        """
        def own(name: str) -> str:
            return kafka_access.grey_name(name, self.fields["username"]) if grey else name

        sink_topic = self.fields["sink_topic"]
        return offline_settings.OfflineSettings(
            source_topic=own(self.fields["source_topic"]), consumer_group=own(self.fields["consumer_group"]),
            sink_topic=own(sink_topic) if sink_topic else "", sink_file=self.fields["sink_file"] or "",
            dead_letter_topic=own(self.fields["dead_letter_topic"]))

    def replicas_for(self, stage: Stage) -> int:
        """Return the replicas a stage runs: forced by conf, or from the field conf names."""
        return stage.replicas if isinstance(stage.replicas, int) else self.fields[stage.replicas]


def load_values(path: str | Path, conf: Conf | None = None,
                existing_routes: list[routing.Route] = (), handler_paths: Sequence[Path] = ()) -> ServiceValues:
    """Read and check a value.py; raise ValueFileError listing every problem.

    `conf` defaults to the repository's conf/; `existing_routes` are routes other services
    already serve (see routing.load_existing_routes), which this service must not overlap;
    given `handler_paths` (source folders), `handler` is checked in them (see handler_source).
    """
    conf = conf if conf is not None else load_conf()
    assigned = read_assignments(path)
    problems: list[Problem] = []
    values: dict = {}
    for name, (value, line) in assigned.items():
        message = _field_problem(name, value, conf)
        if message:
            problems.append(Problem(name, message, line))
        else:
            values[name] = value
    for name, field in FIELDS.items():
        if name not in assigned:
            if field.default is REQUIRED:
                problems.append(Problem(name, f"is required; add `{name} = ...` to value.py"))
            else:
                values[name] = field.default
    lines = {name: line for name, (_, line) in assigned.items()}
    if handler_paths and "handler" in values:
        message = handler_source.problem(values["handler"], handler_paths)
        if message:
            problems.append(Problem("handler", message, lines.get("handler")))
    if not problems:
        values = _normalise(values)
        problems = [Problem(name, message, lines.get(name))
                    for name, message in _service_problems(values, conf, existing_routes)]
    if problems:
        raise ValueFileError(path, problems)
    return ServiceValues(values, dataclasses.asdict(conf.platform.http), frozenset(assigned))


# --- one field at a time --------------------------------------------------------------------

def _field_problem(name: str, value, conf: Conf) -> str | None:
    """Return what is wrong with one field's value (why and fix), or None."""
    if name not in FIELDS:
        close = difflib.get_close_matches(name, FIELDS, n=1)
        hint = f"did you mean `{close[0]}`?" if close else f"known fields: {', '.join(sorted(FIELDS))}"
        return f"is not a known field; {hint} (or remove it)"
    field = FIELDS[name]
    if isinstance(value, bool) and bool not in field.kinds or not isinstance(value, field.kinds):
        wanted = " or ".join("None" if k is NONE else k.__name__ for k in field.kinds)
        example = field.default if field.default not in (REQUIRED, None) else {int: 1, float: 1.0}.get(field.kinds[0], "...")
        return f"is {value!r} ({type(value).__name__}); it must be {wanted}, e.g. `{name} = {example!r}`"
    if field.low is not None and isinstance(value, (int, float)) and not isinstance(value, bool):
        high = getattr(conf.platform.limits, field.high) if isinstance(field.high, str) else field.high
        if not field.low <= value <= high:
            source = f" (the platform's limits.{field.high} in conf/platform.yaml)" if isinstance(field.high, str) else ""
            return f"is {value!r}, out of range; set it between {field.low} and {high}{source}"
    check = _FORMAT_CHECKS.get(name)
    return check(value, conf) if check else None


def _check_service_name(value: str, conf: Conf) -> str | None:
    if not SERVICE_NAME.fullmatch(value) or len(value) > 63:
        return (f"{value!r} must be a DNS-1035 label: lowercase letters, digits and '-', a letter first, "
                f"no '-' last, at most 63 characters (it names the Deployment and Service), e.g. 'text-direction'")
    if value in RESERVED_SERVICE_NAMES:
        return f"{value!r} is reserved (its route would collide with {sorted(RESERVED_SERVICE_NAMES)}); choose another"
    return None


def _check_username(value: str, conf: Conf) -> str | None:
    if value not in conf.teams:
        return f"{value!r} is not a team in conf/teams.yaml; use one of {', '.join(conf.teams)}"
    return None


def _check_handler(value: str, conf: Conf) -> str | None:
    if not _HANDLER.fullmatch(value):
        return f"{value!r} must be 'module:Class', e.g. 'server:TextDirection' (the class in src/server.py)"
    return None


def _check_model_path(value: str, conf: Conf) -> str | None:
    parts = Path(value).parts
    if not value or value.startswith("/") or ".." in parts:
        return f"{value!r} must be a path inside the repository (and the image), e.g. 'model/model.onnx'"
    return None


def _check_cpu(value, conf: Conf) -> str | None:
    try:
        quantity.cpu_cores(value)
    except quantity.QuantityError as exc:
        return str(exc)
    return None


def _check_autoscale_target(value, conf: Conf) -> str | None:
    if value is None:
        return None
    try:
        quantity.whole_millis(value, Decimal(str(value)))
    except quantity.QuantityError as exc:
        return f"{exc} (KEDA's threshold becomes the HPA's averageValue, a quantity)"
    return None


def _check_memory(value: str, conf: Conf) -> str | None:
    try:
        nbytes = quantity.memory_bytes(value)
    except quantity.QuantityError as exc:
        return str(exc)
    least = conf.platform.limits.min_memory
    if nbytes < quantity.memory_bytes(least):
        return (f"{value!r} is below the platform's minimum (limits.min_memory): the pod would be OOM-killed; "
                f"ask for at least {least}")
    return None


def _check_autoscale_metric(value: str, conf: Conf) -> str | None:
    if value not in AUTOSCALE_METRICS:
        return (f"{value!r} is not a scaling signal; use 'queue_depth' (requests queued for a free batch lane, the "
                f"default) or 'in_flight' (requests accepted and not yet answered)")
    return None


def _check_mode(value: str, conf: Conf) -> str | None:
    if value not in offline_settings.MODES:
        return (f"{value!r} is not a mode; use 'online' (the HTTP server) or 'offline' (a worker consuming "
                f"source_topic from Kafka)")
    return None


def _check_kafka_name(value, conf: Conf) -> str | None:
    if value is not None and (not offline_settings.TOPIC_NAME.fullmatch(value) or value in (".", "..")):
        return (f"{value!r} is not a Kafka topic or group name; use 1 to {offline_settings.MAX_NAME} letters, digits, "
                f"'.', '_' or '-', e.g. 'text-lines'")
    return None


def _check_sink_file(value, conf: Conf) -> str | None:
    if value is not None and (not value.strip() or value.endswith("/")):
        return f"{value!r} must name a file, e.g. 'results.jsonl' (JSON lines, appended)"
    return None


def _check_canary_steps(value, conf: Conf) -> str | None:
    most = conf.platform.limits.max_canary_steps
    steps = list(value)
    if (len(steps) > most or any(not isinstance(w, int) or isinstance(w, bool) or not 1 <= w <= 99 for w in steps)
            or steps != sorted(set(steps))):
        return (f"is {value!r}; set it to at most {most} canary weights in percent, each from 1 to 99 and rising (e.g. "
                f"`canary_steps = [10, 50]`: 10% of production's requests, then 50%, then the rollout), or [] for a "
                f"plain rolling update (conf/platform.yaml limits.max_canary_steps)")
    return None


def _check_regions(value: list, conf: Conf) -> str | None:
    production = sorted({s.region for s in conf.stages.values() if s.production})
    # regions first: set() fails on a list or dict among them, which no region equals
    if not value or any(r not in production for r in value) or len(set(value)) != len(value):
        return (f"is {value!r}; list the production regions to deploy to, each once, among {production} "
                f"(e.g. `regions = {production[:2]!r}`), or remove it for every region")
    return None


_FORMAT_CHECKS = {
    "service_name": _check_service_name, "username": _check_username, "handler": _check_handler,
    "model_path": _check_model_path, "cpu": _check_cpu, "memory": _check_memory,
    "autoscale_metric": _check_autoscale_metric, "autoscale_target": _check_autoscale_target, "mode": _check_mode,
    "source_topic": _check_kafka_name, "consumer_group": _check_kafka_name, "sink_topic": _check_kafka_name,
    "dead_letter_topic": _check_kafka_name, "sink_file": _check_sink_file, "regions": _check_regions,
    "canary_steps": _check_canary_steps,
}



def _normalise(values: dict) -> dict:
    values = dict(values)
    cores = quantity.cpu_cores(values["cpu"])
    values["cpu"] = int(cores) if cores == cores.to_integral_value() else float(cores)
    for name in REGION_REPLICAS:
        if values[name] is None:
            values[name] = values["replicas"]
    if values["autoscale_target"] is None:
        values["autoscale_target"] = values["max_batch_size"]
    values["canary_steps"] = list(values["canary_steps"])
    if values["mode"] == offline_settings.OFFLINE and values["consumer_group"] is None:
        values["consumer_group"] = team_prefix(values["username"]) + values["service_name"]
    return values


# --- fields together, and the service on the platform --------------------------------------------

def _service_problems(v: dict, conf: Conf, existing: list[routing.Route]):
    """Yield (field, message) for every problem between fields or with the platform."""
    limits = conf.platform.limits
    if v["gpu_num"] == 0 and v["gpu_memory"] > 0:
        yield "gpu_memory", (f"is {v['gpu_memory']} GiB but gpu_num = 0 serves on the CPU; set gpu_memory = 0, "
                             "or gpu_num = 1 to serve on a GPU")
    if v["queue_size"] < v["max_batch_size"]:
        yield "queue_size", (f"is {v['queue_size']}, below max_batch_size = {v['max_batch_size']}: a batch could "
                             f"never fill; set queue_size to at least {v['max_batch_size']}")
    ports = conf.team(v["username"]).host_ports
    if v["use_srv"] and not ports.min <= v["host_port"] <= ports.max:
        yield "host_port", (f"is {v['host_port']}, but use_srv = True needs the port Kong probes, in team "
                            f"{v['username']}'s own range: set it between {ports.min} and {ports.max} "
                            "(conf/teams.yaml host_ports; each team has its own, so no two teams' pods want one port)")
    if not v["use_srv"] and v["host_port"]:
        yield "host_port", f"is {v['host_port']} but has no effect without use_srv = True; remove it or set use_srv = True"
    if v["use_decode_sidecar"]:
        yield "use_decode_sidecar", ("is True, but there is no decode sidecar: the server decodes videos itself "
                                     "(README: Videos); set it to False or remove it")
    try:
        ServingSettings(**{n: v[n] for n in set(ServingSettings.names()) & set(v)}).check()
    except SettingsError as exc:
        yield "value.py", f"gives server settings the server would refuse: {exc}"
    for stage in conf.stages.values():
        yield from _replica_problems(v, stage)
    for region in dict.fromkeys(stage.region for stage in conf.stages.values()):
        yield from _node_problems(v, conf, conf.regions[region])
    for stage in conf.stages.values():
        if v["mode"] == offline_settings.OFFLINE and stage.track == "ab":
            continue
        if tenancy.tier(stage) == "preview" or v["mode"] != offline_settings.OFFLINE:
            yield from _quota_problems(v, conf, stage)
    yield from _release_problems(v, conf)
    if v["mode"] == offline_settings.OFFLINE:
        yield from _offline_problems(v)
    else:
        yield from _online_problems(v)
        yield from _route_problems(v, conf, existing)
        yield from _memory_problems(v, conf)


def _release_problems(v: dict, conf: Conf):
    """Yield what an offline service cannot have (mirroring, a canary: it keeps its rolling update), a canary of a
    service Kong calls by host port (use_srv), and verdict thresholds looser than the platform's (conf/deploy.yaml
    `verdict`)."""
    from podserve.tooling.conf import ConfError, load_deploy_policy

    if v["mode"] == offline_settings.OFFLINE:
        for name, off in (("grey_mirror_percent", 0), ("canary_steps", [])):
            if v[name] != off:
                yield name, (f"is {v[name]!r}, but an offline service takes no HTTP traffic to mirror or weigh: it "
                             f"keeps its rolling update; set {name} = {off!r} or remove it")
    if v["use_srv"] and v["canary_steps"]:
        yield "canary_steps", (f"is {v['canary_steps']!r}, but use_srv = True: Kong calls the pods on their host port, "
                               "outside the mesh's weights, so a canary's share of the requests could not be held (and "
                               "its pods would join Kong's pool at once); set canary_steps = [] (each revision rolled "
                               "out whole, as Kong sees pods come and go) or use_srv = False")
    try:
        platform = load_deploy_policy(conf=conf).verdict
    except ConfError:
        return  # conf/'s own problems are reported where conf/ is loaded
    for name, (key, lower) in VERDICT_FIELDS.items():
        mine, theirs = v[name], getattr(platform, key)
        if mine is not None and (mine > theirs if lower else mine < theirs):
            yield name, (f"is {mine}, looser than the platform's {theirs} (conf/deploy.yaml "
                         f"verdict.{key}): value.py may only tighten it; set it to at {'most' if lower else 'least'} "
                         f"{theirs}, or remove it")


#: The topics an offline worker reads or writes, by their field.
_WORKER_TOPICS = ("source_topic", "sink_topic", "dead_letter_topic")


def team_prefix(team: str) -> str:
    """The prefix every Kafka topic and consumer group of `team` starts with ("like."): team names hold no dots, so
    no team's names can start with another's."""
    return kafka_access.team_prefix(team)


def _offline_problems(v: dict):
    """Yield what an offline service must name, and names that would make a worker read or mix another's output."""
    prefix = team_prefix(v["username"])
    for name, example in (("source_topic", "text-lines"), ("dead_letter_topic", "text-lines-dead")):
        if not v[name]:
            yield name, f"is required with mode = 'offline'; add `{name} = {prefix + example!r}` (a Kafka topic)"
    grey_prefix = kafka_access.grey_prefix(v["username"])
    unnamed = False
    for name in _WORKER_TOPICS + ("consumer_group",):
        if v[name] and not v[name].startswith(prefix):
            unnamed = True
            yield name, (f"{v[name]!r} does not carry the team: rename it to {prefix + v[name]!r} and set that name (every topic and "
                         f"consumer group of team {v['username']} starts with {prefix!r}: the brokers' ACLs allow "
                         "the team's principal nothing else, docs/offline.md)")
        elif v[name] and v[name].startswith(grey_prefix):
            yield name, (f"{v[name]!r} starts with {grey_prefix!r}, grey's own prefix: grey's workers (any branch's "
                         f"code) write and join there, so production must not read, write or join it; choose a name "
                         f"outside {grey_prefix!r}")
    if bool(v["sink_topic"]) == bool(v["sink_file"]):
        which = "both are set" if v["sink_topic"] else "neither is set"
        yield "sink_topic", (f"with mode = 'offline', set exactly one of sink_topic (a Kafka topic) and sink_file "
                             f"(a JSON-lines file, for one-off batch jobs); {which}")
    if v["source_topic"] and v["dead_letter_topic"] and not unnamed:
        yield from _worker_name_problems(ServiceValues(v))
    if v["use_srv"]:
        yield "use_srv", "is True but an offline worker takes no HTTP traffic from Kong; set use_srv = False"


def _worker_name_problems(values: ServiceValues):
    """Yield a problem for each name of grey's worker that Kafka refuses (grey's are longer), and for each topic
    production or grey reads or writes that is also another of their topics."""
    grey = values.worker_settings(grey=True)
    for name in _WORKER_TOPICS + ("consumer_group",):
        used = getattr(grey, name)
        if used and not offline_settings.TOPIC_NAME.fullmatch(used):
            most = offline_settings.MAX_NAME - (len(used) - len(values[name]))
            yield name, (f"is {len(values[name])} characters, so grey's {name} ({len(used)}) is longer than Kafka's "
                         f"{offline_settings.MAX_NAME}; use at most {most} characters")
    seen: dict[str, str] = {}
    for worker, stage in ((values.worker_settings(), ""), (grey, "grey's ")):
        for name in _WORKER_TOPICS:
            used = getattr(worker, name)
            if not used:
                continue
            if used in seen:
                yield name, (f"{used!r} is both {seen[used]} and {stage}{name}: every topic production and grey read "
                             f"or write must be their own, or a worker would read its own output or mix its messages "
                             f"with another's; choose another {name}")
            seen.setdefault(used, stage + name)


def pod_layout(v: dict, conf: Conf) -> tuple[ServingSettings, int, bool, int]:
    """(the pod's settings, its decoder processes, whether on a GPU, its model's bytes) as it runs on its node: what
    its memory plan (podserve/memory_plan.py) is made of. `decode_processes = -1` (auto) gives a GPU pod one decoder
    per core (runtime/processes/layout.py)."""
    settings = ServingSettings(**{n: v[n] for n in set(ServingSettings.names()) & set(v)},
                               **dataclasses.asdict(conf.platform.http), memory_bytes=quantity.memory_bytes(v["memory"]))
    decoders = v["decode_processes"]
    if decoders == -1:
        decoders = max(1, int(quantity.cpu_cores(v["cpu"]))) if v["gpu_num"] else 0
    model = Path(v["model_path"])
    return settings, decoders, v["gpu_num"] > 0, model.stat().st_size if model.is_file() else 0


def _memory_problems(v: dict, conf: Conf):
    """Yield what the pod's memory cannot hold (podserve/memory_plan.py): its code, processes, shared memory and
    decodes, one largest request body, and the parses it may run at once; and a video upload that could never be
    read."""
    settings, decoders, on_gpu, model_bytes = pod_layout(v, conf)
    problems = memory_plan.plan(settings, decoders, on_gpu, model_bytes).problems()
    if problems:
        least = memory_plan.least_memory_note(settings, decoders, on_gpu, model_bytes)
        for message in problems:
            field, _, text = message.partition(": ")
            yield field, f"{text} ({least})"


def _online_problems(v: dict):
    for name in OFFLINE_FIELDS:
        if v[name] is not None:
            yield name, f"is set but mode is 'online' (the HTTP server); remove it, or set mode = 'offline'"


def _replica_problems(v: dict, stage: Stage):
    replicas = stage.replicas if isinstance(stage.replicas, int) else v.get(stage.replicas)
    if not isinstance(replicas, int):
        yield "value.py", (f"conf/stages.yaml gives stage {stage.name} the replicas of {stage.replicas!r}, "
                           "which is not a value.py field; the platform team must fix conf/stages.yaml")
    elif stage.autoscale and v["max_replicas"] and v["max_replicas"] < replicas:
        yield "max_replicas", (f"is {v['max_replicas']}, below the {replicas} replicas of stage {stage.name}: an HPA "
                               f"never goes below its minimum; set max_replicas to at least {replicas}, or 0 for "
                               "fixed replicas")


def _quota_problems(v: dict, conf: Conf, stage: Stage):
    """Yield what keeps a stage's rollout out of the team's namespace quota even when nothing else of the team runs
    there (sidecars included): the cluster would refuse its pods. grey and ab roll with a surge pod; an online
    production stage's release (Argo Rollouts) runs the new revision in full beside a whole stable before it
    switches (no dynamic stable scale), at the most replicas its autoscaler may reach."""
    replicas = _replicas(v, stage)
    if stage.production:
        most = max(replicas, v["max_replicas"]) if stage.autoscale else replicas
        pods, how = 2 * most, f"the new revision's {most} in full beside stable's {most}"
        where = f"conf/teams.yaml teams.{v['username']}.quota"
    else:
        pods, how = replicas + conf.platform.pod.max_surge, f"{replicas} and the rollout's surge pod"
        where = "conf/platform.yaml limits.preview_quota"
    quota, mesh = tenancy.quota_of(conf, stage, v["username"]), conf.platform.mesh
    cpu = pods * (Decimal(str(v["cpu"])) + quantity.cpu_cores(mesh.sidecar_cpu))
    memory = pods * (quantity.memory_bytes(v["memory"]) + quantity.memory_bytes(mesh.sidecar_memory))
    count_field = stage.replicas if isinstance(stage.replicas, str) else None
    asked = [("cpu", f"{cpu.normalize():f} cpu", cpu > quantity.cpu_cores(quota.cpu), quota.cpu),
             ("memory", quantity.format_gib(memory), memory > quantity.memory_bytes(quota.memory), quota.memory),
             ("gpu_num", f"{pods * v['gpu_num']} GPUs", pods * v["gpu_num"] > quota.gpus, quota.gpus),
             (count_field or "replicas", f"{pods} pods", pods > quota.pods, f"{quota.pods} pods")]
    for name, amount, over, most_held in asked:
        if over:  # the lever: max_replicas where the autoscaler's most is what overflows, else the stage's replicas
            #       where value.py sets them (ab_replicas), else the amount
            autoscaled = stage.production and stage.autoscale and v["max_replicas"] > replicas
            field = "max_replicas" if autoscaled else count_field or name
            also = f" or {name}" if field != name else ""
            yield field, (f"stage {stage.name}'s {pods} pods ({how}, each with its mesh sidecar) ask {amount}, more "
                          f"than team {v['username']}'s namespace {stage.namespace_for(v['username'])} may hold at "
                          f"once ({most_held}: {where}); lower {field}{also}")


def _replicas(v: dict, stage: Stage) -> int:
    replicas = stage.replicas if isinstance(stage.replicas, int) else v.get(stage.replicas)
    return replicas if isinstance(replicas, int) else 1


def _node_problems(v: dict, conf: Conf, region: Region):
    """Yield what keeps the pod off every node of the region's pool: cpu, memory, GPUs, GPU memory."""
    pool = region.node_pools.gpu if v["gpu_num"] else region.node_pools.cpu
    where = f"a {'GPU' if v['gpu_num'] else 'CPU'} node of region {region.name}"
    cpu = Decimal(str(v["cpu"])) + quantity.cpu_cores(conf.platform.mesh.sidecar_cpu)
    memory = quantity.memory_bytes(v["memory"]) + quantity.memory_bytes(conf.platform.mesh.sidecar_memory)
    if cpu > quantity.cpu_cores(pool.allocatable.cpu):
        yield "cpu", (f"is {v['cpu']}; with the mesh sidecar the pod asks {cpu.normalize():f} cores, more than {where} "
                      f"can allocate ({pool.allocatable.cpu}): it would stay Pending; lower cpu")
    if memory > quantity.memory_bytes(pool.allocatable.memory):
        yield "memory", (f"is {v['memory']}; with the mesh sidecar the pod asks {quantity.format_gib(memory)}, more "
                         f"than {where} can allocate ({pool.allocatable.memory}): it would stay Pending; lower memory")
    if v["gpu_num"] > pool.allocatable.gpus:
        yield "gpu_num", f"is {v['gpu_num']}, more GPUs than {where} has ({pool.allocatable.gpus}); lower gpu_num"
    per_gpu = v["gpu_memory"] * v["ins_num_per_gpu"]
    if v["gpu_num"] and per_gpu > region.gpu.memory_gib:
        yield "gpu_memory", (f"is {v['gpu_memory']} GiB per instance, {per_gpu} GiB for the {v['ins_num_per_gpu']} "
                             f"instance(s) on one GPU: more than one {region.gpu.resource} of region {region.name} "
                             f"offers ({region.gpu.memory_gib} GiB); lower gpu_memory or ins_num_per_gpu")
    if v["gpu_num"] and region.gpu.memory_resource and not v["gpu_memory"]:
        yield "gpu_memory", (f"is 0, but region {region.name} shares GPUs by memory ({region.gpu.memory_resource}): "
                             f"set gpu_memory to the GiB each instance needs")


def _route_problems(v: dict, conf: Conf, existing: list[routing.Route]):
    ours = [routing.Route(v["service_name"], stage.ingress_host, match)
            for stage in conf.stages.values()
            for match in routing.service_matches(stage.public_path(v["service_name"], v["username"]))]
    reported = set()
    for mine, theirs in routing.conflicts(ours, existing):
        if theirs.owner not in reported:
            reported.add(theirs.owner)
            yield "service_name", (f"{v['service_name']!r}: route {mine.match.kind} {mine.match.value} on "
                                   f"{mine.host} can share paths with {theirs.match.kind} {theirs.match.value} "
                                   f"served by {theirs.owner}; choose another service_name")
