"""An offline service's manifests per stage: Kafka workers, scaled by KEDA on consumer lag.

An offline service (`mode = "offline"` in value.py) has no Service, VirtualService or
DestinationRule, and no ab stage: each production region and grey get a Deployment of
workers (`python -m podserve.runtime.offline`, probes and /metrics on the pod's HTTP port),
its PodDisruptionBudget and PodMonitor, and always a KEDA ScaledObject scaling on the
consumer group's lag between the stage's replicas and max_replicas (lag_target per replica).
Grey has a stream of its own: it reads, joins and writes only `<team>.grey.*` (grey runs any branch's code; production's
stream is production's data, kafka_access). The Kafka bootstrap
servers and protocol come from the region's ConfigMap `podserve-kafka`, the principal and its password from the
namespace's Secret `podserve-kafka-credentials` (the platform writes both; never the repo), and KEDA reads the same
principal through the namespace's TriggerAuthentication `podserve-kafka` (podserve.tooling.kafka_acls).
"""

from __future__ import annotations

from pathlib import Path

from podserve import kafka_access, routes
from podserve.offline_settings import BOOTSTRAP_ENV, OfflineSettings
from podserve.settings import ServingSettings, SettingsError
from podserve.tooling import checks, manifests, scaling, templating, tenancy
from podserve.tooling.conf import Conf, Stage
from podserve.tooling.valuefile import Problem, ValueFileError
from podserve.tooling.values import ServiceValues

TEMPLATES = ("offline-deployment.yaml.j2", "poddisruptionbudget.yaml.j2", "podmonitor.yaml.j2",
             "scaledobject.yaml.j2")
#: The ConfigMap (and key) each region's cluster provides with its Kafka bootstrap servers, and its protocol's key.
KAFKA_CONFIGMAP = {"name": "podserve-kafka", "key": "bootstrap"}
KAFKA_PROTOCOL_KEY = "security_protocol"
#: The TriggerAuthentication (per team namespace, written by the platform beside the Secret) KEDA's trigger names.
KAFKA_TRIGGER_AUTHENTICATION = "podserve-kafka"
#: Where the worker's Kafka connection comes from: {variable: valueFrom}, the cluster's objects, never values.
KAFKA_ENV = {
    BOOTSTRAP_ENV: {"configMapKeyRef": dict(KAFKA_CONFIGMAP)},
    kafka_access.SECURITY_PROTOCOL_ENV: {"configMapKeyRef": {"name": KAFKA_CONFIGMAP["name"], "key": KAFKA_PROTOCOL_KEY}},
    kafka_access.USERNAME_ENV: {"secretKeyRef": {"name": kafka_access.CREDENTIALS_SECRET,
                                                 "key": kafka_access.USERNAME_KEY}},
    kafka_access.PASSWORD_ENV: {"secretKeyRef": {"name": kafka_access.CREDENTIALS_SECRET,
                                                 "key": kafka_access.PASSWORD_KEY}},
}
#: What the worker's container runs instead of the image's default (the HTTP server).
COMMAND = ["python", "-m", "podserve.runtime.offline"]
#: Stages of this track get no offline worker: an A/B copy of a consumer would split the stream.
SKIPPED_TRACKS = ("ab",)
GREY_TRACK = "grey"
ONE_EACH = ("Deployment", "PodDisruptionBudget", "PodMonitor", "ScaledObject")
NEVER = ("Service", "VirtualService", "DestinationRule", "HorizontalPodAutoscaler")


def stages(conf: Conf) -> list[str]:
    """The stages an offline service is deployed to: production per region, and grey; no ab."""
    return [name for name, stage in conf.stages.items() if stage.track not in SKIPPED_TRACKS]


def worker_settings(values: ServiceValues, stage: Stage) -> OfflineSettings:
    return values.worker_settings(grey=stage.track == GREY_TRACK)


def workload(values: ServiceValues, conf: Conf, stage: Stage, image_tag: str) -> dict:
    """The online template context, less the mesh, plus the worker's command, env and scaler."""
    w = manifests.workload(values, conf, stage, image_tag)
    worker = worker_settings(values, stage)
    env = {**{item["name"]: item["value"] for item in w["env"]}, **worker.to_env()}
    replicas = values.replicas_for(stage)
    w.update(
        labels=dict(w["labels"], **{tenancy.MODE_LABEL: tenancy.OFFLINE_MODE}),  # the pods the brokers take
        command=COMMAND,
        env=[{"name": name, "value": env[name]} for name in sorted(env)]
        + [{"name": name, "valueFrom": source} for name, source in KAFKA_ENV.items()],
        scale_target={"apiVersion": "apps/v1", "kind": "Deployment"},  # a worker is never a Rollout
        scaler=scaling.scaler(conf, replicas, max(replicas, values["max_replicas"] if stage.autoscale else replicas),
                              [_lag_trigger(values, worker)]),
    )
    return w


def _lag_trigger(values: ServiceValues, worker: OfflineSettings) -> dict:
    """KEDA's kafka trigger on the worker's consumer group's lag, lag_target per replica, as the team's principal."""
    return {"type": "kafka", "authenticationRef": {"name": KAFKA_TRIGGER_AUTHENTICATION},
            "metadata": {"bootstrapServersFromEnv": BOOTSTRAP_ENV, "topic": worker.source_topic,
                         "consumerGroup": worker.consumer_group, "lagThreshold": str(values["lag_target"]),
                         "offsetResetPolicy": "earliest"}}


def render_stage(values: ServiceValues, conf: Conf, stage: Stage, image_tag: str,
                 templates: Path | None = None) -> list[dict]:
    """Render every offline template for one stage; return the parsed documents in template order."""
    if values["sink_file"]:
        raise ValueFileError("value.py", [Problem("sink_file", "is for one-off local jobs (make serve); a deployed "
                                                  "worker's files would vanish with its pod: set sink_topic instead")])
    env = templating.environment(templates or templating.default_templates_dir())
    context = {"w": workload(values, conf, stage, image_tag)}
    return [doc for name in TEMPLATES for doc in templating.render_documents(env, name, context)]


def check_stage(docs: list[dict], values: ServiceValues, conf: Conf, stage: Stage) -> list[Problem]:
    """Return every problem with one offline stage's documents (the pod's security as checks.py sees it)."""
    problems: list[Problem] = []
    say = checks.reporter(stage, problems)
    by_kind = checks.documents_by_kind(docs, stage, stage.namespace_for(values["username"]), ONE_EACH,
                                       "an offline stage", say)
    for kind in NEVER:
        if by_kind.get(kind):
            say(kind, "an offline worker takes no traffic and KEDA scales it: remove it")
    if problems:
        return problems
    deployment, scaled = by_kind["Deployment"][0], by_kind["ScaledObject"][0]
    pod = deployment["spec"]["template"]
    checks.check_selectors(((doc, doc["spec"]["selector"].get("matchLabels")) for doc in
                            (deployment, by_kind["PodDisruptionBudget"][0], by_kind["PodMonitor"][0])), deployment, say)
    _check_scaler(deployment, scaled, values, stage, say)
    _check_worker(pod, values, stage, say)
    checks._check_pod_security(pod["spec"], stage, say)
    return problems


def _check_scaler(deployment: dict, scaled: dict, values: ServiceValues, stage: Stage, say) -> None:
    spec = scaled["spec"]
    replicas = values.replicas_for(stage)
    if "replicas" in deployment["spec"]:
        say("Deployment", "sets spec.replicas while KEDA scales it: the two would fight; leave replicas to KEDA")
    if spec["scaleTargetRef"].get("name") != deployment["metadata"]["name"]:
        say("ScaledObject", f"scales {spec['scaleTargetRef']}, not the stage's Deployment")
    if spec.get("minReplicaCount") != replicas or not replicas <= spec.get("maxReplicaCount", 0):
        say("ScaledObject", f"scales between {spec.get('minReplicaCount')} and {spec.get('maxReplicaCount')}, "
            f"not from the stage's {replicas} replicas up")
    worker = worker_settings(values, stage)
    kafka = [t for t in spec["triggers"] if t.get("type") == "kafka"]
    wanted = {"topic": worker.source_topic, "consumerGroup": worker.consumer_group,
              "lagThreshold": str(values["lag_target"]), "bootstrapServersFromEnv": BOOTSTRAP_ENV}
    if len(kafka) != 1 or any(kafka[0]["metadata"].get(k) != v for k, v in wanted.items()):
        say("ScaledObject", f"must have one kafka trigger with {wanted}")
    elif (kafka[0].get("authenticationRef") or {}).get("name") != KAFKA_TRIGGER_AUTHENTICATION:
        say("ScaledObject", f"its kafka trigger must read the team's principal through the TriggerAuthentication "
            f"{KAFKA_TRIGGER_AUTHENTICATION} (authenticationRef)")


def _check_worker(pod: dict, values: ServiceValues, stage: Stage, say) -> None:
    server = next((c for c in pod["spec"]["containers"] if c["name"] == "server"), None)
    if server is None:
        say("Deployment", "has no container named server")
        return
    if server.get("command") != COMMAND:
        say("Deployment", f"the container must run {' '.join(COMMAND)}")
    wanted = {"startupProbe": routes.PING_PATH, "readinessProbe": routes.PING_PATH, "livenessProbe": routes.LIVE_PATH}
    for kind, path in wanted.items():
        if ((server.get(kind) or {}).get("httpGet") or {}).get("path") != path:
            say("Deployment", f"{kind} must GET {path} on the worker's port")
    env = {item["name"]: item.get("value", "") for item in server.get("env") or []}
    sources = {item["name"]: item.get("valueFrom") for item in server.get("env") or []}
    for name, source in KAFKA_ENV.items():
        if sources.get(name) != source:
            say("Deployment", f"{name} must come from {source} (the platform's objects in the namespace), never "
                f"from the repo")
    try:
        if ServingSettings.from_env(env) != values.serving_settings():
            say("Deployment", "the worker would read serving settings from its env that differ from value.py's")
        if OfflineSettings.from_env({**env, BOOTSTRAP_ENV: "from-the-configmap:9092"}) != OfflineSettings(
                **{**worker_settings(values, stage).__dict__, "kafka_bootstrap": "from-the-configmap:9092"}):
            say("Deployment", "the worker would read topics or group from its env that differ from value.py's")
    except SettingsError as exc:
        say("Deployment", f"the worker would refuse its env: {exc}")
