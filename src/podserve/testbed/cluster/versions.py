"""What the control plane is built from: versions read from cluster/go.mod, kwok's pin, the binary cache key."""

from __future__ import annotations

import re
from pathlib import Path

from podserve.testbed.machine_cache import inputs_digest, shared_cache

REPO = Path(__file__).resolve().parents[4]
#: Our Go module: its go.mod pins k8s.io/kubernetes and etcd (the one source of those versions).
GO_MODULE = REPO / "cluster"
#: kwok is installed by module path at this version, outside our module (its own dependency versions).
KWOK_VERSION = "v0.8.0"
KWOK_PACKAGE = "sigs.k8s.io/kwok/cmd/kwok"
#: The binaries a control plane needs, in build order.
KUBE_BINARIES = ("kube-apiserver", "kube-controller-manager", "kube-scheduler")
#: The real node's binaries: the kubelet (same module), and our own cmd/fake-gpu-plugin and cmd/pause.
NODE_BINARIES = ("kubelet", "fake-gpu-plugin", "pause")
BINARIES = KUBE_BINARIES + ("etcd", "kwok") + NODE_BINARIES


def required_version(module: str, go_mod: Path = GO_MODULE / "go.mod") -> str:
    """Return the version go.mod requires of `module` (e.g. k8s.io/kubernetes -> v1.35.4)."""
    match = re.search(rf"^\s*(?:require\s+)?{re.escape(module)}\s+(v\S+)", go_mod.read_text(), re.MULTILINE)
    if not match:
        raise LookupError(f"{go_mod} does not require {module}")
    return match.group(1)


def kubernetes_version() -> str:
    return required_version("k8s.io/kubernetes")


def etcd_version() -> str:
    return required_version("go.etcd.io/etcd/server/v3")


def cache_key() -> str:
    """The binaries' folder name: the versions, and a digest of our module (go.mod, go.sum, cmd/) they are built from."""
    module = inputs_digest(GO_MODULE / "go.mod", GO_MODULE / "go.sum", GO_MODULE / "tools.go", GO_MODULE / "cmd")
    return f"k8s-{kubernetes_version()}_etcd-{etcd_version()}_kwok-{KWOK_VERSION}_{module}"


def binaries_dir(tools: Path | None = None) -> Path:
    """Where the built binaries live: <tools>/cluster/<cache_key()>, the machine's shared cache by default."""
    return (tools or shared_cache()) / "cluster" / cache_key()
