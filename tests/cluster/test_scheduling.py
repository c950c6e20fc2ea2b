"""The real scheduler places the example on each region's fake GPU nodes, and refuses a pod asking too much GPU.

Real: kube-scheduler (node selectors, taints and tolerations, extended resources), the
Deployment and ReplicaSet controllers. Simulated: the nodes (kwok) and their containers,
which become Running and Ready at once (cluster/kwok-stages.yaml).
"""

from __future__ import annotations

import copy

import pytest

from podserve.testbed.cluster.platform import REGION_LABEL
from podserve.tooling.deploy.target import label_selector
from podserve.tooling.rollout import workload_of
from waiting import wait_for

GPU_STAGES = ("hk", "eu", "na")


def deployment_of(services, stage: str) -> dict:
    """The stage's pods as render writes them, run by a Deployment: a production stage's Rollout's pod template (where
    its pods land is what is tested here; Argo running them is tests/cluster/test_rollouts_controller.py)."""
    found = copy.deepcopy(workload_of(services["example"].stages[stage]))
    if found["kind"] == "Rollout":
        found["spec"].pop("strategy")
        found.update(apiVersion="apps/v1", kind="Deployment")
    return found


def moved(deployment: dict, namespace: str, suffix: str) -> dict:
    deployment["metadata"]["namespace"] = namespace
    deployment["metadata"]["name"] += f"-{suffix}"
    return deployment


@pytest.fixture
def restricted(scratch_namespace):
    return scratch_namespace("available", {"pod-security.kubernetes.io/enforce": "restricted"})


def test_the_example_becomes_available_on_each_regions_gpu_nodes(applier, apps, core, services, conf, restricted):
    deployments = {stage: moved(deployment_of(services, stage), restricted, stage) for stage in GPU_STAGES}
    for deployment in deployments.values():
        applier.apply(deployment)

    def available(stage: str) -> bool:
        status = apps.read_namespaced_deployment(deployments[stage]["metadata"]["name"], restricted).status
        conditions = {c.type: c.status for c in status.conditions or []}
        return conditions.get("Available") == "True" and status.available_replicas == status.replicas > 0

    for stage in GPU_STAGES:
        wait_for(lambda stage=stage: available(stage), f"Deployment of stage {stage} Available")
        region = conf.regions[conf.stages[stage].region]
        selector = label_selector(deployments[stage]["spec"]["selector"]["matchLabels"])
        pods = core.list_namespaced_pod(restricted, label_selector=selector).items
        assert len(pods) == deployments[stage]["spec"]["replicas"]
        for pod in pods:
            node = core.read_node(pod.spec.node_name)
            assert node.metadata.labels[REGION_LABEL] == region.name
            assert node.metadata.labels.items() >= region.node_pools.gpu.node_selector.items()
            assert region.gpu.resource in node.status.allocatable
            assert region.gpu.resource in pod.spec.containers[0].resources.limits


def test_a_deployment_asking_more_gpu_than_any_node_has_stays_pending(applier, core, services, conf,
                                                                       scratch_namespace):
    namespace = scratch_namespace("too-big")
    asked = {}
    for stage in GPU_STAGES:
        region = conf.regions[conf.stages[stage].region]
        deployment = moved(deployment_of(services, stage), namespace, f"{stage}-too-big")
        deployment["spec"]["replicas"] = 1
        limits = deployment["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]
        limits[region.gpu.resource] = str(region.node_pools.gpu.allocatable.gpus + 1)  # render refuses this
        asked[deployment["spec"]["selector"]["matchLabels"]["stage"]] = region.gpu.resource
        applier.apply(deployment)

    def failed_scheduling():
        events = core.list_namespaced_event(namespace, field_selector="reason=FailedScheduling").items
        return {e.involved_object.name: e for e in events if e.reporting_component == "default-scheduler"} \
            if len({e.involved_object.name for e in events}) == len(GPU_STAGES) else None

    events = wait_for(failed_scheduling, "FailedScheduling events for the three over-asking pods")
    for pod in core.list_namespaced_pod(namespace).items:
        assert pod.status.phase == "Pending" and not pod.spec.node_name
        message = events[pod.metadata.name].message
        assert f"Insufficient {asked[pod.metadata.labels['stage']]}" in message, message
