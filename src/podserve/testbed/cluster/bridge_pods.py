"""Pods whose process the kubelet does not run here, as the real node's policy engine sees them: an address on the
node's bridge, in a network namespace of this machine, and a Pod object with that address, namespace and labels.

    pod = BridgePod.start(api_client, "monitoring", "prometheus-0", {"app.kubernetes.io/name": "prometheus"},
                          "10.245.0.241")
    pod.connect("10.245.0.7", 8080)      # "open", or why not ("timeout": dropped), from inside, as uid 10001
    pod.stop()

    forget = register(api_client, "istio-ingress", "istio-ingressgateway-3", {"istio": "ingressgateway"}, "10.245.0.250")

kube-network-policies decides by a packet's addresses: a source whose address is no Pod's matches no podSelector or
namespaceSelector, so the region's gateway (Envoy fed by istiod, podserve.testbed.mesh, in a namespace joined to the
bridge) is let through only where its Pod object says it is the gateway (its namespace and labels): `register`. The
Pod is marked as a process's (kwok leaves it alone), names a scheduler that does not exist (no node takes it: the
real node's kubelet would try to run it), and carries the address as its status. What stands in: the Pod object, not
the traffic: packets leave the namespace through its veth onto the bridge, as a pod's leave its own.
"""

from __future__ import annotations

import shutil
import subprocess
import time

from podserve.testbed.mesh.podnetwork import PodNetwork
from podserve.testbed.mesh.pods import PROCESS_ANNOTATION

#: No scheduler answers to it: the Pod stays unbound (the process runs in its own namespace, on no node).
NO_SCHEDULER = "podserve-no-scheduler"
#: The uid a stand-in's connections come from (the pods' own user, conf/platform.yaml pod.run_as_user): not root,
#: whose sockets of the node's own namespace the engine lets through (node-local traffic: the kubelet's probes).
UID = 10001
CONNECT_SECONDS = 5.0

#: What a connection attempt prints: "open", "timeout" (no answer: the SYN was dropped), or the errno's name.
CONNECT_SCRIPT = """
import errno, socket, sys
s = socket.socket()
s.settimeout(float(sys.argv[3]))
try:
    s.connect((sys.argv[1], int(sys.argv[2])))
    print("open")
except socket.timeout:
    print("timeout")
except OSError as exc:
    print(errno.errorcode.get(exc.errno, str(exc.errno)))
"""


def pod_object(namespace: str, name: str, labels: dict[str, str], address: str) -> dict:
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": namespace, "labels": dict(labels),
                         "annotations": {PROCESS_ANNOTATION: "true"}},
            "spec": {"schedulerName": NO_SCHEDULER, "automountServiceAccountToken": False,
                     "containers": [{"name": "process", "image": "local"}]}}


def register(api_client, namespace: str, name: str, labels: dict[str, str], address: str):
    """Create the Pod object of a process at `address` (Running there); return a function that deletes it."""
    from kubernetes import client

    core = client.CoreV1Api(api_client)
    core.create_namespaced_pod(namespace, pod_object(namespace, name, labels, address))
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    core.patch_namespaced_pod_status(name, namespace, {"status": {
        "phase": "Running", "podIP": address, "podIPs": [{"ip": address}], "startTime": now,
        "conditions": [{"type": "Ready", "status": "True", "lastTransitionTime": now}]}},
        _content_type="application/merge-patch+json")

    def forget() -> None:
        try:
            core.delete_namespaced_pod(name, namespace, grace_period_seconds=0)
        except client.ApiException as exc:
            if exc.status != 404:
                raise

    return forget


def connect_argv(host: str, port: int, timeout: float = CONNECT_SECONDS, python: str = "/usr/bin/python3") -> list[str]:
    """A command that opens a TCP connection to host:port and prints how it went (CONNECT_SCRIPT)."""
    return [python, "-I", "-c", CONNECT_SCRIPT, host, str(port), str(timeout)]


def run_connect(argv: list[str], timeout: float = CONNECT_SECONDS) -> str:
    """Run a connect_argv command (wrapped as the caller needs: a namespace, a pod's exec); return what it printed."""
    done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout + 60)
    return done.stdout.strip() or f"failed ({done.returncode}): {done.stderr.strip()[-300:]}"


def as_uid(argv: list[str]) -> list[str]:
    setpriv = shutil.which("setpriv", path="/usr/bin:/bin") or "setpriv"
    return [setpriv, f"--reuid={UID}", f"--regid={UID}", "--clear-groups", *argv]


class BridgePod:
    """A network namespace on the node's bridge at `address`, known to the cluster as Pod namespace/name."""

    def __init__(self, network: PodNetwork, forget, namespace: str | None, name: str, address: str):
        self.network, self._forget = network, forget
        self.namespace, self.name, self.address = namespace, name, address

    @classmethod
    def start(cls, api_client, namespace: str | None, name: str, labels: dict[str, str], address: str,
              bridge: str | None = None, prefix_length: int | None = None) -> "BridgePod":
        """Join the bridge at `address` as Pod namespace/name with `labels`; with no namespace, as an address that is
        no pod's (a host outside the cluster, on the pods' network)."""
        from podserve.testbed.cluster import node

        network = PodNetwork.create()
        try:
            network.attach(bridge or node.BRIDGE, f"{address}/{prefix_length or node.POD_SUBNET.split('/')[1]}")
            forget = register(api_client, namespace, name, labels, address) if namespace else (lambda: None)
        except BaseException:
            network.remove()
            raise
        return cls(network, forget, namespace, name, address)

    def connect(self, host: str, port: int, timeout: float = CONNECT_SECONDS) -> str:
        """Open a TCP connection to host:port from inside, as UID: "open", "timeout" (dropped), or the errno."""
        return run_connect(self.network.inside(as_uid(connect_argv(host, port, timeout))), timeout)

    def serve(self, port: int) -> subprocess.Popen:
        """Listen on address:port, accepting and closing each connection, until the namespace goes."""
        script = ("import socket\ns = socket.create_server(({!r}, {}))\nwhile True:\n    s.accept()[0].close()"
                  .format(self.address, port))
        return subprocess.Popen(self.network.inside(["/usr/bin/python3", "-I", "-c", script]),
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def stop(self) -> None:
        try:
            self._forget()
        finally:
            self.network.remove()
