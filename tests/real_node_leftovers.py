"""What a crashed run of the real node leaves behind, planted for real so that the next start must remove it."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from podserve.testbed.cluster import netpol, node

MOUNT = node.STATE / "leftover-tmpfs"
NETNS = "cni-podserve-leftover"
CHAIN = "KUBE-PODSERVE-LEFTOVER"
CGROUP = Path("/sys/fs/cgroup/memory") / node.CGROUP_ROOT / "leftover"
CHECKPOINT = node.DEVICE_PLUGINS / node.DEVICE_CHECKPOINT
#: A chain in the policy engine's table that the engine itself never makes: the running engine's table is not it.
NFT_CHAIN = "podserve-leftover"
#: A pod of the crashed run that held every GPU (its record's checksum is not the kubelet's: it is found by name).
LEFTOVER_POD = "00000000-0000-4000-8000-1eff0ce0ca11"


def _run(*argv: str) -> None:
    subprocess.run(argv, check=True, capture_output=True, timeout=30)


def plant() -> list[tuple[str, str]]:
    """A tmpfs under the node's state, a cni-* network namespace, the bridge, a KUBE- chain jumped to from INPUT,
    a memory cgroup with a process in it, the device manager's record of a gone pod holding every GPU, the policy
    engine's nftables table and its chain (a killed agent's: left, its rules would drop every selected pod's packets).
    Returns (kind, name) for each."""
    MOUNT.mkdir(parents=True, exist_ok=True)
    _run("mount", "-t", "tmpfs", "leftover", str(MOUNT))
    _run("ip", "netns", "add", NETNS)
    subprocess.run(["ip", "link", "add", node.BRIDGE, "type", "bridge"], capture_output=True, timeout=30)
    _run("iptables", "-N", CHAIN)
    _run("iptables", "-A", "INPUT", "-j", CHAIN)
    CGROUP.mkdir(parents=True, exist_ok=True)
    sleeper = subprocess.Popen(["sleep", "600"], start_new_session=True)  # a container's process, orphaned
    (CGROUP / "cgroup.procs").write_text(str(sleeper.pid))
    CHECKPOINT.parent.mkdir(parents=True, exist_ok=True)
    CHECKPOINT.write_text(json.dumps({"Data": {"PodDeviceEntries": [
        {"PodUID": LEFTOVER_POD, "ContainerName": "c", "ResourceName": "nvidia.com/gpu",
         "DeviceIDs": {"-1": [f"fake-gpu-{i}" for i in range(node.DEFAULT_GPUS)]}}]}, "Checksum": 0}))
    table = " ".join(netpol.TABLE)
    _run("nft", "add", "table", *netpol.TABLE)
    _run("nft", "add", "chain", *netpol.TABLE, NFT_CHAIN, "{ type filter hook postrouting priority 95 ; }")
    return [("mount", str(MOUNT)), ("netns", NETNS), ("bridge", node.BRIDGE), ("iptables", CHAIN), ("nftables", table),
            ("process", str(sleeper.pid)), ("device checkpoint", node.DEVICE_CHECKPOINT)]


def still_there() -> list[str]:
    """Which of the planted leftovers exist now."""
    left = []
    if str(MOUNT) in Path("/proc/self/mountinfo").read_text():
        left.append(f"mount {MOUNT}")
    if (node.NETNS / NETNS).exists():
        left.append(f"netns {NETNS}")
    if CHAIN in subprocess.run(["iptables-save", "-t", "filter"], capture_output=True, text=True).stdout:
        left.append(f"iptables chain {CHAIN}")
    if CGROUP.exists():
        left.append(f"cgroup {CGROUP}")
    if netpol.nft("list", "chain", *netpol.TABLE, NFT_CHAIN).returncode == 0:
        left.append(f"nftables chain {NFT_CHAIN} of table {' '.join(netpol.TABLE)}")
    if CHECKPOINT.exists() and LEFTOVER_POD in CHECKPOINT.read_text():
        left.append(f"the GPUs of pod {LEFTOVER_POD} in {CHECKPOINT}")
    return left
