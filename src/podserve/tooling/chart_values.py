"""The platform chart's values for one region's cluster, written from conf/ so the two never drift.

    python -m podserve.tooling.chart_values hk > values-hk.yaml
    helm upgrade --install podserve-platform charts/podserve-platform -f values-hk.yaml

Namespaces and Gateways come from the stages that run in the region; what conf/ does not
hold (the deployer's identity, where dashboards go) keeps the chart's defaults.
"""

from __future__ import annotations

import dataclasses
import sys

import yaml

from podserve import kafka_access
from podserve.offline_settings import BOOTSTRAP_ENV
from podserve.tooling import quantity, scaling, tenancy
from podserve.tooling.conf import Conf, broker_ports, load_conf
from podserve.tooling.offline_manifests import KAFKA_CONFIGMAP, KAFKA_PROTOCOL_KEY
from podserve.tooling.valuefile import ValueFileError

#: The container port the templates name `http` (templates/deployment.yaml.j2): the only one a host port may map.
HTTP_PORT_NAME = "http"
#: Tolerations the API server itself adds to every pod (its DefaultTolerationSeconds admission plugin).
DEFAULT_TOLERATIONS = ({"key": "node.kubernetes.io/not-ready", "operator": "Exists", "effect": "NoExecute"},
                       {"key": "node.kubernetes.io/unreachable", "operator": "Exists", "effect": "NoExecute"})


def toleration_key(toleration: dict) -> str:
    """Return a toleration as the pod policies compare it: key|operator|value|effect (operator Equal by default);
    policies.yaml builds the same string from each toleration of a pod."""
    return "|".join((toleration.get("key", ""), toleration.get("operator", "Equal"), toleration.get("value", ""),
                     toleration.get("effect", "")))


def chart_values(conf: Conf, region: str) -> dict:
    """Return the chart values for `region`: its stages' namespaces and gateways, and the alert labels."""
    stages = [stage for stage in conf.stages.values() if stage.region == region]
    if not stages:
        raise KeyError(f"no stage runs in region {region!r}; regions with stages: "
                       f"{', '.join(sorted({s.region for s in conf.stages.values()}))}")
    gateways = sorted({stage.gateway for stage in stages})
    settings = conf.regions[region]
    return {
        "namespaces": tenancy.namespaces(conf, region),
        "gateways": [{"namespace": gw.split("/")[0], "name": gw.split("/")[1], "selector": settings.gateway_selector,
                      "hosts": sorted({s.ingress_host for s in stages if s.gateway == gw}),
                      "tlsSecret": settings.gateway_tls_secret} for gw in gateways],
        "limits": pod_limits(conf, region),
        "priorityClasses": list(tenancy.PRIORITY_CLASSES.values()),
        "alertRules": {"labels": conf.platform.monitoring.podmonitor_labels},
        "podMonitors": {"sampleLimit": conf.platform.monitoring.scrape_sample_limit,
                        "labelLimit": conf.platform.monitoring.scrape_label_limit},
        "platformConfigMaps": list(tenancy.PLATFORM_CONFIGMAPS),
        # the mesh's injected containers: render writes its own containers' local disk, the LimitRange theirs
        "containerDefaults": {"name": tenancy.LIMIT_RANGE_NAME,
                              "ephemeralStorage": conf.platform.mesh.sidecar_ephemeral_storage},
        "kafka": {"configMap": KAFKA_CONFIGMAP["name"], "key": KAFKA_CONFIGMAP["key"],
                  "bootstrap": settings.kafka_bootstrap, "protocolKey": KAFKA_PROTOCOL_KEY,
                  "securityProtocol": settings.kafka_security_protocol,
                  "credentialsSecret": kafka_access.CREDENTIALS_SECRET},
        "networkPolicies": network_policies(conf, region),
        "region": region,
    }


def network_policies(conf: Conf, region: str) -> dict:
    """What the team namespaces' NetworkPolicies let through in `region` (templates/networkpolicies.yaml)."""
    network, settings = conf.platform.network, conf.regions[region]
    return {"dns": dataclasses.asdict(network.dns), "istiod": dataclasses.asdict(network.istiod),
            "prometheus": dataclasses.asdict(network.prometheus), "kong": {"cidrs": list(settings.kong_networks)},
            "brokers": {"cidrs": list(settings.kafka_networks), "ports": broker_ports(settings),
                        "podSelector": {tenancy.MODE_LABEL: tenancy.OFFLINE_MODE}}}


def selector_entries(selector: dict) -> str:
    """Return a node selector as the pod policies read it: key=value,... (sorted)."""
    return ",".join(f"{key}={value}" for key, value in sorted(selector.items()))


def pod_limits(conf: Conf, region: str) -> dict:
    """What the admission policies hold each pod and autoscaler to: conf/platform.yaml's limits, the region's largest
    node, its pools' tolerations and selectors, the resources and registry its pods may use, where the brokers'
    address comes from, the Prometheus and the series scalers read."""
    limits, settings = conf.platform.limits, conf.regions[region]
    pools = [settings.node_pools.gpu, settings.node_pools.cpu]
    tolerations = [*(t for pool in pools for t in pool.tolerations), *DEFAULT_TOLERATIONS]
    gpu_resources = tenancy.extended_resources(conf, region)
    return {"httpPortName": HTTP_PORT_NAME, "gpuResource": settings.gpu.resource, "maxGpus": limits.gpus_per_pod,
            # a pod asking any of gpuResources must select gpuPool; one asking none must select a pool (poolKeys)
            # other than gpuPool (podserve-placement)
            "gpuResources": ",".join(gpu_resources), "gpuPool": selector_entries(settings.node_pools.gpu.node_selector),
            "poolKeys": ",".join(sorted({key for pool in pools for key in pool.node_selector})),
            "resources": ",".join([*tenancy.BASE_RESOURCES, *gpu_resources]),
            "topologyKeys": ",".join(tenancy.TOPOLOGY_KEYS), "registries": settings.registry,
            "gpuVisibilityEnv": tenancy.GPU_VISIBILITY_ENV, "noGpu": tenancy.NO_GPU,
            "maxCpu": str(max((p.allocatable.cpu for p in pools), key=quantity.cpu_cores)),
            "maxMemory": str(max((p.allocatable.memory for p in pools), key=quantity.memory_bytes)),
            "maxReplicas": limits.max_replicas,
            "tolerations": ",".join(sorted(dict.fromkeys(map(toleration_key, tolerations)))),
            "kafkaBootstrapEnv": BOOTSTRAP_ENV, "kafkaConfigMap": KAFKA_CONFIGMAP["name"],
            "kafkaKey": KAFKA_CONFIGMAP["key"], "prometheusAddress": conf.platform.monitoring.prometheus_address,
            # the series a ScaledObject's prometheus trigger may sum (podserve-autoscalers: a regex alternation)
            "scalingSeries": "|".join(scaling.SERIES.values())}


def main(argv: list[str]) -> int:
    """Print the chart values of the region named in argv[0]; 2 when it or conf/ is wrong."""
    if len(argv) != 1:
        print("usage: python -m podserve.tooling.chart_values <region>", file=sys.stderr)
        return 2
    try:
        values = chart_values(load_conf(), argv[0])
    except (ValueFileError, KeyError) as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return 2
    print(yaml.safe_dump(values, sort_keys=True), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
