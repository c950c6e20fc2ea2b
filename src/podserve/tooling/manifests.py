"""A service's manifests per stage: the names and numbers templates need, then the templates.

`workload` derives everything a stage's templates use from value.py and conf/ (replicas,
the image, env, thread counts, probe and shutdown budgets), so that templates hold the
shape of each object and no arithmetic. `render_stage` renders templates/ with it and
returns the parsed documents.
"""

from __future__ import annotations

import json
import math
from decimal import Decimal
from pathlib import Path

from podserve import routes
from podserve.settings import HTTP_PORT
from podserve.tooling import mesh_limits, quantity, routing, templating, tenancy
from podserve.tooling.conf import Conf, Stage
from podserve.tooling.deploy import budget
from podserve.tooling.values import AUTOSCALE_GAUGES, ServiceValues

TEMPLATES = ("deployment.yaml.j2", "service.yaml.j2", "virtualservice.yaml.j2", "destinationrule.yaml.j2",
             "poddisruptionbudget.yaml.j2", "podmonitor.yaml.j2", "horizontalpodautoscaler.yaml.j2")
#: Thread pools of the numeric libraries a model may load; each gets the instance's share.
THREAD_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMEXPR_NUM_THREADS")


def image_ref(values: ServiceValues, conf: Conf, stage: Stage, tag: str) -> str:
    """Return the stage's image: <registry>/<team>/<service>:<tag>."""
    return f"{conf.region_of(stage).registry}/{values['username']}/{values['service_name']}:{tag}"


def shutdown_seconds(values: ServiceValues, conf: Conf) -> int:
    """Return the longest a pod takes to stop: preStop sleep, drain window, then the longest request."""
    return (conf.platform.pod.prestop_sleep_seconds + math.ceil(values["drain_seconds"])
            + math.ceil(values["request_timeout_ms"] / 1000))


def workload(values: ServiceValues, conf: Conf, stage: Stage, image_tag: str) -> dict:
    """Return the template context of one stage of one service."""
    platform, region = conf.platform, conf.region_of(stage)
    gpu_num = values["gpu_num"]
    replicas = values.replicas_for(stage)
    labels = {"app.kubernetes.io/name": values["service_name"], "app.kubernetes.io/managed-by": "podserve",
              "service": values["service_name"], tenancy.TEAM_LABEL: values["username"], "stage": stage.name,
              "track": stage.track}
    instances = mesh_limits.instances_per_pod(values)
    threads = max(1, int(values["cpu"]) // instances)
    env = dict(values.serving_settings().to_env(), **{name: str(threads) for name in THREAD_ENV})
    stop = shutdown_seconds(values, conf)
    public_path = stage.public_path(values["service_name"], values["username"])
    namespace = stage.namespace_for(values["username"])
    return {
        "name": values["service_name"],
        "namespace": namespace,
        "labels": labels,
        "selector": {"service": values["service_name"], "stage": stage.name},
        "image": image_ref(values, conf, stage, image_tag),
        "replicas": replicas,
        "autoscale": _autoscale(values, stage, replicas),
        "env": [{"name": name, "value": env[name]} for name in sorted(env)],
        "resources": _resources(values, conf, stage),
        "pool": region.node_pools.gpu if gpu_num else region.node_pools.cpu,
        "host_port": values["host_port"] if values["use_srv"] and stage.service_discovery else None,
        "port": HTTP_PORT,
        "paths": {"ping": routes.PING_PATH, "live": routes.LIVE_PATH, "metrics": routes.METRICS_PATH,
                  "service": routes.service_path(values["service_name"])},
        "startup_failure_threshold": budget.startup_failure_threshold(values["init_delay_second"],
                                                                      platform.pod.probe_period_seconds),
        "progress_deadline_seconds": budget.progress_deadline_seconds(values["init_delay_second"],
                                                                      platform.pod.probe_period_seconds),
        "prestop_seconds": platform.pod.prestop_sleep_seconds,
        "grace_seconds": stop + platform.pod.grace_margin_seconds,
        "proxy_config": json.dumps({"holdApplicationUntilProxyStarts": True,
                                    "terminationDrainDuration": f"{stop}s"}, sort_keys=True),
        "priority_class": tenancy.priority_class(stage),
        "host": stage.ingress_host,
        "gateway": stage.gateway,
        "matches": [{"uri": {m.kind: m.value}} for m in routing.service_matches(public_path)],
        "fqdn": f"{values['service_name']}.{namespace}.svc.cluster.local",
        "route_timeout": _seconds(values["request_timeout_ms"] + platform.mesh.route_timeout_margin_ms),
        "connection_pool": mesh_limits.connection_pool(
            values, mesh_limits.most_pods(values, replicas, _autoscale(values, stage, replicas) is not None),
            platform.http.idle_timeout_seconds),
        "platform": platform,
    }


def render_stage(values: ServiceValues, conf: Conf, stage: Stage, image_tag: str,
                 templates: Path | None = None) -> list[dict]:
    """Render every template for one stage; return the parsed documents in template order."""
    env = templating.environment(templates or templating.default_templates_dir())
    context = {"w": workload(values, conf, stage, image_tag)}
    return [doc for name in TEMPLATES for doc in templating.render_documents(env, name, context)]


def _autoscale(values: ServiceValues, stage: Stage, replicas: int) -> dict | None:
    if not (stage.autoscale and values["max_replicas"] > replicas):
        return None
    return {"min": replicas, "max": values["max_replicas"], "metric": AUTOSCALE_GAUGES[values["autoscale_metric"]],
            "target": quantity.format_millis(Decimal(str(values["autoscale_target"])))}


def _resources(values: ServiceValues, conf: Conf, stage: Stage) -> dict:
    region = conf.region_of(stage)
    amounts = {"cpu": quantity.format_millis(Decimal(str(values["cpu"]))), "memory": values["memory"]}
    limits = dict(amounts)
    if values["gpu_num"]:
        limits[region.gpu.resource] = str(values["gpu_num"])
        if region.gpu.memory_resource:
            limits[region.gpu.memory_resource] = str(values["gpu_memory"] * values["ins_num_per_gpu"] * 1024)
    return {"requests": amounts, "limits": limits}


def _seconds(ms: int) -> str:
    return f"{(Decimal(ms) / 1000).normalize():f}s"
