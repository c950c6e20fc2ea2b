"""PID 1 reaps every process that ends in the pod, its children's children too: a team's subprocess orphaned in a
decoder (the split layout's supervisor adopts and reaps it), or in the one process when it is a container's PID 1 (its
init, processes/init.py, does), run here in a PID namespace of its own (`unshare --pid`, as a container's runtime
gives it)."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest
import requests

from podserve.testbed.processes import poll_until


def host_pid(namespace_pid: int, inside: int) -> int:
    """The pid, as this test sees it, of the process `namespace_pid` in the PID namespace whose PID 1 is `inside`."""
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            status = Path(f"/proc/{entry}/status").read_text()
        except OSError:
            continue
        nspid = [line.split()[1:] for line in status.splitlines() if line.startswith("NSpid:")]
        if nspid and len(nspid[0]) > 1 and int(nspid[0][-1]) == namespace_pid and _in_namespace_of(int(entry), inside):
            return int(entry)
    raise AssertionError(f"no process {namespace_pid} in the namespace of {inside}")


def _in_namespace_of(pid: int, other: int) -> bool:
    return os.readlink(f"/proc/{pid}/ns/pid") == os.readlink(f"/proc/{other}/ns/pid")


def parent_of(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


def reaped(pid: int) -> bool:
    """Gone from /proc altogether: an orphan nobody reaps stays there as a zombie."""
    return not Path(f"/proc/{pid}").exists()


@pytest.mark.parametrize("layout", ["split", "one-process-as-pid-1"])
def test_an_orphaned_grandchild_is_reaped(start_server, affine_model, tmp_path, layout):
    gate = tmp_path / "orphan-lives"
    gate.touch()
    wrapper = ("unshare", "--pid", "--fork", "--kill-child=SIGTERM", "--mount-proc") if layout != "split" else ()
    server = start_server(handler="fixture_handlers:LeavesOrphans", model_path=str(affine_model),
                          decode_processes=1 if layout == "split" else 0, wrapper=wrapper,
                          TEST_ORPHAN_GATE=str(gate))
    reply = requests.post(server.api, json={"data": [5, 0, 0, 0]}, timeout=30)
    assert reply.status_code == 200, reply.text
    orphan = reply.json()["results"]["orphan"]
    if layout == "split":
        adopter = server.process.pid  # the supervisor: the pod's processes' subreaper
    else:
        unshare = server.process.pid
        [init] = [int(pid) for pid in Path(f"/proc/{unshare}/task/{unshare}/children").read_text().split()]
        adopter = init  # PID 1 of the namespace: the init the one process forked under
        orphan = host_pid(orphan, inside=init)
    assert parent_of(orphan) == adopter, "the orphan was not adopted by the pod's PID 1"
    gate.unlink()
    poll_until(lambda: reaped(orphan), "the orphan reaped once it ended", timeout=30, every=0.02)
    os.kill(adopter, signal.SIGTERM)  # what Kubernetes sends PID 1: the init passes it on, and ends as the server did
    assert server.process.wait(30) == 0, server.log()
