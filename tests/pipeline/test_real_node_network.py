"""The platform chart's NetworkPolicies enforced on the real node by kube-network-policies (issue 68, It must show 2).

Real: the chart's policies as helm installed them (templates/networkpolicies.yaml), the policy engine the node runs
(podserve.testbed.cluster.netpol, built from Go modules, nftables and nfqueue in the node's network namespace), the
kubelet's pods of CI's image deployed by the deploy tool: team like's grey and production (hk) pods and team imo's
production pod, each a connection's source through `kubectl exec` (the server container's own python, its own user).
Standing in (podserve.testbed.cluster.bridge_pods): the pods whose process is not the kubelet's here, each a network
namespace on the node's bridge with its Pod object (namespace, labels, address): the region's gateway, Prometheus, a
Grafana beside Prometheus without its labels, the cluster's DNS, and a host outside the cluster (no Pod: an address
outside every allow, listening on the brokers' port). Every connection is a TCP connect from a process that is not the
node's root; a refused one is a SYN the engine dropped (no answer in CONNECT_SECONDS), counted in its own metrics.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import pytest
import yaml

from real_node_service import REPO, TEAM

from podserve.testbed.cluster import bridge_pods
from podserve.testbed.cluster import node as real
from podserve.testbed.processes import poll_until

KUBECTL = str(REPO / ".tools" / "bin" / "kubectl")
NAME, OTHER_TEAM = "fenced", "imo"
#: What each pod asks, so that the three fit the 2-core node beside what else runs there.
CPU = "250m"
#: The stand-ins' addresses on the node's bridge: above CNI's range (.2-.239), below the mesh gateway's (.250).
STANDINS = {"gateway": "10.245.0.241", "prometheus": "10.245.0.242", "grafana": "10.245.0.243",
            "dns": "10.245.0.244", "outside": "10.245.0.245"}
BROKER_PORT = 9092


@dataclass
class Bed:
    pods: dict[str, str]         # role -> pod address: like-grey, like-hk, imo-hk
    names: dict[str, tuple]      # role -> (namespace, pod name)
    standins: dict[str, bridge_pods.BridgePod]


def _deploy(service, name: str, stage: str, team: str):
    manifests = service.render(name, service.commit, stage=stage, variant=f"-{team}", username=team, cpu=CPU,
                               hk_replicas=1)
    for path in manifests.rglob("*.yaml"):  # every team's pods run the one image CI built
        path.write_text(path.read_text().replace(f"/{team}/{name}:", f"/{TEAM}/{service.name}:"))
    run = service.deploy("apply", manifests=manifests, stage=stage)
    print(f"{team}'s {stage} on the real node: deploy exit {run.returncode} in {run.seconds:.1f}s")
    assert run.returncode == 0, run.output
    return run.output


def _delete(service, namespace: str) -> None:
    import subprocess

    subprocess.run([KUBECTL, "delete", "-n", namespace, "deployment,service,pdb,configmap,podmonitors.monitoring.coreos.com,"
                    "virtualservices.networking.istio.io,destinationrules.networking.istio.io,"
                    "rollouts.argoproj.io,analysistemplates.argoproj.io", "-l", f"service={NAME}",
                    "--wait=false"], capture_output=True, env=service.plane.tool_env(), timeout=120)


@pytest.fixture(scope="module")
def bed(grey_service, real_node, rollouts_controller):  # its hk pods are a Rollout's
    from kubernetes import client

    svc, conf = grey_service, grey_service.conf
    core = client.CoreV1Api(svc.plane.api_client())
    roles = {"like-grey": ("grey", TEAM), "like-hk": ("hk", TEAM), "imo-hk": ("hk", OTHER_TEAM)}
    namespaces = {role: conf.stages[stage].namespace_for(team) for role, (stage, team) in roles.items()}
    svc.let_pods_pull(namespaces["imo-hk"])
    gateway_namespace = conf.stages["hk"].gateway.split("/")[0]
    network = conf.platform.network
    standins: dict[str, bridge_pods.BridgePod] = {}
    api = svc.plane.api_client()
    try:
        for role, namespace, labels in (
                ("gateway", gateway_namespace, conf.regions["hk"].gateway_selector),
                ("prometheus", network.prometheus.namespace, network.prometheus.selector),
                ("grafana", network.prometheus.namespace, {"app.kubernetes.io/name": "grafana"}),
                ("dns", network.dns.namespace, network.dns.selector),
                ("outside", None, {})):
            standins[role] = bridge_pods.BridgePod.start(api, namespace, f"standin-{role}", labels, STANDINS[role])
        standins["dns"].serve(network.dns.port)
        standins["outside"].serve(BROKER_PORT)
        with ThreadPoolExecutor(max_workers=len(roles)) as pool:
            said = [done.result() for done in [pool.submit(_deploy, svc, NAME, stage, team)
                                               for stage, team in roles.values()]]
        names, pods = {}, {}
        for role, namespace in namespaces.items():
            found = [p for p in core.list_namespaced_pod(namespace, label_selector=f"service={NAME}").items
                     if not p.metadata.deletion_timestamp]
            assert len(found) == 1, (role, namespace, [p.metadata.name for p in found], said)
            (pod,) = found
            assert pod.spec.node_name == real_node.name, pod.spec.node_name
            names[role], pods[role] = (namespace, pod.metadata.name), pod.status.pod_ip
        real_node.policies.wait_enforcing(pods.values())
        yield Bed(pods, names, standins)
    finally:
        for namespace in set(namespaces.values()):
            _delete(svc, namespace)
        for standin in standins.values():
            standin.stop()


def _from_pod(service, namespace: str, pod: str, host: str, port: int) -> str:
    """A TCP connect from inside a kubelet's pod: its server container's python, as the container's user."""
    return bridge_pods.run_connect([KUBECTL, "--kubeconfig", str(service.plane.kubeconfig), "exec", "-n", namespace,
                                    pod, "-c", "server", "--",
                                    *bridge_pods.connect_argv(host, port, python="python")])


def _matrix(grey_service, bed: Bed, cases: dict[str, tuple]) -> dict[str, str]:
    """Run every case at once ({case: (source, host, port)}; a source is a stand-in or a pod's role); what each got."""
    def attempt(source: str, host: str, port: int) -> str:
        if source in bed.standins:
            return bed.standins[source].connect(host, port)
        return _from_pod(grey_service, *bed.names[source], host, port)

    with ThreadPoolExecutor(max_workers=len(cases)) as pool:
        futures = {case: pool.submit(attempt, *args) for case, args in cases.items()}
        return {case: future.result() for case, future in futures.items()}


def test_the_chart_s_policies_hold_on_the_real_node_with_the_engine_running(grey_service, real_node, bed):
    import socket
    import threading

    http = 8080
    pods, out = bed.pods, STANDINS
    listener = socket.create_server((real.NODE_IP, 0))
    node_port = listener.getsockname()[1]
    allowed = {
        # the gateway and Prometheus, in their namespaces with their labels, reach every service pod of every team
        **{f"{who} -> {role}": (who, pods[role], http) for who in ("gateway", "prometheus") for role in pods},
        "like-grey -> dns": ("like-grey", out["dns"], 53),  # pods -> DNS: an egress the chart allows
        "prometheus -> outside": ("prometheus", out["outside"], BROKER_PORT),  # the outside host answers
        # node-local, by design: a program of the node on its bridge address (the engine sees no packet to the node)
        "like-grey -> node": ("like-grey", real.NODE_IP, node_port),
    }
    refused = {
        "like-grey -> imo-hk": ("like-grey", pods["imo-hk"], http),  # grey -> another team's production pod
        "like-grey -> like-hk": ("like-grey", pods["like-hk"], http),  # grey -> its own team's production pod
        "like-grey -> outside": ("like-grey", out["outside"], BROKER_PORT),  # an address outside the allows
        "imo-hk -> like-grey": ("imo-hk", pods["like-grey"], http),  # a pod of another team's namespace
        "imo-hk -> like-hk": ("imo-hk", pods["like-hk"], http),
        "grafana -> like-hk": ("grafana", pods["like-hk"], http),  # Prometheus' namespace, not its labels
    }
    threading.Thread(target=lambda: [listener.accept()[0].close() for _ in range(3)], daemon=True).start()
    try:
        before = real_node.policies.verdicts()
        got = _matrix(grey_service, bed, {**allowed, **refused})
        after = real_node.policies.verdicts()
    finally:
        listener.close()
    print(f"\nconnections on the real node with kube-network-policies: {got}\nits verdicts: before {before}, "
          f"after {after}")
    assert {case: got[case] for case in allowed} == dict.fromkeys(allowed, "open"), real_node.policies.table()
    assert {case: got[case] for case in refused} == dict.fromkeys(refused, "timeout"), real_node.policies.table()
    # the refusals are the engine's verdicts (a SYN and its retransmits each), not a route or a listener missing
    assert after["drop"] - before["drop"] >= len(refused)
    # traffic the engine saw and let through: every allowed connection to or from a pod it holds to a policy
    assert after["accept"] - before["accept"] >= len(pods) * 2 + 1


def test_node_local_traffic_is_the_node_s_root_only(bed):
    """The node's own root (the kubelet's probes, this test) reaches a pod; a process of the node with another user
    is held to the pod's policies like any caller outside the cluster."""
    import subprocess

    target = bed.pods["like-hk"]
    as_root = bridge_pods.run_connect(bridge_pods.connect_argv(target, 8080))
    as_user = bridge_pods.run_connect(bridge_pods.as_uid(bridge_pods.connect_argv(target, 8080)))
    assert (as_root, as_user) == ("open", "timeout")
    assert subprocess.run(["id", "-u"], capture_output=True, text=True).stdout.strip() == "0"
