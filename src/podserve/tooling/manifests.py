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
from podserve.stop_bounds import drain_bound_seconds
from podserve.tooling import (analysis_template, mesh_limits, quantity, release, rollout, routing, scaling, templating,
                              tenancy)
from podserve.tooling.conf import Conf, Stage
from podserve.tooling.deploy import budget
from podserve.tooling.values import VERDICT_FIELDS, ServiceValues

TEMPLATES = ("deployment.yaml.j2", "service.yaml.j2", "virtualservice.yaml.j2", "destinationrule.yaml.j2",
             "poddisruptionbudget.yaml.j2", "podmonitor.yaml.j2", "scaledobject.yaml.j2")
#: Thread pools of the numeric libraries a model may load; each gets the instance's share.
THREAD_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMEXPR_NUM_THREADS")


def image_ref(values: ServiceValues, conf: Conf, stage: Stage, tag: str) -> str:
    """Return the stage's image: <registry>/<team>/<service>:<tag>."""
    return f"{conf.region_of(stage).registry}/{values['username']}/{values['service_name']}:{tag}"


def shutdown_seconds(values: ServiceValues, conf: Conf) -> int:
    """Return the longest a pod takes to stop: the preStop sleep, then the runtime's own bound from SIGTERM to its
    exit (podserve.stop_bounds: the drain window, every admitted request answered, connections closed, the other
    processes ended), taken for the split layout, the longer one (a GPU pod runs it)."""
    return conf.platform.pod.prestop_sleep_seconds + math.ceil(drain_bound_seconds(values.serving_settings(), True))


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
    if not gpu_num:  # else the CUDA base image's NVIDIA_VISIBLE_DEVICES=all hands it every GPU of its node
        env[tenancy.GPU_VISIBILITY_ENV] = tenancy.NO_GPU
    stop = shutdown_seconds(values, conf)
    public_path = stage.public_path(values["service_name"], values["username"])
    namespace = stage.namespace_for(values["username"])
    selector = {"service": values["service_name"], "stage": stage.name}
    fqdn = f"{values['service_name']}.{namespace}.svc.cluster.local"
    scaler = scaling.online_scaler(values, conf, stage, replicas)
    most_pods = mesh_limits.most_pods(values, replicas, scaler is not None)
    return {
        "name": values["service_name"],
        "namespace": namespace,
        "labels": labels,
        "selector": selector,  # every pod of the stage: the Service, PDB, PodMonitor and topology spread select it
        # the pod labels every series carries (the PodMonitor's podTargetLabels); a Rollout's pods' hash among them
        "pod_target_labels": [tenancy.TEAM_LABEL, "stage", release.TRACK_LABEL, analysis_template.HASH_POD_LABEL],
        # what an autoscaler scales: a production stage's Rollout (tooling/rollout.py), else the Deployment
        "scale_target": ({"apiVersion": rollout.API_VERSION, "kind": "Rollout"} if stage.production
                         else {"apiVersion": "apps/v1", "kind": "Deployment"}),
        "release": {release.RELEASE_ANNOTATION: release.release_policy(values["canary_steps"], {
            key: values[name] for name, (key, _) in VERDICT_FIELDS.items()})} if stage.production else None,
        "image": image_ref(values, conf, stage, image_tag),
        "replicas": replicas,
        "scaler": scaler,  # KEDA's ScaledObject (scaling.py); the workload then sets no replicas
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
        "routes": _routes(values, conf, stage, public_path, fqdn),
        "fqdn": fqdn,
        "route_timeout": _seconds(values["request_timeout_ms"] + platform.mesh.route_timeout_margin_ms),
        "connection_pool": mesh_limits.connection_pool(values, most_pods, platform.http.idle_timeout_seconds),
        "subsets": _subsets(values, conf, most_pods) if stage.production else _grey_subsets(stage),
        "platform": platform,
    }


def _routes(values: ServiceValues, conf: Conf, stage: Stage, public_path: str, fqdn: str) -> list[dict]:
    """The VirtualService's HTTP routes: the exact path and its sub-paths, each rewritten to the pod's route. In
    production each goes to the subsets by weight (stable 100: Argo Rollouts sets a canary's on these routes; no
    header reaches the canary, so nobody outside steers or biases its sample); hk's mirror grey_mirror_percent of them
    to grey."""
    name, port, service_path = values["service_name"], HTTP_PORT, routes.service_path(values["service_name"])
    found = []
    mirror = _mirror(values, conf, stage)
    for match in routing.service_matches(public_path):
        kind = "exact" if match.kind == "exact" else "subpaths"
        uri = {"uri": {match.kind: match.value}}
        rewrite = service_path if match.kind == "exact" else service_path + "/"
        if not stage.production:
            found.append({"name": f"{name}-{kind}", "match": uri, "rewrite": rewrite, "mirror": None,
                          "destinations": [{"destination": {"host": fqdn, "port": {"number": port}}}]})
            continue
        found.append({"name": f"{name}-{kind}", "match": uri, "rewrite": rewrite, "mirror": mirror,
                      "destinations": [{"destination": {"host": fqdn, "port": {"number": port}, "subset": subset},
                                        "weight": weight}
                                       for subset, weight in zip(release.SUBSETS, release.weights(0))]})
    return found


def _mirror(values: ServiceValues, conf: Conf, stage: Stage) -> dict | None:
    """{"destination", "percent"}: where and how much of a production stage's traffic is copied: grey's Service, when grey runs in the stage's
    region (hk) and value.py sets grey_mirror_percent; else None."""
    grey = next((s for s in conf.stages.values() if s.track == "grey" and s.region == stage.region), None)
    if grey is None or not values["grey_mirror_percent"]:
        return None
    host = f"{values['service_name']}.{grey.namespace_for(values['username'])}.svc.cluster.local"
    return {"destination": {"host": host, "subset": release.MIRROR_SUBSET, "port": {"number": HTTP_PORT}},
            "percent": float(values["grey_mirror_percent"])}


def _grey_subsets(stage: Stage) -> list[dict]:
    """grey's one subset: its pods of the protected default branch's code, where production's mirror goes."""
    if stage.track != "grey":
        return []
    return [{"name": release.MIRROR_SUBSET, "labels": {release.MIRROR_LABEL: release.MIRROR_LABEL_VALUE}}]


def _subsets(values: ServiceValues, conf: Conf, most_pods: int) -> list[dict]:
    """The production DestinationRule's subsets, each with a connection pool for its own pods: stable's for the
    stage's most pods, the canary's for its most (its largest step of them). No labels: Argo Rollouts writes each
    subset's rollouts-pod-template-hash, which alone tells them apart. Not `track`: Argo moves a promoted ReplicaSet's
    pods from track canary to stable only after it switched the subsets' hashes, so a subset selecting both had no
    pod meanwhile (measured on the real node under 32 clients: 23 of 4,983 requests answered 503 "no healthy
    upstream" in one update)."""
    idle = conf.platform.http.idle_timeout_seconds
    steps = values["canary_steps"]
    canary_pods = release.canary_replicas(max(steps), most_pods) if steps else 1
    return [{"name": subset,
             "trafficPolicy": {"connectionPool": mesh_limits.connection_pool(values, pods, idle)}}
            for subset, pods in ((release.STABLE, most_pods), (release.CANARY, canary_pods))]


def render_stage(values: ServiceValues, conf: Conf, stage: Stage, image_tag: str,
                 templates: Path | None = None) -> list[dict]:
    """Render every template for one stage; return the parsed documents in template order."""
    env = templating.environment(templates or templating.default_templates_dir())
    context = {"w": workload(values, conf, stage, image_tag)}
    return [doc for name in TEMPLATES for doc in templating.render_documents(env, name, context)]


def _resources(values: ServiceValues, conf: Conf, stage: Stage) -> dict:
    region = conf.region_of(stage)
    amounts = {"cpu": quantity.format_millis(Decimal(str(values["cpu"]))), "memory": values["memory"],
               "ephemeral-storage": conf.platform.pod.ephemeral_storage}  # the quota counts it: /tmp and the logs
    limits = dict(amounts)
    if values["gpu_num"]:
        limits[region.gpu.resource] = str(values["gpu_num"])
        if region.gpu.memory_resource:
            limits[region.gpu.memory_resource] = str(values["gpu_memory"] * values["ins_num_per_gpu"] * 1024)
    return {"requests": amounts, "limits": limits}


def _seconds(ms: int) -> str:
    return f"{(Decimal(ms) / 1000).normalize():f}s"
