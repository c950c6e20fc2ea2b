"""The gateway's endpoints from a real cluster's EndpointSlices, as istiod feeds them: ready, not terminating.

    feed = SliceFeed(api_client, config, eds_folder).start()   # then Envoy; feed.stop()

For each of the gateway's clusters (outbound|<port>|<subset>|<service>.<namespace>.svc.cluster.local) it
reads the EndpointSlices the controller-manager keeps for that Service (label
kubernetes.io/service-name) and writes Envoy's endpoint file with the addresses that are ready and
not terminating, each with its pod's labels as metadata; a DestinationRule subset's cluster gets only the
endpoints whose pods carry its labels (a production stage's stable and canary pods, by track), as istiod does.
`set_config` follows a gateway config that changes (the route feed's: routefeed.py). Pod addresses are the real node's
(10.245.0.0/24, on this machine's bridge): no kube-proxy runs, so a ClusterIP would not route;
Envoy goes to the pods directly, as Istio's does. Polled (every `every` seconds) rather than watched.
"""

from __future__ import annotations

import threading
from pathlib import Path

from podserve.testbed.mesh import envoy, ir
from podserve.testbed.polling import Poller

SERVICE_LABEL = "kubernetes.io/service-name"


def _service_host(cluster: str) -> tuple[str, str]:
    """outbound|8080||svc.ns.svc.cluster.local -> (ns, svc)."""
    host = cluster.split("|")[-1]
    service, namespace = host.split(".")[:2]
    return namespace, service


class SliceFeed(Poller):
    """Keeps each cluster's endpoint file equal to its Service's ready, non-terminating EndpointSlice addresses."""

    def __init__(self, api_client, config: ir.GatewayConfig, eds_folder: Path, every: float = 0.2):
        from kubernetes import client

        self.discovery, self.core = client.DiscoveryV1Api(api_client), client.CoreV1Api(api_client)
        self.config = config
        super().__init__(every, "slice-feed")
        self.eds_folder = Path(eds_folder)
        self.version = 0
        self.written: dict[str, list[tuple[str, int, dict]]] = {}
        self._syncing = threading.Lock()  # its own thread and the route feed's both sync

    @property
    def clusters(self) -> list[str]:
        return [c.name for c in self.config.clusters]

    def set_config(self, config: ir.GatewayConfig) -> None:
        """Feed the clusters of a new gateway config from now on (the caller writes their files first)."""
        self.config = config

    def hosts(self, cluster: str) -> list[tuple[str, int, dict]]:
        """(address, port, pod labels) of every ready, non-terminating endpoint of the cluster's Service whose pod
        the cluster selects (its subset's labels, or every pod)."""
        return envoy.subset_hosts(self.config.cluster(cluster), self._service_hosts(cluster))

    def _service_hosts(self, cluster: str) -> list[tuple[str, int, dict]]:
        namespace, service = _service_host(cluster)
        found = []
        for piece in self.discovery.list_namespaced_endpoint_slice(
                namespace, label_selector=f"{SERVICE_LABEL}={service}").items:
            port = (piece.ports or [None])[0]
            if port is None or port.port is None:
                continue
            for endpoint in piece.endpoints or []:
                conditions = endpoint.conditions
                if not conditions or not conditions.ready or conditions.terminating:
                    continue
                labels = {}
                if endpoint.target_ref is not None and endpoint.target_ref.kind == "Pod":
                    labels = self._labels(namespace, endpoint.target_ref.name)
                found += [(address, port.port, labels) for address in endpoint.addresses]
        return sorted(found, key=lambda h: (h[0], h[1]))

    def _labels(self, namespace: str, pod: str) -> dict:
        from kubernetes.client import ApiException

        try:
            return dict(self.core.read_namespaced_pod(pod, namespace).metadata.labels or {})
        except ApiException:
            return {}

    def sync(self) -> bool:
        """Write every cluster whose endpoints changed; return whether any did."""
        with self._syncing:
            return self._sync()

    def _sync(self) -> bool:
        changed = False
        config, services = self.config, {}
        for cluster in [c.name for c in config.clusters]:
            service = _service_host(cluster)
            if service not in services:  # each Service's slices once: its subsets' clusters share them
                services[service] = self._service_hosts(cluster)
            hosts = envoy.subset_hosts(config.cluster(cluster), services[service])
            if self.written.get(cluster) != hosts:
                self.version += 1
                envoy.write_atomically(envoy.eds_path(self.eds_folder, cluster),
                                       envoy.load_assignment_hosts(cluster, hosts, self.version))
                self.written[cluster] = hosts
                changed = True
        return changed

    def prepare(self) -> None:
        self.eds_folder.mkdir(parents=True, exist_ok=True)
