"""A mesh's pod network: a network namespace of this machine, an address in it per pod, a veth pair to reach it.

    network = PodNetwork.create(work)   # namespace psmesh-<k>, 10.246.<k>.0/24, the host's end 10.246.<k>.1
    address = network.new_address()     # 10.246.<k>.2, .3, ...: each pod its own (port 8080 as in production)
    Program(..., network.inside([argv...]))   # a process that lives in the namespace (its sockets, its addresses)
    network.remove()

Why a namespace: the apiserver refuses loopback endpoint addresses, so pods need other ones, and this machine's rule
for test traffic is loopback or addresses inside network namespaces the run made itself. The namespace has no default
route, so nothing running inside it (Envoy included) can reach any address but the namespace's own and the host's end
of the veth: an endpoint istiod sends that is not ours (kwok's fake pods, 10.244.0.0/16) answers "unreachable" there.

Namespaces are numbered 1-254 and allocated under LOCK, with their owner (pid and start time) in STATE/<k>.owner; a
namespace whose owner is gone (a killed run) is torn down and reused. Root is needed (`ip netns`, `ip link`).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
from pathlib import Path

from podserve.testbed.locks import locked
from podserve.testbed.processes import StartError

#: 10.244.0.0/16 is kwok's fake pods', 10.245.0.0/24 the real node's, 10.0.0.0/24 the Services': none overlaps.
PREFIX = "10.246"
STATE = Path("/run/podserve-mesh")
LOCK = STATE / "allocate.lock"
NETNS = Path("/run/netns")
MAX_NETWORKS = 254
LOCK_TIMEOUT_SECONDS = 60.0


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    ip = shutil.which("ip", path="/usr/sbin:/usr/bin:/sbin:/bin")
    if ip is None:
        raise StartError("the `ip` command (Debian's iproute2) is missing: the mesh's pod network needs it")
    done = subprocess.run([ip, *args], capture_output=True, text=True, timeout=30)
    if check and done.returncode != 0:
        raise StartError(f"ip {' '.join(args)} failed ({done.returncode}): {done.stderr.strip()} (the mesh's pod "
                         "network needs root: network namespaces and veth pairs)")
    return done


def _start_time(pid: int) -> str | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _owner_alive(number: int) -> bool:
    try:
        pid, started = (STATE / f"{number}.owner").read_text().split()
    except (OSError, ValueError):
        return False
    return _start_time(int(pid)) == started


class PodNetwork:
    """One network namespace with a veth to this machine and an address per pod."""

    def __init__(self, number: int):
        self.number = number
        self.name = f"psmesh-{number}"
        self.host_link, self.inner_link = f"psm{number}h", f"psm{number}n"
        self.subnet = f"{PREFIX}.{number}.0/24"
        self.host_address = f"{PREFIX}.{number}.1"
        self.bridge_address: str | None = None  # its address on the real node's bridge, once attached
        self._next = 2

    @classmethod
    def create(cls) -> "PodNetwork":
        """Allocate a free number (reclaiming a dead owner's), create the namespace and its veth; return it."""
        STATE.mkdir(parents=True, exist_ok=True)
        with locked(LOCK, LOCK_TIMEOUT_SECONDS, "the mesh's pod network"):
            taken = []
            for number in range(1, MAX_NETWORKS + 1):
                network = cls(number)
                if (NETNS / network.name).exists() or (STATE / f"{number}.owner").exists():
                    if _owner_alive(number):
                        taken.append(number)
                    else:
                        network.remove()  # a killed run's: its processes, veth and namespace
            number = next((n for n in range(1, MAX_NETWORKS + 1) if n not in taken), None)
            if number is None:
                raise StartError(f"no free mesh pod network: {MAX_NETWORKS} namespaces psmesh-* in use")
            network = cls(number)
            network._set_up()
            return network

    def _set_up(self) -> None:
        me = os.getpid()
        (STATE / f"{self.number}.owner").write_text(f"{me} {_start_time(me)}\n")
        try:
            _ip("netns", "add", self.name)
            _ip("link", "add", self.host_link, "type", "veth", "peer", "name", self.inner_link, "netns", self.name)
            _ip("addr", "add", f"{self.host_address}/24", "dev", self.host_link)
            _ip("link", "set", self.host_link, "up")
            _ip("-n", self.name, "link", "set", "lo", "up")
            _ip("-n", self.name, "link", "set", self.inner_link, "up")
        except BaseException:
            self.remove()
            raise

    def new_address(self) -> str:
        """A new address in the namespace (on its end of the veth), reachable from this machine."""
        if self._next > 254:
            raise StartError(f"{self.name}: no address left in {self.subnet}")
        address = f"{PREFIX}.{self.number}.{self._next}"
        self._next += 1
        _ip("-n", self.name, "addr", "add", f"{address}/24", "dev", self.inner_link)
        return address

    def attach(self, bridge: str, address: str) -> None:
        """Give the namespace a second veth, its other end on this machine's `bridge`, at `address` (a.b.c.d/len):
        the real node's pods (on its bridge, no route elsewhere) then answer the namespace directly."""
        outer, inner = f"psm{self.number}b", f"psm{self.number}r"
        _ip("link", "add", outer, "type", "veth", "peer", "name", inner, "netns", self.name)
        _ip("link", "set", outer, "master", bridge, "up")
        _ip("-n", self.name, "addr", "add", address, "dev", inner)
        _ip("-n", self.name, "link", "set", inner, "up")
        self.bridge_address = address.split("/")[0]

    def inside(self, argv: list) -> list[str]:
        """`argv` run inside the namespace (`ip netns exec` execs it: the pid is the program's)."""
        ip = shutil.which("ip", path="/usr/sbin:/usr/bin:/sbin:/bin") or "ip"
        return [ip, "netns", "exec", self.name, *[str(a) for a in argv]]

    def remove(self) -> None:
        """Kill whatever still runs inside, delete the veth and the namespace, forget the owner."""
        if (NETNS / self.name).exists():
            pids = _ip("netns", "pids", self.name, check=False).stdout.split()
            for pid in pids:
                try:
                    os.kill(int(pid), signal.SIGKILL)
                except (ProcessLookupError, ValueError):
                    pass
            _ip("link", "del", self.host_link, check=False)
            _ip("netns", "del", self.name, check=False)
        (STATE / f"{self.number}.owner").unlink(missing_ok=True)
