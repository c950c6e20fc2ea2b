"""The platform chart installed by the real helm: its namespaces' Pod Security labels, enforced by the real admission."""

from __future__ import annotations

import copy
import json

import pytest
from kubernetes.client.exceptions import ApiException

from podserve.tooling import tenancy
from podserve.tooling.chart_values import chart_values


def test_the_chart_is_installed_with_its_namespaces_labelled(control_plane, core, conf):
    releases = json.loads(core.list_namespaced_secret("default", label_selector="owner=helm,name=podserve-platform",
                                                      _preload_content=False).data)["items"]
    assert [r["metadata"]["labels"]["status"] for r in releases] == ["deployed"]
    for namespace in chart_values(conf, control_plane.region)["namespaces"]:
        labels = core.read_namespace(namespace["name"]).metadata.labels
        assert labels["pod-security.kubernetes.io/enforce"] == ("privileged" if namespace["hostPorts"] else "restricted")
        assert labels["pod-security.kubernetes.io/warn"] == labels["pod-security.kubernetes.io/audit"] == "restricted"
        assert labels[tenancy.NAMESPACE_TEAM] == namespace["team"]
        deployer = core.read_namespaced_service_account(namespace["account"], "podserve-system")
        assert deployer.automount_service_account_token is False


def pod_from(deployment: dict, name: str) -> dict:
    template = copy.deepcopy(deployment["spec"]["template"])
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {**template["metadata"], "name": name,
                                                             "namespace": deployment["metadata"]["namespace"]},
            "spec": template["spec"]}


def test_restricted_namespace_refuses_a_noncompliant_pod_and_admits_ours(core, services, conf):
    (deployment,) = [d for d in services["example"].stages["grey"] if d["kind"] == "Deployment"]
    namespace = deployment["metadata"]["namespace"]
    assert core.read_namespace(namespace).metadata.labels["pod-security.kubernetes.io/enforce"] == "restricted"
    ours = pod_from(deployment, "ours")
    admitted = core.create_namespaced_pod(namespace, ours, dry_run="All")
    assert admitted.metadata.namespace == namespace

    rogue = pod_from(deployment, "rogue")
    container = rogue["spec"]["containers"][0]
    container["securityContext"] = {"privileged": True, "allowPrivilegeEscalation": True}
    rogue["spec"]["containers"][0]["ports"][0]["hostPort"] = 8080
    with pytest.raises(ApiException) as refused:
        core.create_namespaced_pod(namespace, rogue, dry_run="All")
    assert refused.value.status == 403
    body = json.loads(refused.value.body)["message"]
    assert 'violates PodSecurity "restricted:latest"' in body
    assert "privileged" in body and "hostPort" in body


def test_every_regions_node_pools_are_there_as_declared(core, conf):
    from podserve.testbed.cluster.platform import NODES_PER_POOL, REGION_LABEL

    nodes = core.list_node().items
    assert all({c.type: c.status for c in n.status.conditions}["Ready"] == "True" for n in nodes)
    for name, region in conf.regions.items():
        for pool_name in ("gpu", "cpu"):
            pool = getattr(region.node_pools, pool_name)
            members = [n for n in nodes if n.metadata.labels[REGION_LABEL] == name
                       and n.metadata.labels.items() >= pool.node_selector.items()]
            assert len(members) == NODES_PER_POOL, (name, pool_name)
            for node in members:
                allocatable = node.status.allocatable
                assert (allocatable["cpu"], allocatable["memory"]) == (str(pool.allocatable.cpu), pool.allocatable.memory)
                assert allocatable.get(region.gpu.resource) == (str(pool.allocatable.gpus) if pool.allocatable.gpus
                                                               else None)
                if region.gpu.memory_resource and pool.allocatable.gpus:
                    assert allocatable[region.gpu.memory_resource] == str(
                        pool.allocatable.gpus * region.gpu.memory_gib * 1024)
                taints = {(t.key, t.effect) for t in node.spec.taints or []}
                assert taints == {(t["key"], t["effect"]) for t in pool.tolerations}


def test_a_real_node_joining_a_pool_cordons_only_kwoks_nodes_of_that_pool_in_its_region(control_plane, core, conf):
    from podserve.testbed.cluster.__main__ import _cordon_fake_pool
    from podserve.testbed.cluster.platform import fake_nodes

    region = control_plane.region
    expected = sorted(n["metadata"]["name"] for n in fake_nodes(conf)
                      if n["metadata"]["name"].startswith(f"{region}-gpu-"))
    assert expected, "the conf has no GPU pool in the test region"
    try:
        cordoned = _cordon_fake_pool(control_plane, conf.regions[region].node_pools.gpu.node_selector)
        assert cordoned == expected
        unschedulable = sorted(n.metadata.name for n in core.list_node().items if n.spec.unschedulable)
        assert unschedulable == expected
    finally:
        for name in expected:
            core.patch_node(name, {"spec": {"unschedulable": False}})
