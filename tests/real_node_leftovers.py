"""What a crashed run of the real node leaves behind, planted for real so that the next start must remove it."""

from __future__ import annotations

import subprocess
from pathlib import Path

from podserve.testbed.cluster import node

MOUNT = node.STATE / "leftover-tmpfs"
NETNS = "cni-podserve-leftover"
CHAIN = "KUBE-PODSERVE-LEFTOVER"
CGROUP = Path("/sys/fs/cgroup/memory") / node.CGROUP_ROOT / "leftover"


def _run(*argv: str) -> None:
    subprocess.run(argv, check=True, capture_output=True, timeout=30)


def plant() -> list[tuple[str, str]]:
    """A tmpfs under the node's state, a cni-* network namespace, the bridge, a KUBE- chain jumped to from INPUT,
    a memory cgroup with a process in it. Returns (kind, name) for each."""
    MOUNT.mkdir(parents=True, exist_ok=True)
    _run("mount", "-t", "tmpfs", "leftover", str(MOUNT))
    _run("ip", "netns", "add", NETNS)
    subprocess.run(["ip", "link", "add", node.BRIDGE, "type", "bridge"], capture_output=True, timeout=30)
    _run("iptables", "-N", CHAIN)
    _run("iptables", "-A", "INPUT", "-j", CHAIN)
    CGROUP.mkdir(parents=True, exist_ok=True)
    sleeper = subprocess.Popen(["sleep", "600"], start_new_session=True)  # a container's process, orphaned
    (CGROUP / "cgroup.procs").write_text(str(sleeper.pid))
    return [("mount", str(MOUNT)), ("netns", NETNS), ("bridge", node.BRIDGE), ("iptables", CHAIN),
            ("process", str(sleeper.pid))]


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
    return left
