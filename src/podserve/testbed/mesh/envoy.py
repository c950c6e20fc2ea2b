"""The gateway Envoy's bootstrap, written as pilot-agent would: who it is to istiod, and where istiod is.

Everything else (listeners, routes, clusters, endpoints) comes from istiod over ADS. No pilot-agent runs: the node id
`router~<ip>~<pod>.<namespace>~<namespace>.svc.cluster.local` makes it a gateway (proxy type `router`), its metadata
carries the labels the Gateway's selector matches, and ADS goes to a static HTTP/2 cluster whose address is a Unix
socket (forward.py carries it to istiod's loopback port: Envoy lives in the pod network, istiod on this machine).
"""

from __future__ import annotations

from pathlib import Path

HTTP_PROTOCOL_OPTIONS = "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
#: The bootstrap's one static cluster: istiod.
XDS_CLUSTER = "xds-grpc"
#: The admin port, on the gateway's own address in the pod network (reachable from this machine only).
ADMIN_PORT = 15000


def gateway_bootstrap(*, pod: str, namespace: str, address: str, labels: dict[str, str], istio_version: str,
                      xds_socket: Path) -> dict:
    """The bootstrap of gateway pod `namespace/pod` at `address` with `labels`, fed by istiod through `xds_socket`."""
    return {
        "node": {
            "id": f"router~{address}~{pod}.{namespace}~{namespace}.svc.cluster.local",
            "cluster": f"{labels.get('app', 'istio-ingressgateway')}.{namespace}",
            "metadata": {"NAMESPACE": namespace, "NAME": pod, "LABELS": labels, "ISTIO_VERSION": f"{istio_version}.0",
                         "CLUSTER_ID": "Kubernetes", "INSTANCE_IPS": address, "WORKLOAD_NAME": pod},
        },
        "admin": {"address": {"socket_address": {"address": address, "port_value": ADMIN_PORT}}},
        "dynamic_resources": {
            "ads_config": {"api_type": "GRPC", "transport_api_version": "V3", "set_node_on_first_message_only": True,
                           "grpc_services": [{"envoy_grpc": {"cluster_name": XDS_CLUSTER}}]},
            "cds_config": {"ads": {}, "resource_api_version": "V3"},
            "lds_config": {"ads": {}, "resource_api_version": "V3"},
        },
        "static_resources": {"clusters": [{
            "name": XDS_CLUSTER, "type": "STATIC", "connect_timeout": "1s",
            "load_assignment": {"cluster_name": XDS_CLUSTER, "endpoints": [{"lb_endpoints": [
                {"endpoint": {"address": {"pipe": {"path": str(xds_socket)}}}}]}]},
            "typed_extension_protocol_options": {"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": HTTP_PROTOCOL_OPTIONS, "explicit_http_config": {"http2_protocol_options": {}}}},
        }]},
    }
