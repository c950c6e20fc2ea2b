"""Start and stop a real Kubernetes control plane on 127.0.0.1: etcd, apiserver, controller-manager, scheduler, kwok.

Every flag lives here, envtest style; ports and folders are chosen at start. Real: etcd,
kube-apiserver (RBAC, PodSecurity admission, strict field validation), the controllers, the
scheduler. Simulated: the nodes and the containers on them (kwok, stages in
cluster/kwok-stages.yaml; kwok also answers the apiserver as the nodes' kubelet, so
`kubectl logs` of a simulated crash works). After the processes, `start` creates what a platform cluster of
the region has (podserve.testbed.cluster.platform): the node pools of every region, the
CRDs, the platform chart.
"""

from __future__ import annotations

import base64
import json
import shutil
import ssl
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import yaml

from podserve.testbed.cluster import pki, versions
from podserve.testbed.processes import Program, built, free_port

#: The kwok stages: how fake nodes and pods behave (default Ready; failures by annotation).
STAGES = versions.GO_MODULE / "kwok-stages.yaml"
#: kwok's Logs CRD (the crash stages create a Logs object per pod) and the log files they name.
KWOK_CRDS = versions.GO_MODULE / "kwok-crds"
SIMULATED_LOGS = versions.GO_MODULE / "simulated-logs"
#: What kwok manages: only nodes carrying this annotation (all our fake nodes do).
FAKE_NODE_ANNOTATION = ("kwok.x-k8s.io/node", "fake")
SERVICE_CIDR = "10.0.0.0/24"
POD_CIDR = "10.244.0.0/16"
ADMIN_USER = "podserve-admin"
#: Who the apiserver is when it proxies to an aggregated API (the front proxy CA's only client: requestheader-allowed-names).
FRONT_PROXY_CLIENT = "front-proxy-client"
START_TIMEOUT_SECONDS = 60.0
#: The HPA controller's period and tolerance (kube-controller-manager's defaults, stated so that the scaling tests
#: derive their bounds from them): every period it reads each HPA's metrics and, where the usage ratio is off 1 by more
#: than the tolerance, asks for ceil(usage / target) replicas.
HPA_SYNC_SECONDS = 15
HPA_TOLERANCE = 0.1


@dataclass(frozen=True)
class Ports:
    etcd: int
    etcd_peer: int
    apiserver: int
    controller_manager: int
    scheduler: int
    kwok: int

    @classmethod
    def free(cls) -> "Ports":
        return cls(*(free_port() for _ in range(6)))


#: The ports `make cluster` uses (the usual ones of each program); fixtures take free ones.
FIXED_PORTS = Ports(etcd=2379, etcd_peer=2380, apiserver=6443, controller_manager=10257, scheduler=10259, kwok=10247)


def kubeconfig_text(server: str, ca: Path, cert: pki.CertPair, user: str) -> str:
    """A kubeconfig with everything inline (CA, client cert and key), so it can be copied anywhere."""

    def b64(path: Path) -> str:
        return base64.b64encode(path.read_bytes()).decode()

    return yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "podserve-test",
        "clusters": [{"name": "podserve-test", "cluster": {"server": server, "certificate-authority-data": b64(ca)}}],
        "users": [{"name": user, "user": {"client-certificate-data": b64(cert.cert), "client-key-data": b64(cert.key)}}],
        "contexts": [{"name": "podserve-test", "context": {"cluster": "podserve-test", "user": user}}],
    }, sort_keys=False)


class ControlPlane:
    """One control plane: its processes, its admin kubeconfig and the region it was set up as."""

    def __init__(self, workdir: Path, *, region: str = "hk", ports: Ports | None = None,
                 binaries: Path | None = None):
        self.workdir = Path(workdir)
        self.region = region
        self.ports = ports or Ports.free()
        self.binaries = binaries or versions.binaries_dir()
        self.server = f"https://127.0.0.1:{self.ports.apiserver}"
        self.kubeconfig = self.workdir / "kubeconfig"
        self.programs: list[Program] = []
        self.timings: dict[str, float] = {}
        self._pki = self.workdir / "pki"

    # --- processes ---------------------------------------------------------------------------

    def _binary(self, name: str) -> Path:
        return built(self.binaries / name, name, "cluster-binaries")

    def _run(self, name: str, args: list[str]) -> Program:
        # setpriv --pdeathsig: it dies with the process that started it, even one killed with SIGKILL (a killed test
        # session left an apiserver running for half an hour); setpriv execs, so the pid is the component's
        program = Program(name, ["setpriv", "--pdeathsig", "KILL", "--", str(self._binary(name)), *args],
                          self.workdir / "logs" / f"{name}.log",
                          env={"PATH": "/usr/bin:/bin", "HOME": str(self.workdir)}, cwd=self.workdir)
        self.programs.append(program)
        return program

    def _tls(self, *, verify: bool = True) -> ssl.SSLContext:
        if not verify:  # a component's own self-signed health endpoint
            return ssl._create_unverified_context()  # noqa: S323 - loopback health check only
        context = ssl.create_default_context(cafile=str(self._pki / "ca.crt"))
        context.load_cert_chain(str(self._pki / "admin.crt"), str(self._pki / "admin.key"))
        return context

    def _ok(self, url: str, context: ssl.SSLContext | None = None) -> bool:
        with urllib.request.urlopen(url, timeout=2, context=context) as response:  # noqa: S310 - loopback
            return response.status == 200

    def _timed(self, what: str, since: float) -> None:
        self.timings[what] = round(time.monotonic() - since, 2)

    def start_processes(self) -> None:
        """Write the keys and start etcd, then the apiserver, then the others; wait until each serves."""
        t0 = time.monotonic()
        p = self.ports
        ca = self._ca = pki.Authority(self._pki)
        serving = ca.issue("apiserver", "kube-apiserver", server=True)
        admin = ca.issue("admin", ADMIN_USER, organization="system:masters", client=True)
        kubelet_client = ca.issue("apiserver-kubelet-client", "kube-apiserver-kubelet-client",
                                  organization="system:masters", client=True)
        kwok_serving = ca.issue("kwok", "kwok", server=True)
        sa_key = pki.service_account_key(self._pki / "sa.key")
        # The aggregation layer (an APIService such as KEDA's external metrics): the apiserver proxies to it as
        # front-proxy-client, a CA of its own, and tells it the caller in the request headers
        front_proxy = pki.Authority(self._pki / "front-proxy")
        proxy_client = front_proxy.issue("front-proxy-client", FRONT_PROXY_CLIENT, client=True)
        identities = {"kube-controller-manager": ca.issue("controller-manager", "system:kube-controller-manager",
                                                          client=True),
                      "kube-scheduler": ca.issue("scheduler", "system:kube-scheduler", client=True)}
        self.kubeconfig.write_text(kubeconfig_text(self.server, ca.cert_path, admin, ADMIN_USER))
        for name, pair in identities.items():
            (self.workdir / f"{name}.kubeconfig").write_text(kubeconfig_text(self.server, ca.cert_path, pair, name))
        for config in self.workdir.glob("*kubeconfig"):  # they hold private keys
            config.chmod(0o600)
        self._timed("keys", t0)

        data = self.workdir / "etcd"
        etcd = self._run("etcd", [
            f"--data-dir={data}", "--name=default", f"--listen-client-urls=http://127.0.0.1:{p.etcd}",
            f"--advertise-client-urls=http://127.0.0.1:{p.etcd}", f"--listen-peer-urls=http://127.0.0.1:{p.etcd_peer}",
            f"--initial-advertise-peer-urls=http://127.0.0.1:{p.etcd_peer}",
            f"--initial-cluster=default=http://127.0.0.1:{p.etcd_peer}", "--unsafe-no-fsync", "--log-level=warn",
            "--listen-metrics-urls="])
        etcd.wait_until(lambda: self._ok(f"http://127.0.0.1:{p.etcd}/health"), START_TIMEOUT_SECONDS, "healthy")
        self._timed("etcd", t0)

        apiserver = self._run("kube-apiserver", [
            f"--etcd-servers=http://127.0.0.1:{p.etcd}", "--bind-address=127.0.0.1", "--advertise-address=127.0.0.1",
            f"--secure-port={p.apiserver}", f"--cert-dir={self._pki}",
            f"--tls-cert-file={serving.cert}", f"--tls-private-key-file={serving.key}",
            f"--client-ca-file={ca.cert_path}", "--authorization-mode=RBAC", "--anonymous-auth=false",
            "--enable-admission-plugins=PodSecurity", f"--service-cluster-ip-range={SERVICE_CIDR}",
            "--allow-privileged=true", f"--service-account-issuer={self.server}",
            f"--service-account-key-file={sa_key}", f"--service-account-signing-key-file={sa_key}",
            f"--kubelet-client-certificate={kubelet_client.cert}", f"--kubelet-client-key={kubelet_client.key}",
            f"--kubelet-certificate-authority={ca.cert_path}", "--kubelet-preferred-address-types=InternalIP",
            "--profiling=false", "--endpoint-reconciler-type=none",
            f"--requestheader-client-ca-file={front_proxy.cert_path}",
            f"--requestheader-allowed-names={FRONT_PROXY_CLIENT}", "--requestheader-username-headers=X-Remote-User",
            "--requestheader-group-headers=X-Remote-Group", "--requestheader-extra-headers-prefix=X-Remote-Extra-",
            f"--proxy-client-cert-file={proxy_client.cert}", f"--proxy-client-key-file={proxy_client.key}"])
        apiserver.wait_until(lambda: self._ok(f"{self.server}/readyz", self._tls()), START_TIMEOUT_SECONDS,
                             "/readyz ok")
        self._timed("kube-apiserver", t0)

        self._install_kwok_crds()
        (self.workdir / SIMULATED_LOGS.name).symlink_to(SIMULATED_LOGS)  # the stages name them relative to kwok's cwd
        self._timed("kwok CRDs", t0)

        common = ["--leader-elect=false", "--bind-address=127.0.0.1", "--profiling=false"]
        kcm_config = self.workdir / "kube-controller-manager.kubeconfig"
        self._run("kube-controller-manager", [
            *common, f"--kubeconfig={kcm_config}", f"--authentication-kubeconfig={kcm_config}",
            f"--authorization-kubeconfig={kcm_config}", f"--secure-port={p.controller_manager}",
            f"--service-account-private-key-file={sa_key}", f"--root-ca-file={ca.cert_path}",
            "--use-service-account-credentials=true", f"--cluster-cidr={POD_CIDR}",
            f"--service-cluster-ip-range={SERVICE_CIDR}", "--controllers=*,-nodeipam",
            f"--horizontal-pod-autoscaler-sync-period={HPA_SYNC_SECONDS}s",
            f"--horizontal-pod-autoscaler-tolerance={HPA_TOLERANCE}"])
        scheduler_config = self.workdir / "kube-scheduler.kubeconfig"
        self._run("kube-scheduler", [
            *common, f"--kubeconfig={scheduler_config}", f"--authentication-kubeconfig={scheduler_config}",
            f"--authorization-kubeconfig={scheduler_config}", f"--secure-port={p.scheduler}"])
        self._run("kwok", [
            f"--kubeconfig={self.kubeconfig}", "--manage-all-nodes=false",
            "--manage-nodes-with-annotation-selector={}={}".format(*FAKE_NODE_ANNOTATION),
            "--node-ip=127.0.0.1", f"--node-port={p.kwok}", f"--server-address=127.0.0.1:{p.kwok}",
            f"--tls-cert-file={kwok_serving.cert}", f"--tls-private-key-file={kwok_serving.key}",
            f"--cidr={POD_CIDR}", "--node-lease-duration-seconds=40", f"--config={STAGES}", "--enable-crds=Logs"])

    def _install_kwok_crds(self) -> None:
        """Create kwok's Logs CRD and wait until it is served (kwok watches it from its start)."""
        from kubernetes import client

        from podserve.testbed.cluster.platform import create_crds

        create_crds(client.ApiextensionsV1Api(self.api_client()), KWOK_CRDS)

    def wait_for_components(self) -> None:
        """Wait until the controller-manager, scheduler and kwok answer their health checks."""
        t0 = time.monotonic()
        unverified = self._tls(verify=False)
        by_name = {program.name: program for program in self.programs}
        checks = {"kube-controller-manager": f"https://127.0.0.1:{self.ports.controller_manager}/healthz",
                  "kube-scheduler": f"https://127.0.0.1:{self.ports.scheduler}/healthz",
                  "kwok": f"https://127.0.0.1:{self.ports.kwok}/healthz"}
        for name, url in checks.items():
            by_name[name].wait_until(lambda url=url: self._ok(url, unverified), START_TIMEOUT_SECONDS, f"{url} ok")
        self._timed("components healthy", t0)

    def check_alive(self) -> None:
        """Raise StartError naming any program that has exited."""
        for program in self.programs:
            program.check_alive()

    def stop(self) -> None:
        """Stop every program, the last started first."""
        for program in reversed(self.programs):
            program.stop(timeout=5.0)  # the data is thrown away: no need to wait out a graceful shutdown
        self.programs = []

    def node_credentials(self, node: str, folder: Path, ip: str) -> None:
        """A node's keys from the cluster's CA: the kubelet's client identity (system:node:<node>, bound to the
        system:node role) in folder/kubelet.kubeconfig, its serving pair for `ip` folder/kubelet.{crt,key}, folder/ca.crt."""
        from kubernetes import client

        folder.mkdir(parents=True, exist_ok=True)
        identity = self._ca.issue("kubelet-client", f"system:node:{node}", organization="system:nodes", client=True,
                                  folder=folder)
        self._ca.issue("kubelet", f"system:node:{node}", server=True, folder=folder, ips=(ip,))
        shutil.copyfile(self._ca.cert_path, folder / "ca.crt")
        config = folder / "kubelet.kubeconfig"
        config.write_text(kubeconfig_text(self.server, self._ca.cert_path, identity, f"system:node:{node}"))
        config.chmod(0o600)
        # The Node authorizer is not on (RBAC only): bind the node's user to the role it would grant.
        client.RbacAuthorizationV1Api(self.api_client()).create_cluster_role_binding({
            "metadata": {"name": f"podserve-node-{node}"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "system:node"},
            "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": f"system:node:{node}"}]})

    @property
    def authority(self) -> pki.Authority:
        """The cluster's CA: what issues a component's certificates (an aggregated API server's, a kubelet's)."""
        return self._ca

    @property
    def ca_path(self) -> Path:
        """The cluster's CA certificate (what a pod's ServiceAccount folder holds as ca.crt)."""
        return self._ca.cert_path

    # --- clients ---------------------------------------------------------------------------

    def api_client(self):
        """A `kubernetes.client.ApiClient` with the admin credentials (a new one each call)."""
        from kubernetes import config

        return config.new_client_from_config(config_file=str(self.kubeconfig))

    def tool_env(self, home: Path | None = None) -> dict[str, str]:
        """The environment for kubectl or helm against this cluster, reading no user config."""
        home = home or self.workdir / "home"
        return {"KUBECONFIG": str(self.kubeconfig), "PATH": "/usr/bin:/bin", "HOME": str(home),
                "XDG_CACHE_HOME": str(home / "cache"), "XDG_CONFIG_HOME": str(home / "config"),
                "XDG_DATA_HOME": str(home / "data")}

    def describe(self) -> str:
        return json.dumps({"server": self.server, "kubeconfig": str(self.kubeconfig), "region": self.region,
                           "timings_s": self.timings})


def start(workdir: Path, *, region: str = "hk", fixed_ports: bool = False, binaries: Path | None = None,
          platform: bool = True) -> ControlPlane:
    """Start a control plane in `workdir`, set up as `region`'s cluster; stop it again if any part fails."""
    from podserve.testbed.cluster import platform as platform_setup

    workdir = Path(workdir)
    if workdir.exists():
        shutil.rmtree(workdir)
    workdir.mkdir(parents=True)
    plane = ControlPlane(workdir, region=region, ports=FIXED_PORTS if fixed_ports else None, binaries=binaries)
    t0 = time.monotonic()
    try:
        plane.start_processes()
        if platform:
            platform_setup.set_up(plane)
        plane.wait_for_components()
        if platform:
            platform_setup.wait_until_ready(plane)
        plane.check_alive()
    except BaseException:
        plane.stop()
        raise
    plane.timings["total"] = round(time.monotonic() - t0, 2)
    return plane
