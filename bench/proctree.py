"""A server as /proc shows it: its whole process tree, the CPU time and peak RSS of the tree, and the machine's CPU.

A pod is a process tree (a supervisor and the processes it spawns; Gunicorn's arbiter and its workers), so what
it costs is the sum over every process under the one the benchmark started, however deep. A process that ended
and was reaped during a window still counts: its CPU time moved to its parent's `cutime`/`cstime`, which the sum
takes too. The machine's CPU comes from /proc/stat: every core's busy time, whoever spent it.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PROC = Path("/proc")


def _stat_fields(pid: int, proc: Path = PROC) -> list[str] | None:
    """The fields of /proc/<pid>/stat after the command name (which may hold spaces and parentheses): fields[0] is
    the state, fields[1] the parent's pid, fields[11:15] utime, stime, cutime, cstime; None once it is gone."""
    try:
        return (proc / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def process_state(pid: int, proc: Path = PROC) -> str | None:
    """The process's state letter (R running, S sleeping, ...); None once it is gone."""
    fields = _stat_fields(pid, proc)
    return fields[0] if fields else None


def process_tree(root: int, proc: Path = PROC) -> list[int]:
    """`root` and every process under it (children, their children, ...), root first; [] once root is gone."""
    children: dict[int, list[int]] = {}
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        fields = _stat_fields(int(entry.name), proc)
        if fields is not None:
            children.setdefault(int(fields[1]), []).append(int(entry.name))
    if _stat_fields(root, proc) is None:
        return []
    tree, index = [root], 0
    while index < len(tree):
        tree += sorted(children.get(tree[index], ()))
        index += 1
    return tree


def still_running(pids: list[int], group: int, proc: Path = PROC) -> list[int]:
    """Those of `pids` still running (not zombies) in process group `group` (a pid since reused by another program
    is in another group)."""
    running = []
    for pid in pids:
        fields = _stat_fields(pid, proc)
        if fields is not None and fields[0] != "Z" and int(fields[2]) == group:
            running.append(pid)
    return running


def tree_cpu_seconds(pids: list[int], proc: Path = PROC) -> float:
    """User + system CPU seconds so far of `pids` and of their children that ended and were reaped."""
    ticks = 0
    for pid in pids:
        fields = _stat_fields(pid, proc)
        if fields is not None:
            ticks += sum(int(n) for n in fields[11:15])  # utime, stime, cutime, cstime
    return ticks / CLOCK_TICKS


def peak_rss_bytes(pid: int, proc: Path = PROC) -> int | None:
    """The process's peak resident set (VmHWM), in bytes; None once it is gone (or for a kernel thread)."""
    try:
        status = (proc / str(pid) / "status").read_text()
    except OSError:
        return None
    found = re.search(r"^VmHWM:\s+(\d+) kB", status, re.MULTILINE)
    return int(found.group(1)) * 1024 if found else None


@dataclass(frozen=True)
class MachineCpu:
    """The machine's CPU so far, from /proc/stat's first line: every core's busy and idle seconds together."""

    busy_s: float  # user, nice, system, irq, softirq, steal (steal: the hypervisor gave the core to someone else)
    idle_s: float  # idle and iowait
    cores: int  # the cpuN lines: the cores those seconds are summed over

    @property
    def total_s(self) -> float:
        return self.busy_s + self.idle_s


def parse_proc_stat(text: str) -> MachineCpu:
    """Read /proc/stat's text. guest and guest_nice are already inside user and nice, so they are not added."""
    lines = text.splitlines()
    values = [int(v) for v in lines[0].split()[1:]]
    values += [0] * (8 - len(values))
    user, nice, system, idle, iowait, irq, softirq, steal = values[:8]
    cores = sum(1 for line in lines if re.match(r"cpu\d+ ", line))
    return MachineCpu(busy_s=(user + nice + system + irq + softirq + steal) / CLOCK_TICKS,
                      idle_s=(idle + iowait) / CLOCK_TICKS, cores=cores)


def machine_cpu(proc: Path = PROC) -> MachineCpu:
    return parse_proc_stat((proc / "stat").read_text())
