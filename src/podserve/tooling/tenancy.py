"""Who owns what on a shared cluster: each team's namespaces, their labels, and the accounts that deploy there.

The one place these names are made (docs/tenancy.md says why: a namespace per team and stage).
render stamps TEAM_LABEL and the GitLab project (PROJECT_ANNOTATION) on every object; the platform chart labels each namespace with
NAMESPACE_TEAM and NAMESPACE_TIER and annotates it with its hosts and route prefix, and its
admission policies compare those with the requesting account and the object
(charts/podserve-platform/templates/policies.yaml). CI deploys a team's grey and ab stages
with the team's preview account and its production stages with the team's production
account; neither can write anywhere else.
"""

from __future__ import annotations

from podserve.tooling import quantity
from podserve.tooling.conf import Conf, Quota, Stage

#: The object label render stamps with value.py's username.
TEAM_LABEL = "team"
#: Namespace labels and annotations the chart writes and the admission policies read.
NAMESPACE_TEAM = "podserve.io/team"
NAMESPACE_TIER = "podserve.io/tier"
NAMESPACE_HOSTS = "podserve.io/hosts"
NAMESPACE_ROUTE_PREFIX = "podserve.io/route-prefix"
NAMESPACE_DEPLOYER = "podserve.io/deployer"
#: The only namespaces a VirtualService there may route or mirror to (its team's of the region), comma-separated, and
#: the one Gateway it may bind to: the route-destination rules of policies.yaml read them (route_namespaces).
NAMESPACE_ROUTE_NAMESPACES = "podserve.io/route-namespaces"
NAMESPACE_GATEWAY = "podserve.io/gateway"
#: The PriorityClass every pod there must name (the namespace's tier's).
NAMESPACE_PRIORITY_CLASS = "podserve.io/priority-class"
#: The team's own host ports (conf/teams.yaml host_ports), inclusive.
NAMESPACE_HOST_PORT_MIN = "podserve.io/host-port-min"
NAMESPACE_HOST_PORT_MAX = "podserve.io/host-port-max"
#: The name of every namespace's ResourceQuota (the deploy tool's diagnosis names it when it is full).
QUOTA_NAME = "podserve-quota"
#: The GitLab project that rendered an object (CI_PROJECT_PATH), and the group a namespace's objects must come from.
PROJECT_ANNOTATION = "podserve.io/project"
NAMESPACE_PROJECT_GROUP = "podserve.io/project-group"
#: GitLab's predefined variable holding the project's path ("models/like/text-direction").
PROJECT_VARIABLE = "CI_PROJECT_PATH"
#: Grey and ab serve no production traffic: they run on every branch, with the preview account.
PREVIEW_TRACKS = ("grey", "ab")
#: The only topologyKeys a pod's spread constraints and pod (anti-)affinity terms may name (podserve-placement): a
#: node or a zone. A region-wide key makes one pod's anti-affinity hold a whole region.
TOPOLOGY_KEYS = ("kubernetes.io/hostname", "topology.kubernetes.io/zone")
#: What every container that asks no GPU carries: the CUDA base image sets NVIDIA_VISIBLE_DEVICES=all, and the NVIDIA
#: container toolkit then gives the container every GPU of its node (podserve-gpu-devices; render writes it).
GPU_VISIBILITY_ENV, NO_GPU = "NVIDIA_VISIBLE_DEVICES", "void"
#: The resources a container may ask besides the region's GPU ones (conf/regions.yaml gpu.resource, memory_resource):
#: each counted in the namespace's quota (podserve-resources refuses any other: hugepages, another MIG profile).
BASE_RESOURCES = ("cpu", "memory", "ephemeral-storage")
#: ConfigMaps in a team namespace that are the platform's (the brokers, the cluster's and the mesh's CA certificates):
#: CI's accounts may neither change nor delete them (podserve-owner).
PLATFORM_CONFIGMAPS = ("podserve-kafka", "kube-root-ca.crt", "istio-ca-root-cert")
#: The name of every team namespace's LimitRange: the local disk of containers render does not write (the mesh's).
LIMIT_RANGE_NAME = "podserve-defaults"
#: The pod label (and value) render puts on offline workers: the only pods the chart's NetworkPolicies let reach the
#: brokers (podserve-offline-to-brokers).
MODE_LABEL, OFFLINE_MODE = "podserve.io/mode", "offline"


#: Each tier's PriorityClass (the chart creates them): production pods preempt grey and ab ones when a
#: pool is full (a rollout's surge pod included); preview pods never preempt anything.
PRIORITY_CLASSES = {
    "production": {"name": "podserve-production", "value": 100000, "preemptionPolicy": "PreemptLowerPriority"},
    "preview": {"name": "podserve-preview", "value": 1000, "preemptionPolicy": "Never"},
}


def tier(stage: Stage) -> str:
    """Return "preview" for grey and ab (deployed from any branch), "production" for the rest."""
    return "preview" if stage.track in PREVIEW_TRACKS else "production"


def priority_class(stage: Stage) -> str:
    """Return the PriorityClass of the stage's pods."""
    return PRIORITY_CLASSES[tier(stage)]["name"]


def account(team: str, tier_name: str) -> str:
    """Return the ServiceAccount name CI deploys `team`'s stages of `tier_name` with."""
    return f"podserve-{team}-{tier_name}"


def project(conf: Conf, team: str, service: str, path: str | None) -> str:
    """Return the GitLab project path render stamps: `path` ($CI_PROJECT_PATH in CI), else the one a service of
    `team` would have (outside CI); ValueError naming both when `path` lies outside the team's group."""
    group = conf.project_group(team)
    if not path:
        return f"{group}/{service}"
    if not path.startswith(f"{group}/"):
        raise ValueError(f"the GitLab project {path} ({PROJECT_VARIABLE}) is not in team {team}'s group {group} "
                         f"(conf/teams.yaml gitlab_group): set value.py username to the team whose group holds the "
                         "project, or move the project into its team's group")
    return path


def stamp(documents: list[dict], project_path: str) -> list[dict]:
    """Return `documents` with PROJECT_ANNOTATION set on each (in place: they are render's own)."""
    for doc in documents:
        doc.setdefault("metadata", {}).setdefault("annotations", {})[PROJECT_ANNOTATION] = project_path
    return documents


def quota_of(conf: Conf, stage: Stage, team: str) -> Quota:
    """What all of `team`'s pods in its namespace of `stage` may ask at once: the platform's preview_quota in grey
    and ab (branches cannot take a pool), the team's own (conf/teams.yaml quota) in production."""
    return conf.platform.limits.preview_quota if tier(stage) == "preview" else conf.team(team).quota


def quota(conf: Conf, stage: Stage, team: str) -> dict[str, str]:
    """The ResourceQuota's hard limits of `team`'s namespace of `stage` (quota_of), as the API names them: every
    resource a container may ask (extended_resources) is counted. GPU memory (HAMi) is the GPUs' worth; local disk the
    pods' worth (conf/platform.yaml pod.ephemeral_storage and the mesh's sidecar_ephemeral_storage each)."""
    amounts, gpu = quota_of(conf, stage, team), conf.region_of(stage).gpu
    hard = {"pods": str(amounts.pods), f"requests.{gpu.resource}": str(amounts.gpus)}
    if gpu.memory_resource:  # MiB, as render asks it
        hard[f"requests.{gpu.memory_resource}"] = str(amounts.gpus * gpu.memory_gib * 1024)
    for resource in ("cpu", "memory"):
        hard[f"requests.{resource}"] = hard[f"limits.{resource}"] = str(getattr(amounts, resource))
    hard["requests.ephemeral-storage"] = hard["limits.ephemeral-storage"] = pod_disk(conf, amounts.pods)
    return hard


def pod_disk(conf: Conf, pods: int) -> str:
    """The local disk `pods` pods may ask at once, each its server container's and its mesh sidecar's (MiB)."""
    each = (quantity.memory_bytes(conf.platform.pod.ephemeral_storage)
            + quantity.memory_bytes(conf.platform.mesh.sidecar_ephemeral_storage))
    return f"{pods * each // 2**20}Mi"


def extended_resources(conf: Conf, region: str) -> list[str]:
    """The resources beyond BASE_RESOURCES a container may ask in `region`: its GPU (or MIG slice) and, where GPUs
    are shared by memory, their memory."""
    gpu = conf.regions[region].gpu
    return [gpu.resource] + ([gpu.memory_resource] if gpu.memory_resource else [])


def route_namespaces(conf: Conf, team: str, stage: Stage) -> list[str]:
    """The namespaces a VirtualService of `team` at `stage` may send traffic to, or mirror it to: a production stage its
    own and its region's grey (the mirror); grey and ab (any branch's code, the preview account) their own only, so no
    branch can publish production's pods under its own path. Never another team's nor the platform's. The one place
    this rule is made: the chart writes it on each namespace (NAMESPACE_ROUTE_NAMESPACES, read by podserve-routes) and
    render checks with it."""
    own = stage.namespace_for(team)
    if tier(stage) == "preview":
        return [own]
    return sorted({own, *(s.namespace_for(team) for s in conf.stages.values()
                          if s.track == "grey" and s.region == stage.region)})


#: The form of a Service's host a route may name: <name>.<namespace>.svc.cluster.local (policies.yaml checks the same).
SERVICE_HOST_SUFFIX = ".svc.cluster.local"


def destination_hosts(virtual_service: dict) -> list[str]:
    """Every host a VirtualService sends traffic to: its routes' destinations, its mirror and mirrors."""
    hosts = []
    for http in (virtual_service.get("spec") or {}).get("http") or []:
        hosts += [(r.get("destination") or {}).get("host", "") for r in http.get("route") or []]
        hosts += [(http["mirror"] or {}).get("host", "")] if "mirror" in http else []
        hosts += [(m.get("destination") or {}).get("host", "") for m in http.get("mirrors") or []]
    return hosts


def destination_problems(virtual_service: dict, conf: Conf, team: str, stage: Stage) -> list[str]:
    """What podserve-routes would refuse of a VirtualService of `team` at `stage`: a destination or mirror outside
    the team's own namespaces (route_namespaces), a delegate, a gateway other than the stage's."""
    allowed = route_namespaces(conf, team, stage)
    found = []
    for host in destination_hosts(virtual_service):
        name, _, namespace = host.removesuffix(SERVICE_HOST_SUFFIX).partition(".")
        if not host.endswith(SERVICE_HOST_SUFFIX) or not name or "." in namespace or namespace not in allowed:
            found.append(f"routes or mirrors to {host!r}: only Services of team {team}'s namespaces "
                         f"({', '.join(allowed)}) as <name>.<namespace>{SERVICE_HOST_SUFFIX}")
    spec = virtual_service.get("spec") or {}
    if any("delegate" in http for http in spec.get("http") or []):
        found.append("delegates a route: delegate is not allowed")
    if spec.get("gateways") != [stage.gateway]:
        found.append(f"binds {spec.get('gateways')}: only the stage's Gateway {stage.gateway}")
    return found


def namespaces(conf: Conf, region: str) -> list[dict]:
    """Every team's namespace of every stage in `region`, with what the chart and its policies need."""
    found = []
    for stage in (s for s in conf.stages.values() if s.region == region):
        for team in conf.teams:
            ports = conf.team(team).host_ports
            found.append({"name": stage.namespace_for(team), "team": team, "stage": stage.name,
                          "tier": tier(stage), "account": account(team, tier(stage)),
                          "hostPorts": stage.service_discovery, "hostPortRange": [ports.min, ports.max],
                          "hosts": [stage.ingress_host], "routePrefix": stage.route_prefix_for(team),
                          "routeNamespaces": route_namespaces(conf, team, stage), "gateway": stage.gateway,
                          "priorityClass": priority_class(stage),
                          "projectGroup": f"{conf.project_group(team)}/",
                          "quota": quota(conf, stage, team)})
    return sorted(found, key=lambda ns: ns["name"])
