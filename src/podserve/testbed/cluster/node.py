"""One real worker node for the local cluster: containerd + runc + CNI, a kubelet, the fake GPU device plugin.

    node = RealNode.start(plane, workdir, mirrors=[Mirror("registry.hk.example.com", "127.0.0.1:5000", user, pw)])
    node.name, node.pod_subnet; ...; node.stop()

Real: the kubelet (v1.35.4, built from cluster/go.mod's Kubernetes module), Debian's containerd
1.6 with its CRI plugin and Debian's runc, Debian's CNI plugins (bridge, host-local, loopback), and the
NetworkPolicy engine kube-network-policies (netpol.py: built from Go modules, enforcing the cluster's
NetworkPolicies on the node's pods with nftables).
Simulated: the GPUs only: fake-gpu-plugin (cluster/cmd/fake-gpu-plugin) advertises
nvidia.com/gpu over the kubelet's real device-plugin API, with nothing behind it. No kube-proxy
runs: ClusterIPs do not route; pod addresses (POD_SUBNET, on the bridge BRIDGE) do, from this
machine only. The pod network has no default route and no NAT: a pod reaches its own subnet
and nothing else.

One real node per machine (the kubelet's device-plugin socket path is fixed): LOCK serialises
starts. Everything the node makes lives under fixed names (STATE, DATA's kubelet folder, the
cgroup CGROUP_ROOT, the bridge, KUBE-/CNI- iptables chains), so `clean_up()`, called by every
start while holding the lock, removes what a crashed run left: its processes, mounts, network
namespaces (NETNS/cni-*), cgroups, bridge, iptables chains and the policy engine's nftables table. containerd's
image store (DATA/containerd) is
kept between runs, so pulls are cache hits.
"""

from __future__ import annotations

import base64
import dataclasses
import gzip
import hashlib
import io
import json
import os
import re
import shutil
import signal
import subprocess
import tarfile
import time
from pathlib import Path

from podserve.testbed.cluster import netpol, versions
from podserve.testbed.locks import wait_for_lock
from podserve.testbed.processes import Program, StartError, free_port, poll_until

NODE_NAME = "real-0"
STATE = Path("/run/podserve-node")
#: Not under /var/lib: BuildKit jobs (podserve.testbed.image.runner) overlay /var/lib, and an overlay whose lower
#: layer holds containerd's live overlay snapshots fails to mount.
DATA = Path("/var/cache/podserve-node")
LOCK = Path("/run/podserve-node.lock")
#: The kubelet's device-plugin folder: fixed in the kubelet (pluginapi.KubeletSocket), whatever its root dir.
DEVICE_PLUGINS = Path("/var/lib/kubelet/device-plugins")
PLUGIN_SOCKET = "podserve-fake-gpu.sock"
KUBELET_SOCKET = "kubelet.sock"  # the kubelet's device-plugin registration socket
#: The kubelet's device manager's record of which pod holds which GPU. A killed run's record names pods that are
#: gone, and until its pod sources sync a new kubelet counts their GPUs as taken: the first GPU pod then fails
#: admission (UnexpectedAdmissionError, "Available: 0"). clean_up removes it with the pods it describes.
DEVICE_CHECKPOINT = "kubelet_internal_checkpoint"
BRIDGE = "psnode0"
POD_SUBNET = "10.245.0.0/24"
#: The node's own address: the bridge's, the pods' gateway address (CNI's isGateway); the kubelet listens there.
NODE_IP = "10.245.0.1"
#: The last address CNI gives a pod; above it, the mesh's gateway pod joins the bridge (podnetwork.PodNetwork.attach).
POD_RANGE_END = "10.245.0.239"
GATEWAY_ADDRESS = "10.245.0.250"
CGROUP_ROOT = "podserve-node"
CNI_BIN = Path("/usr/lib/cni")
#: Where containerd 1.6's CRI mounts the pods' network namespaces (fixed there: netns_mounts_under is 1.7's).
#: Only a CRI runtime's CNI makes cni-* namespaces; on these machines that is this node's containerd alone.
NETNS = Path("/run/netns")
#: The sandbox image's name (what the kubelet and containerd expect); built here from cluster/cmd/pause.
SANDBOX_IMAGE = "registry.k8s.io/pause:3.10"
#: Debian's packages the node runs, pinned (the Makefile's node-tools installs them).
DEBIAN = {"containerd": "1.6.20~ds1-1+deb12u3", "containernetworking-plugins": "1.1.1+ds1-3+b5",
          "iptables": "1.8.9-2", "nftables": "1.0.6-2+deb12u2", "runc": "1.1.5+ds1-1+deb12u1"}
DEFAULT_GPUS = 4
#: The node's own pool label and its GPU pool's taint: pods land there only when their conf says so.
POOL_LABEL, POOL = "podserve.io/pool", "real-node"
TAINTS = [{"key": "nvidia.com/gpu", "effect": "NoSchedule"}]
START_TIMEOUT_SECONDS = 90.0
LOCK_TIMEOUT_SECONDS = 600.0
#: Hard eviction on memory only ("0%" turns a signal off). The node's disk is the machine's own, shared with the rest
#: of the run (BuildKit, the registry, caches) and with whatever else shares the machine's storage. Under disk
#: pressure the kubelet taints the node and deletes every image no container uses, the sandbox image among them:
#: containerd 1.6 does not pin it (1.7 does) and nothing here can pull it again, so the node stays Ready and no pod
#: of it ever leaves ContainerCreating (kubernetes#81756). A full disk fails the run loudly elsewhere (ENOSPC).
EVICTION_HARD = {"memory.available": "100Mi", "nodefs.available": "0%", "nodefs.inodesFree": "0%",
                 "imagefs.available": "0%", "imagefs.inodesFree": "0%"}


@dataclasses.dataclass(frozen=True)
class Mirror:
    """A registry name the manifests use (registry.hk.example.com), served by a local registry (127.0.0.1:port).

    `prefix`: the repositories' folder in the local registry (`make image` pushes hk's images under hk/):
    registry.hk.example.com/like/svc is pulled as 127.0.0.1:port/hk/like/svc.
    """
    name: str
    host: str
    username: str = ""
    password: str = ""
    prefix: str = ""


def mirrors_for(registry, conf) -> list[Mirror]:
    """Mirrors pulling each region's registry name from `registry`, under the region's folder, as `make image` and
    the pipeline's checkout push them (<local registry>/<region>/<team>/<service>)."""
    from podserve.testbed.image.registry import USER

    password = registry.secrets()[0]
    return [Mirror(region.registry, registry.host, USER, password, prefix=name)
            for name, region in sorted(conf.regions.items())]


def node_labels(region: str, pool: dict[str, str] | None = None) -> dict[str, str]:
    """The real node's labels: a pool's (by default its own, which no conf pool selects unless a test conf says so)
    and the region."""
    return {**(pool or {POOL_LABEL: POOL}), "topology.kubernetes.io/region": region}


def pull_secret(name: str, host: str, username: str, password: str) -> dict:
    """A kubernetes.io/dockerconfigjson Secret that logs the kubelet's pulls into `host`."""
    auth = base64.b64encode(f"{username}:{password}".encode()).decode()
    config = json.dumps({"auths": {host: {"username": username, "password": password, "auth": auth}}})
    return {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name}, "type": "kubernetes.io/dockerconfigjson",
            "data": {".dockerconfigjson": base64.b64encode(config.encode()).decode()}}


def missing_pieces(binaries: Path | None = None) -> list[str]:
    """What the node lacks on this machine: its built binaries and Debian's programs (empty when it can start)."""
    binaries = binaries or versions.binaries_dir()
    lacking = [str(binaries / name) for name in versions.NODE_BINARIES if not (binaries / name).is_file()]
    lacking += [program for program in ("containerd", "ctr", "runc", "iptables-save", "ip", netpol.NFT, "unshare")
                if shutil.which(program, path="/usr/sbin:/usr/bin:/sbin:/bin") is None]
    lacking += [str(path) for path in (netpol.binary_path(),) if not path.is_file()]
    lacking += [str(CNI_BIN / plugin) for plugin in ("bridge", "host-local", "loopback")
                if not (CNI_BIN / plugin).is_file()]
    return lacking


# --- cleaning up after a crashed run ------------------------------------------------------------


def _ours(argv: list[str], binaries: Path) -> bool:
    """A process of the node: one naming its state folders (containerd, its shims), or its kubelet or plugin."""
    return any(str(STATE) in arg or str(DATA) in arg for arg in argv) or bool(argv) and argv[0] in (
        str(binaries / "kubelet"), str(binaries / "fake-gpu-plugin"), str(netpol.binary_path()))


def _kill_leftover_processes(binaries: Path) -> list[int]:
    """SIGKILL a previous run's containerd, shims, kubelet, plugin, and every process in the node's cgroups."""
    killed = []
    me = os.getpid()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == me:
            continue
        try:
            argv = (entry / "cmdline").read_bytes().decode(errors="replace").split("\0")
        except OSError:
            continue
        if _ours(argv, binaries):
            killed.append(int(entry.name))
    for procs in Path("/sys/fs/cgroup").glob(f"*/{CGROUP_ROOT}/**/cgroup.procs"):
        try:
            killed += [int(pid) for pid in procs.read_text().split()]
        except OSError:
            continue
    for pid in set(killed):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return sorted(set(killed))


def _unmount_leftovers() -> list[str]:
    """Detach every mount under STATE, DATA and the device-plugin folder, deepest first."""
    points = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        point = line.split()[4].encode().decode("unicode_escape")
        if any(point == str(root) or point.startswith(f"{root}/") for root in (STATE, DATA, DEVICE_PLUGINS)):
            points.append(point)
    for point in sorted(set(points), key=len, reverse=True):
        subprocess.run(["umount", "-l", point], capture_output=True, timeout=30)
    return points


def _remove_network_namespaces() -> list[str]:
    """Unmount and remove the pods' network namespaces (containerd 1.6's CRI names them NETNS/cni-<uuid>)."""
    removed = []
    for netns in sorted(NETNS.glob("cni-*")):
        subprocess.run(["umount", "-l", str(netns)], capture_output=True, timeout=30)
        netns.unlink(missing_ok=True)
        removed.append(netns.name)
    return removed


def _remove_cgroups() -> None:
    for controller in Path("/sys/fs/cgroup").iterdir():
        root = controller / CGROUP_ROOT
        if root.is_dir():
            for folder in sorted((p for p in root.rglob("*") if p.is_dir()), key=lambda p: len(p.parts),
                                 reverse=True) + [root]:
                try:
                    folder.rmdir()
                except OSError:
                    pass


def _remove_iptables_chains() -> list[str]:
    """Drop the KUBE-* and CNI-* chains (the kubelet's canaries, CNI's) and the rules that jump to them."""
    removed = []
    for table in ("filter", "nat", "mangle"):
        saved = subprocess.run(["iptables-save", "-t", table], capture_output=True, text=True, timeout=30)
        if saved.returncode != 0:
            continue
        lines = saved.stdout.splitlines()
        ours = [line for line in lines if re.search(r"^(:|-A )(KUBE-|CNI-)|-j (KUBE-|CNI-)", line)]
        if not ours:
            continue
        removed += [f"{table}: {line}" for line in ours]
        kept = "\n".join(line for line in lines if line not in ours) + "\n"
        restored = subprocess.run(["iptables-restore", "-T", table], input=kept, capture_output=True, text=True,
                                  timeout=30)
        if restored.returncode != 0:
            raise StartError(f"removing the node's iptables chains from table {table} failed: "
                             f"{restored.stderr.strip()}")
    return removed


def clean_up(binaries: Path | None = None) -> dict[str, list]:
    """Remove what a previous (crashed) run of the node left; call with LOCK held. Returns what it found."""
    binaries = binaries or versions.binaries_dir()
    found = {"processes": _kill_leftover_processes(binaries)}
    if found["processes"]:
        time.sleep(0.5)  # SIGKILL is delivered at once, but a process leaves its cgroup only once reaped
    found["mounts"] = _unmount_leftovers()
    found["netns"] = _remove_network_namespaces()
    _remove_cgroups()
    link = subprocess.run(["ip", "link", "delete", BRIDGE], capture_output=True, timeout=30)
    found["bridge"] = [BRIDGE] if link.returncode == 0 else []
    found["iptables"] = _remove_iptables_chains()
    found["nftables"] = [" ".join(netpol.TABLE)] if netpol.remove_table() else []
    shutil.rmtree(STATE, ignore_errors=True)
    shutil.rmtree(DATA / "kubelet", ignore_errors=True)
    found["device checkpoint"] = [DEVICE_CHECKPOINT] if (DEVICE_PLUGINS / DEVICE_CHECKPOINT).exists() else []
    for name in (PLUGIN_SOCKET, KUBELET_SOCKET, DEVICE_CHECKPOINT):
        (DEVICE_PLUGINS / name).unlink(missing_ok=True)
    return found


# --- the configuration files ----------------------------------------------------------------------


def containerd_config(cni_conf: Path, hosts_dir: Path, mirrors: list[Mirror]) -> str:
    """containerd's config.toml: our own root, state and socket; CRI with runc, CNI, the local registries."""
    auths = "".join(
        f'\n[plugins."io.containerd.grpc.v1.cri".registry.configs."{m.host}".auth]\n'
        f'  username = {json.dumps(m.username)}\n  password = {json.dumps(m.password)}\n'
        for m in {m.host: m for m in mirrors if m.username}.values())  # one login per registry host
    return f"""version = 2
root = "{DATA / 'containerd'}"
state = "{STATE / 'containerd'}"
disabled_plugins = ["io.containerd.internal.v1.opt", "io.containerd.snapshotter.v1.aufs",
  "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper",
  "io.containerd.tracing.processor.v1.otlp"]
[grpc]
  address = "{STATE / 'containerd.sock'}"
[ttrpc]
  address = "{STATE / 'containerd.sock.ttrpc'}"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{SANDBOX_IMAGE}"
  restrict_oom_score_adj = true
  enable_unprivileged_ports = false
[plugins."io.containerd.grpc.v1.cri".containerd]
  snapshotter = "overlayfs"
  default_runtime_name = "runc"
[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
  runtime_type = "io.containerd.runc.v2"
[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
  SystemdCgroup = false
  BinaryName = "/usr/sbin/runc"
[plugins."io.containerd.grpc.v1.cri".cni]
  bin_dir = "{CNI_BIN}"
  conf_dir = "{cni_conf}"
  max_conf_num = 1
[plugins."io.containerd.grpc.v1.cri".registry]
  config_path = "{hosts_dir}"
{auths}"""


def registry_hosts(mirror: Mirror) -> str:
    """certs.d/<name>/hosts.toml: pull <name>/... from the local registry (under its prefix) over plain HTTP on
    loopback. With a prefix the URL names the API root itself (override_path, containerd 1.6's hosts.toml)."""
    root = f"http://{mirror.host}/v2/{mirror.prefix}" if mirror.prefix else f"http://{mirror.host}"
    override = "override_path = true\n" if mirror.prefix else ""
    return (f'server = "{root}"\n{override}\n[host."{root}"]\n'
            f'  capabilities = ["pull", "resolve"]\n' + (f"  {override}" if override else ""))


def cni_config() -> dict:
    """The pod network: a bridge with the node's address, no NAT, no default route in the pods."""
    return {"cniVersion": "0.4.0", "name": "podserve-node", "plugins": [
        {"type": "bridge", "bridge": BRIDGE, "isGateway": True, "isDefaultGateway": False, "ipMasq": False,
         "hairpinMode": True,
         "ipam": {"type": "host-local", "routes": [],
                  "ranges": [[{"subnet": POD_SUBNET, "gateway": NODE_IP, "rangeEnd": POD_RANGE_END}]],
                  "dataDir": str(STATE / "cni-ipam")}},
        {"type": "loopback"}]}


def kubelet_config(pki: Path, port: int, healthz_port: int) -> dict:
    """The KubeletConfiguration: cgroup v1 allowed (cgroupfs), loopback only, x509 from the cluster's CA."""
    return {
        "apiVersion": "kubelet.config.k8s.io/v1beta1", "kind": "KubeletConfiguration",
        "failCgroupV1": False, "cgroupDriver": "cgroupfs", "cgroupRoot": f"/{CGROUP_ROOT}", "failSwapOn": False,
        "containerRuntimeEndpoint": f"unix://{STATE / 'containerd.sock'}",
        "address": NODE_IP, "port": port, "healthzBindAddress": "127.0.0.1", "healthzPort": healthz_port,
        "readOnlyPort": 0, "tlsCertFile": str(pki / "kubelet.crt"), "tlsPrivateKeyFile": str(pki / "kubelet.key"),
        "authentication": {"x509": {"clientCAFile": str(pki / "ca.crt")}, "webhook": {"enabled": False},
                           "anonymous": {"enabled": False}},
        "authorization": {"mode": "AlwaysAllow"},  # only the apiserver's client cert (system:masters) gets past x509
        "podCIDR": POD_SUBNET, "maxPods": 30, "evictionHard": EVICTION_HARD,
        "imageGCHighThresholdPercent": 100, "imageGCLowThresholdPercent": 99,
        "serializeImagePulls": False, "resolvConf": "/etc/resolv.conf", "nodeStatusReportFrequency": "10s",
        "syncFrequency": "10s", "fileCheckFrequency": "10s", "protectKernelDefaults": False,
    }


def pause_image_archive(pause_binary: Path, out: Path) -> Path:
    """An OCI image archive (one layer: /pause) named SANDBOX_IMAGE, for `ctr images import`."""
    layer_tar = io.BytesIO()
    with tarfile.open(fileobj=layer_tar, mode="w") as tar:
        info = tarfile.TarInfo("pause")
        info.size, info.mode, info.mtime = pause_binary.stat().st_size, 0o755, 0
        with pause_binary.open("rb") as handle:
            tar.addfile(info, handle)
    raw = layer_tar.getvalue()
    layer = gzip.compress(raw, mtime=0)
    config = json.dumps({"architecture": "amd64", "os": "linux",
                         "config": {"Entrypoint": ["/pause"], "User": "65535:65535"},
                         "rootfs": {"type": "layers", "diff_ids": [f"sha256:{hashlib.sha256(raw).hexdigest()}"]}
                         }).encode()

    def blob(data: bytes, media: str) -> tuple[dict, bytes]:
        return {"mediaType": media, "digest": f"sha256:{hashlib.sha256(data).hexdigest()}", "size": len(data)}, data

    config_d, _ = blob(config, "application/vnd.oci.image.config.v1+json")
    layer_d, _ = blob(layer, "application/vnd.oci.image.layer.v1.tar+gzip")
    manifest = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                           "config": config_d, "layers": [layer_d]}).encode()
    manifest_d, _ = blob(manifest, "application/vnd.oci.image.manifest.v1+json")
    index = {"schemaVersion": 2, "manifests": [{**manifest_d, "platform": {"architecture": "amd64", "os": "linux"},
                                                "annotations": {"io.containerd.image.name": SANDBOX_IMAGE,
                                                                "org.opencontainers.image.ref.name": "3.10"}}]}
    with tarfile.open(out, "w") as tar:
        for name, data in [("oci-layout", b'{"imageLayoutVersion": "1.0.0"}'), ("index.json", json.dumps(index).encode()),
                           *[(f"blobs/sha256/{d['digest'].split(':')[1]}", data)
                             for d, data in ((config_d, config), (layer_d, layer), (manifest_d, manifest))]]:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return out


# --- the node ---------------------------------------------------------------------------------------


class RealNode:
    """The node's processes (containerd, kubelet, fake-gpu-plugin), its name and its lock."""

    def __init__(self, plane, workdir: Path, binaries: Path, lock_fd: int):
        self.plane, self.workdir, self.binaries, self._lock_fd = plane, Path(workdir), binaries, lock_fd
        self.name = NODE_NAME
        self.pod_subnet = POD_SUBNET
        self.programs: list[Program] = []
        self.policies: netpol.Agent | None = None
        self.timings: dict[str, float] = {}
        self.cleaned: dict[str, list] = {}

    @classmethod
    def start(cls, plane, workdir: Path, *, mirrors: list[Mirror] = (), gpus: int = DEFAULT_GPUS,
              region: str = "hk", taints: list[dict] = TAINTS, pool: dict[str, str] | None = None,
              binaries: Path | None = None, after_lock=None) -> "RealNode":
        """Clean up, start containerd, the kubelet and the plugin; return once the node is Ready with its GPUs.

        `after_lock()` is called with the lock held, before the clean-up (a test plants a crashed run's leftovers).
        """
        binaries = binaries or versions.binaries_dir()
        lacking = missing_pieces(binaries)
        if lacking:
            raise StartError(f"the real node lacks {', '.join(lacking)}: run `make node-tools cluster-binaries netpol`")
        if gpus < 1:
            raise StartError(f"gpus={gpus}: the fake GPU plugin advertises at least 1 (3 or more for a surge)")
        t0 = time.monotonic()
        fd = wait_for_lock(LOCK, LOCK_TIMEOUT_SECONDS, "the real node")
        node = cls(plane, workdir, binaries, fd)
        node.timings["lock"] = round(time.monotonic() - t0, 2)
        try:
            if after_lock is not None:
                after_lock()
            node.cleaned = clean_up(binaries)
            node.timings["clean up"] = round(time.monotonic() - t0, 2)
            node._start(list(mirrors), gpus, node_labels(region, pool), taints)
        except BaseException:
            node.stop()
            raise
        node.timings["total"] = round(time.monotonic() - t0, 2)
        return node

    def _run(self, name: str, argv: list, env: dict | None = None) -> Program:
        # setpriv --pdeathsig: each dies with the process that started it, even one killed with SIGKILL
        program = Program(name, ["setpriv", "--pdeathsig", "KILL", "--", *map(str, argv)],
                          self.workdir / "logs" / f"{name}.log",
                          env=env or {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}, cwd=self.workdir)
        self.programs.append(program)
        return program

    def _start(self, mirrors: list[Mirror], gpus: int, labels: dict, taints: list) -> None:
        t0 = time.monotonic()
        _make_cgroup_root()
        _make_bridge()
        self.workdir.mkdir(parents=True, exist_ok=True)
        for folder in (STATE, DATA / "kubelet", DATA / "containerd", DEVICE_PLUGINS):
            folder.mkdir(parents=True, exist_ok=True)
        cni_conf, hosts = self.workdir / "cni", self.workdir / "certs.d"
        cni_conf.mkdir(exist_ok=True)
        (cni_conf / "10-podserve-node.conflist").write_text(json.dumps(cni_config(), indent=1))
        hosts.mkdir(exist_ok=True)
        for mirror in mirrors:
            self.add_registry(mirror)
        config = self.workdir / "containerd.toml"
        config.write_text(containerd_config(cni_conf, hosts, mirrors))
        config.chmod(0o600)  # registry credentials
        containerd = self._run("containerd", ["containerd", "--config", config, "--log-level", "warn"])
        socket = STATE / "containerd.sock"
        containerd.wait_until(lambda: self.ctr("version").returncode == 0, START_TIMEOUT_SECONDS,
                              f"answering on {socket}")
        archive = pause_image_archive(self.binaries / "pause", self.workdir / "pause.tar")
        imported = self.ctr("images", "import", archive)
        if imported.returncode != 0:
            raise StartError(f"importing the sandbox image failed: {imported.stderr.strip()}")
        self.timings["containerd"] = round(time.monotonic() - t0, 2)

        pki = self.workdir / "pki"
        self.plane.node_credentials(self.name, pki, NODE_IP)
        port, healthz = free_port(), free_port()
        (self.workdir / "kubelet.yaml").write_text(json.dumps(kubelet_config(pki, port, healthz)))
        kubelet = self._run("kubelet", [
            self.binaries / "kubelet", f"--config={self.workdir / 'kubelet.yaml'}",
            f"--kubeconfig={pki / 'kubelet.kubeconfig'}", f"--root-dir={DATA / 'kubelet'}",
            f"--hostname-override={self.name}", f"--node-ip={NODE_IP}", "--v=1"])
        kubelet.wait_until(lambda: _http_ok(f"http://127.0.0.1:{healthz}/healthz"), START_TIMEOUT_SECONDS,
                           "healthz ok")
        # The kubelet's device manager empties its plugin folder when it starts, after healthz may answer, and then
        # opens kubelet.sock there (clean_up removed the last run's): a plugin socket made before that is deleted.
        kubelet.wait_until((DEVICE_PLUGINS / KUBELET_SOCKET).exists, START_TIMEOUT_SECONDS,
                           f"its device-plugin socket {DEVICE_PLUGINS / KUBELET_SOCKET}")
        self.timings["kubelet"] = round(time.monotonic() - t0, 2)
        self._run("fake-gpu-plugin", [self.binaries / "fake-gpu-plugin", f"--count={gpus}",
                                       f"--socket-dir={DEVICE_PLUGINS}/"])
        self._label(labels, taints)
        kubelet.wait_until(lambda: self._ready_with(gpus), START_TIMEOUT_SECONDS,
                           f"node {self.name} Ready with {gpus} nvidia.com/gpu")
        self.timings["ready"] = round(time.monotonic() - t0, 2)
        # before any pod starts: from its first packet, every pod a NetworkPolicy selects is held to it
        self.policies = netpol.Agent.start(self.plane, self.workdir, self.name, self._run)
        self.timings["network policies"] = round(time.monotonic() - t0, 2)

    def add_registry(self, mirror: Mirror) -> None:
        """Pull `mirror.name`'s images from its local registry from now on (containerd reads certs.d at each pull).

        Credentials given at start go into containerd's config; a registry added later needs the pods'
        imagePullSecrets (`pull_secret`), as a cluster whose registry wants a login does.
        """
        folder = self.workdir / "certs.d" / mirror.name
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "hosts.toml").write_text(registry_hosts(mirror))

    def ctr(self, *args) -> subprocess.CompletedProcess:
        """containerd's own client on the node's socket, in the kubelet's namespace (k8s.io)."""
        return subprocess.run(["ctr", "--address", str(STATE / "containerd.sock"), "-n", "k8s.io", *map(str, args)],
                              capture_output=True, text=True, timeout=120)

    def _core(self):
        from kubernetes import client

        return client.CoreV1Api(self.plane.api_client())

    def _label(self, labels: dict, taints: list) -> None:
        core = self._core()
        poll_until(lambda: core.list_node(field_selector=f"metadata.name={self.name}").items,
                   f"node {self.name} registered", START_TIMEOUT_SECONDS)
        if labels or taints:
            core.patch_node(self.name, {"metadata": {"labels": labels}, "spec": {"taints": taints or None}})

    def _ready_with(self, gpus: int) -> bool:
        node = self._core().read_node(self.name)
        ready = any(c.type == "Ready" and c.status == "True" for c in node.status.conditions or [])
        return ready and (node.status.allocatable or {}).get("nvidia.com/gpu") == str(gpus)

    def program(self, name: str) -> Program:
        """The node's program called `name` (containerd, kubelet, fake-gpu-plugin)."""
        return next(program for program in self.programs if program.name == name)

    def diagnostics(self, lines: int = 25) -> str:
        """What the node says of itself, for a failed test's report: its conditions and taints, its programs,
        and the newest errors and warnings in containerd's and the kubelet's logs."""
        said = []
        try:
            node = self._core().read_node(self.name)
            said.append("conditions: " + "; ".join(f"{c.type}={c.status} ({c.reason}: {c.message})"
                                                   for c in node.status.conditions or []))
            said.append("taints: " + (", ".join(f"{t.key}:{t.effect}" for t in node.spec.taints or []) or "none"))
        except Exception as exc:  # noqa: BLE001 - a report must not fail: say why the node could not be read
            said.append(f"node {self.name} could not be read: {exc}")
        try:
            images = self.ctr("images", "ls", "-q")
            said.append(f"containerd could not list its images: {images.stderr.strip()}" if images.returncode else
                        f"sandbox image {SANDBOX_IMAGE}: " + ("present" if SANDBOX_IMAGE in images.stdout.split()
                                                              else "MISSING: no pod of the node can start"))
        except subprocess.TimeoutExpired:
            said.append("containerd did not list its images within 120 s")
        disk = shutil.disk_usage(DATA)
        said.append(f"disk of {DATA}: {disk.free / 2**30:.1f} GiB free of {disk.total / 2**30:.1f}")
        for program in self.programs:
            said.append(f"{program.name}: " + ("running" if program.alive() else
                                               f"exited with {program.process.returncode}"))
            loud = [line for line in program.log_tail(5000).splitlines() if _loud(line)][-lines:]
            said.append(f"  its last {len(loud)} errors and warnings ({program.log_path})" +
                        "".join(f"\n    {line}" for line in loud))
        return "\n".join(said)

    def check_alive(self) -> None:
        """Raise StartError naming any of the node's programs that has exited."""
        for program in self.programs:
            program.check_alive()

    def stop(self) -> None:
        """Stop the plugin and the kubelet, remove the pods' containers, stop containerd, clean up, unlock."""
        for program in reversed(self.programs):
            program.stop(timeout=10.0)
        self.programs = []
        self.policies = None
        if self._lock_fd is not None:
            clean_up(self.binaries)  # the pods' processes, mounts, netns: nothing outlives the node
            os.close(self._lock_fd)  # releases the lock
            self._lock_fd = None


def _make_bridge() -> None:
    """The pod bridge with the node's address (NODE_IP) before the kubelet starts: the kubelet refuses a loopback
    node IP, and the apiserver reaches the kubelet at this address (a local one: it never leaves the machine)."""
    for command in (["ip", "link", "add", BRIDGE, "type", "bridge"],
                    ["ip", "addr", "add", f"{NODE_IP}/{POD_SUBNET.split('/')[1]}", "dev", BRIDGE],
                    ["ip", "link", "set", BRIDGE, "up"]):
        done = subprocess.run(command, capture_output=True, text=True, timeout=30)
        if done.returncode != 0:
            raise StartError(f"{' '.join(command)} failed: {done.stderr.strip()}")


def _make_cgroup_root() -> None:
    """The kubelet's cgroupRoot must exist in every hierarchy (cpuset's with the parent's CPUs and memory nodes)."""
    for controller in Path("/sys/fs/cgroup").iterdir():
        if controller.is_dir() and not controller.is_symlink() and controller.name != "unified":
            (controller / CGROUP_ROOT).mkdir(exist_ok=True)
    cpuset = Path("/sys/fs/cgroup/cpuset")
    for name in ("cpuset.cpus", "cpuset.mems"):
        if (cpuset / name).is_file():
            (cpuset / CGROUP_ROOT / name).write_text((cpuset / name).read_text())


def _loud(line: str) -> bool:
    """An error or warning line of containerd (level=error) or of the kubelet (klog's E1126 / W1126 prefix)."""
    return "level=error" in line or "level=warning" in line or re.match(r"[EW]\d{4} ", line) is not None


def _http_ok(url: str) -> bool:
    import urllib.request

    with urllib.request.urlopen(url, timeout=2) as response:  # noqa: S310 - loopback
        return response.status == 200
