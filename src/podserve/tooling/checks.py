"""Checks on rendered manifests, run before anything is written.

They read the parsed documents, not the template context, so a template mistake is caught
whatever caused it: object names and labels, selectors that reach the pods, replicas
versus an HPA, probe and shutdown budgets, the environment the server will read back,
Pod Security "restricted", and routes that can never catch another service's traffic.
Each problem names the stage and object and says what is wrong.
"""

from __future__ import annotations

import json
import re

from podserve import routes
from podserve.settings import ServingSettings, SettingsError
from podserve.tooling import release, rollout, routing, tenancy
from podserve.tooling.conf import Conf, Stage
from podserve.tooling.manifests import shutdown_seconds
from podserve.tooling.valuefile import Problem, ValueFileError
from podserve.tooling.values import DNS_1035_LABEL, ServiceValues

#: Used with fullmatch: match's `$` also matches before a trailing newline.
_LABEL_NAME = re.compile(r"([A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?)?")
_PREFIX = re.compile(r"[a-z0-9]([-a-z0-9.]*[a-z0-9])?")
#: What every stage has exactly one of, besides what runs its pods (rollout.workload_kind: a production stage's Rollout
#: with its AnalysisTemplate, another stage's Deployment).
ONE_EACH = ("Service", "VirtualService", "DestinationRule", "PodDisruptionBudget", "PodMonitor")
_SAFE_VOLUMES = {"configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim",
                 "projected", "secret"}


class ManifestError(ValueFileError):
    """Rendered manifests fail a check; nothing was written."""


def check_stage(docs: list[dict], values: ServiceValues, conf: Conf, stage: Stage) -> list[Problem]:
    """Return every problem with one stage's rendered documents."""
    problems: list[Problem] = []
    say = reporter(stage, problems)
    namespace = stage.namespace_for(values["username"])
    kind = rollout.workload_kind(stage)
    own = (kind, "AnalysisTemplate") if stage.production else (kind,)
    by_kind = documents_by_kind(docs, stage, namespace, (*own, *ONE_EACH), "the stage", say)
    if problems:
        return problems
    deployment = by_kind[kind][0]
    check_selectors(_selectors(by_kind, kind), deployment, say)
    _check_replicas(deployment, by_kind.get("ScaledObject", []), values.replicas_for(stage), say, kind)
    if by_kind.get("HorizontalPodAutoscaler"):
        say("HorizontalPodAutoscaler", "KEDA makes the stage's HPA from its ScaledObject (one mechanism): render none")
    _check_triggers(by_kind.get("ScaledObject", []), conf, namespace, say)
    pod = deployment["spec"]["template"]
    _check_pod(pod, values, conf, stage, say, kind)
    _check_pod_security(pod["spec"], stage, say, kind)
    _check_mesh(by_kind, conf, values["username"], stage, namespace, say)
    return problems


def reporter(stage: Stage, problems: list[Problem]):
    """Return `say(where, message)`, which adds a Problem in `stage` to `problems`."""
    return lambda where, message: problems.append(Problem(f"{stage.name}: {where}", message))


def documents_by_kind(docs: list[dict], stage: Stage, namespace: str, one_each: tuple[str, ...], what: str,
                      say) -> dict[str, list[dict]]:
    """Group `docs` by kind, checking each one's metadata (in the team's `namespace` of the stage) and that
    `what` has exactly one of each kind in `one_each`."""
    by_kind: dict[str, list[dict]] = {}
    for doc in docs:
        by_kind.setdefault(doc.get("kind"), []).append(doc)
        _check_metadata(doc, namespace, say)
    for kind in one_each:
        if len(by_kind.get(kind, [])) != 1:
            say(kind, f"{what} must have exactly one, not {len(by_kind.get(kind, []))}")
    return by_kind


def check_selectors(selectors, deployment: dict, say) -> None:
    """Say so for every (document, selector) whose selector is empty or does not select `deployment`'s pods."""
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    for doc, selector in selectors:
        if not selector or any(pod_labels.get(k) != v for k, v in selector.items()):
            say(doc["kind"], f"selector {selector} does not select the {deployment['kind']}'s pods ({pod_labels})")


def check_routes(rendered: dict[str, list[dict]]) -> list[Problem]:
    """Return a problem for every route that is not exact or "/"-ended prefix, or shares paths with another stage's."""
    problems = []
    ours = {stage: [routing.Route(stage, r.host, r.match) for doc in docs if doc["kind"] == "VirtualService"
                    for r in routing.routes_of(doc)] for stage, docs in rendered.items()}
    flat = [route for stage_routes in ours.values() for route in stage_routes]
    for a, b in routing.conflicts(flat, flat):
        if a.owner < b.owner:
            problems.append(Problem(f"{a.owner}: VirtualService", f"{a.match.kind} {a.match.value} shares paths with "
                                    f"stage {b.owner}'s {b.match.kind} {b.match.value} on {a.host}"))
    for route in flat:
        if route.match.kind == "prefix" and not route.match.value.endswith("/"):
            problems.append(Problem(f"{route.owner}: VirtualService", f"prefix {route.match.value} does not end in "
                                    "'/': it would also catch services whose names start the same"))
        if route.match.kind == "regex":
            problems.append(Problem(f"{route.owner}: VirtualService", "routes use exact and prefix matches only"))
    return problems


def _check_metadata(doc: dict, namespace: str, say) -> None:
    meta = doc.get("metadata") or {}
    where = f"{doc.get('kind')} {meta.get('name')}"
    if not DNS_1035_LABEL.fullmatch(str(meta.get("name", ""))) or len(meta["name"]) > 63:
        say(where, "the name must be a DNS-1035 label of at most 63 characters")
    if meta.get("namespace") != namespace:
        say(where, f"namespace {meta.get('namespace')!r} is not the team's of the stage, {namespace!r}")
    for labels in (meta.get("labels") or {}, (((doc.get("spec") or {}).get("template") or {}).get("metadata") or {})
                   .get("labels") or {}):
        for key, value in labels.items():
            prefix, _, name = key.rpartition("/")
            if (prefix and not _PREFIX.fullmatch(prefix)) or not name or not _LABEL_NAME.fullmatch(name) \
                    or len(name) > 63:
                say(where, f"label key {key!r} is not a valid label key")
            if not isinstance(value, str) or not _LABEL_NAME.fullmatch(value) or len(value) > 63:
                say(where, f"label {key}={value!r} is not a valid label value (a string of at most 63 characters)")


def _selectors(by_kind: dict[str, list[dict]], workload: str):
    yield by_kind[workload][0], by_kind[workload][0]["spec"]["selector"]["matchLabels"]
    yield by_kind["Service"][0], by_kind["Service"][0]["spec"].get("selector")
    for kind in ("PodDisruptionBudget", "PodMonitor"):
        yield by_kind[kind][0], by_kind[kind][0]["spec"]["selector"].get("matchLabels")


def _check_replicas(deployment: dict, scalers: list[dict], replicas: int, say, owner: str = "Deployment") -> None:
    fixed = deployment["spec"].get("replicas")
    if len(scalers) > 1:
        say("ScaledObject", "one stage has at most one")
    for scaled in scalers:
        target = scaled["spec"]["scaleTargetRef"]
        if (target.get("kind"), target.get("name")) != (deployment["kind"], deployment["metadata"]["name"]):
            say("ScaledObject", f"scales {target}, not the stage's {deployment['kind']}")
        if fixed is not None:
            say(owner, "sets spec.replicas while KEDA scales it: the two would fight; leave replicas to KEDA")
        if scaled["spec"].get("minReplicaCount") != replicas:
            say("ScaledObject", f"minReplicaCount {scaled['spec'].get('minReplicaCount')} is not the stage's {replicas}")
    if not scalers and fixed != replicas:
        say(owner, f"spec.replicas is {fixed!r}, not the stage's {replicas}")


def _check_triggers(scalers: list[dict], conf: Conf, namespace: str, say) -> None:
    """An online stage scales on its own pods' series from the region's Prometheus (what podserve-autoscalers admits)."""
    address = conf.platform.monitoring.prometheus_address
    for scaled in scalers:
        for trigger in scaled["spec"].get("triggers") or []:
            meta = trigger.get("metadata") or {}
            if trigger.get("type") != "prometheus" or meta.get("serverAddress") != address \
                    or f'namespace="{namespace}"' not in meta.get("query", ""):
                say("ScaledObject", f"an online stage's triggers must be prometheus, at {address}, on series of "
                    f"namespace {namespace} only")


def _check_pod(pod: dict, values: ServiceValues, conf: Conf, stage: Stage, say, owner: str = "Deployment") -> None:
    spec = pod["spec"]
    server = next((c for c in spec["containers"] if c["name"] == "server"), None)
    if server is None:
        say(owner, "has no container named server")
        return
    probes = {kind: server.get(kind) or {} for kind in ("startupProbe", "readinessProbe", "livenessProbe")}
    wanted = {"startupProbe": routes.PING_PATH, "readinessProbe": routes.PING_PATH, "livenessProbe": routes.LIVE_PATH}
    for kind, probe in probes.items():
        if (probe.get("httpGet") or {}).get("path") != wanted[kind]:
            say(owner, f"{kind} must GET {wanted[kind]}")
        if "initialDelaySeconds" in probe:
            say(owner, f"{kind} sets initialDelaySeconds; the startup probe's budget replaces it")
    startup = probes["startupProbe"]
    budget = startup.get("periodSeconds", 10) * startup.get("failureThreshold", 3)
    if budget < values["init_delay_second"]:
        say(owner, f"the startup probe allows {budget}s, less than init_delay_second = "
            f"{values['init_delay_second']}: the pod would restart while loading")
    stop = shutdown_seconds(values, conf)
    grace = spec.get("terminationGracePeriodSeconds", 30)
    if grace <= stop:
        say(owner, f"terminationGracePeriodSeconds {grace} is not above preStop + the runtime's "
            f"bound from SIGTERM to exit ({stop}s, podserve.stop_bounds): admitted requests would be killed")
    try:
        proxy = json.loads(pod["metadata"].get("annotations", {}).get("proxy.istio.io/config", "{}"))
    except ValueError:
        proxy = {}
    drain = re.fullmatch(r"(\d+)s", str(proxy.get("terminationDrainDuration", "")))
    if proxy.get("holdApplicationUntilProxyStarts") is not True or not drain or not stop <= int(drain[1]) < grace:
        say(owner, f"proxy.istio.io/config must hold the app until the proxy starts and drain the proxy "
            f"for {stop}s to {grace - 1}s, after the app; it is {proxy}")
    env = {item["name"]: item.get("value", "") for item in server.get("env") or []}
    try:
        if ServingSettings.from_env(env) != values.serving_settings():
            say(owner, "the server would read settings from its env that differ from value.py's")
    except SettingsError as exc:
        say(owner, f"the server would refuse its env: {exc}")
    limits = server.get("resources", {}).get("limits", {})
    gpus = conf.region_of(stage).gpu.resource
    if int(limits.get(gpus, 0)) != values["gpu_num"]:
        say(owner, f"limits give {limits.get(gpus, 0)} {gpus}, value.py's gpu_num is {values['gpu_num']}")


def _check_pod_security(spec: dict, stage: Stage, say, owner: str = "Deployment") -> None:
    """Pod Security "restricted", except the hostPort that service discovery needs where conf allows it."""
    context = spec.get("securityContext") or {}
    where = owner
    for key in ("hostNetwork", "hostPID", "hostIPC"):
        if spec.get(key):
            say(where, f"{key} is forbidden by Pod Security 'restricted'")
    if (context.get("seccompProfile") or {}).get("type") not in ("RuntimeDefault", "Localhost"):
        say(where, "the pod must use the RuntimeDefault seccomp profile")
    for volume in spec.get("volumes") or []:
        if not set(volume) - {"name"} <= _SAFE_VOLUMES:
            say(where, f"volume {volume.get('name')} is of a type Pod Security 'restricted' forbids")
    for container in spec.get("containers", []) + spec.get("initContainers", []):
        sc = container.get("securityContext") or {}
        name = f"container {container['name']}"
        if sc.get("allowPrivilegeEscalation") is not False or sc.get("privileged"):
            say(where, f"{name} must set allowPrivilegeEscalation: false and not be privileged")
        if not (sc.get("runAsNonRoot") or context.get("runAsNonRoot")) or 0 in (sc.get("runAsUser"), context.get("runAsUser")):
            say(where, f"{name} must run as non-root")
        capabilities = sc.get("capabilities") or {}
        if "ALL" not in (capabilities.get("drop") or []) or set(capabilities.get("add") or []) - {"NET_BIND_SERVICE"}:
            say(where, f"{name} must drop ALL capabilities")
        if sc.get("readOnlyRootFilesystem") is not True:
            say(where, f"{name} must have a read-only root filesystem")
        for port in container.get("ports") or []:
            if port.get("hostPort") and not stage.service_discovery:
                say(where, f"{name} uses hostPort {port['hostPort']}, which stage {stage.name} does not allow")


def _check_mesh(by_kind: dict[str, list[dict]], conf: Conf, team: str, stage: Stage, namespace: str, say) -> None:
    service, vs, dr = by_kind["Service"][0], by_kind["VirtualService"][0], by_kind["DestinationRule"][0]
    for problem in tenancy.destination_problems(vs, conf, team, stage):
        say("VirtualService", problem)
    fqdn = f"{service['metadata']['name']}.{namespace}.svc.cluster.local"
    ports = {p["port"] for p in service["spec"]["ports"]}
    if dr["spec"]["host"] != fqdn:
        say("DestinationRule", f"host {dr['spec']['host']} is not the Service {fqdn}")
    if (dr["spec"].get("trafficPolicy") or {}).get("loadBalancer", {}).get("simple") != "LEAST_REQUEST":
        say("DestinationRule", "must balance by LEAST_REQUEST")
    if vs["spec"].get("hosts") != [stage.ingress_host] or vs["spec"].get("gateways") != [stage.gateway]:
        say("VirtualService", f"must bind host {stage.ingress_host} on gateway {stage.gateway}")
    subsets = {s.get("name"): s.get("labels") for s in dr["spec"].get("subsets") or []}
    if stage.track == "grey" and subsets != {release.MIRROR_SUBSET: {release.MIRROR_LABEL: release.MIRROR_LABEL_VALUE}}:
        say("DestinationRule", f"must define the one subset {release.MIRROR_SUBSET} by the label {release.MIRROR_LABEL}"
            f"={release.MIRROR_LABEL_VALUE}, not {subsets}: production's mirror reaches grey's pods of the protected "
            "default branch only")
    if stage.production and subsets != {name: None for name in release.SUBSETS}:
        say("DestinationRule", f"must define the subsets {', '.join(release.SUBSETS)} without labels (Argo Rollouts "
            f"writes each one's pod template hash), not {subsets}: the route always goes to them by weight")
    for http in vs["spec"].get("http") or []:
        for route in http.get("route") or []:
            destination = route["destination"]
            if destination["host"] != fqdn or destination.get("port", {}).get("number") not in ports:
                say("VirtualService", f"route {http.get('name')} goes to {destination}, not the Service {fqdn}")
            subset = destination.get("subset")
            if (subset not in subsets) if stage.production else subset is not None:
                say("VirtualService", f"route {http.get('name')} goes to subset {destination.get('subset')!r}, not "
                    f"one the DestinationRule defines ({', '.join(subsets) or 'none here'})")
        weights = [r.get("weight") for r in http.get("route") or []]
        if len(weights) > 1 and sum(w or 0 for w in weights) != 100:
            say("VirtualService", f"route {http.get('name')} weighs its destinations {weights}: they must add up to 100")
        _check_mirror(http, conf, team, stage, say)


def _check_mirror(http: dict, conf: Conf, team: str, stage: Stage, say) -> None:
    """A route may mirror only production's traffic, only to the service's own grey, at most the platform's share."""
    if "mirror" not in http and "mirrorPercentage" not in http:
        return
    grey = next((s for s in conf.stages.values() if s.track == "grey" and s.region == stage.region), None)
    name = http["route"][0]["destination"]["host"].split(".")[0] if http.get("route") else ""
    wanted = f"{name}.{grey.namespace_for(team)}.svc.cluster.local" if grey else None
    host = (http.get("mirror") or {}).get("host")
    subset = (http.get("mirror") or {}).get("subset")
    percent = (http.get("mirrorPercentage") or {}).get("value")
    most = conf.platform.limits.max_grey_mirror_percent
    if not stage.production or host != wanted:
        say("VirtualService", f"route {http.get('name')} mirrors to {host!r}: only a production stage mirrors, and "
            f"only to its own grey ({wanted or 'no grey in this region'})")
    if subset != release.MIRROR_SUBSET:
        say("VirtualService", f"route {http.get('name')} mirrors to subset {subset!r}: only to grey's subset "
            f"{release.MIRROR_SUBSET} (its pods of the protected default branch)")
    if not isinstance(percent, (int, float)) or not 0 < percent <= most:
        say("VirtualService", f"route {http.get('name')} mirrors {percent!r}%: between 0 and {most} "
            "(conf/platform.yaml limits.max_grey_mirror_percent)")
