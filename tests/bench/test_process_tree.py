"""A pod is a process tree: the benchmark counts the CPU and peak RSS of every process under the one it started."""

import os
import re
import sys
import time

from bench.proctree import machine_cpu, parse_proc_stat, still_running
from bench.systems import Server, free_port
from podserve.testbed.processes import poll_until

#: root starts `short` (burns 0.3 s of CPU, exits, is reaped by root), then `child`, which starts `grandchild` (holds
#: 60 MB and burns 0.4 s). Each prints its own CPU time once it is done, then sleeps; root prints last.
TREE = """
import os, subprocess, sys, time
role = sys.argv[1]

def burn(seconds):
    began = time.process_time()
    while time.process_time() - began < seconds:
        pass

def spawn(role):
    return subprocess.Popen([sys.executable, __file__, role])

if role == "root":
    spawn("short").wait()
    spawn("child")
elif role == "short":
    burn(0.3)
elif role == "child":
    spawn("grandchild")
    burn(0.2)
else:
    held = b"x" * 60_000_000  # written, so every page is resident
    burn(0.4)
print(f"{role} {os.getpid()} burnt {time.process_time():.4f}", flush=True)
if role != "short":
    time.sleep(120)
"""
BURNT = re.compile(r"^(\w+) (\d+) burnt ([\d.]+)$", re.MULTILINE)


def _start_tree(tmp_path) -> tuple[Server, dict[str, tuple[int, float]]]:
    """The running tree, and each role's (pid, CPU seconds it reported)."""
    script = tmp_path / "tree.py"
    script.write_text(TREE)
    server = Server("tree", "ours", [sys.executable, str(script), "root"], dict(os.environ), free_port(), "svc",
                    tmp_path / "log", "")
    reports = poll_until(lambda: {found[0]: (int(found[1]), float(found[2]))
                                  for found in BURNT.findall(server.log_path.read_text())}
                         if len(BURNT.findall(server.log_path.read_text())) == 4 else None,
                         "all four processes saying how much CPU they burnt", timeout=60, every=0.05)
    return server, reports


def test_the_cpu_and_peak_rss_of_a_server_are_those_of_its_whole_tree_reaped_children_included(tmp_path):
    machine_before = machine_cpu()
    server, reports = _start_tree(tmp_path)
    try:
        root, child, grandchild = (reports[role][0] for role in ("root", "child", "grandchild"))
        assert root == server.process.pid
        assert server.pids() == [root, child, grandchild]  # the short-lived one ended and was reaped
        burnt = sum(cpu for _, cpu in reports.values())
        # Every process's own CPU clock, the reaped one's included (it moved to root's cutime): within clock ticks.
        assert abs(server.cpu_seconds() - burnt) < 0.08, (server.cpu_seconds(), reports)
        # The machine's busy time holds at least what the tree burnt, whatever else ran beside it.
        assert machine_cpu().busy_s - machine_before.busy_s >= burnt - 0.05
        peaks = server.peak_rss_mb()
        assert set(peaks) == {"main", f"process-{child}", f"process-{grandchild}"}
        assert peaks[f"process-{grandchild}"] >= 60.0 > peaks[f"process-{child}"]
        assert sum(peaks.values()) >= 60.0 + peaks["main"] + peaks[f"process-{child}"]
    finally:
        server.stop()
    # root died of SIGTERM without stopping its children: the benchmark killed them rather than leave them running
    poll_until(lambda: not still_running([child, grandchild], root), "the orphaned processes gone", timeout=10,
               every=0.02)


def test_the_machine_s_busy_time_is_every_core_s_but_idle_and_iowait():
    text = ("cpu  100 20 30 1000 50 5 7 3 40 0\n"  # user nice system idle iowait irq softirq steal guest guest_nice
            "cpu0 50 10 15 500 25 2 4 1 20 0\ncpu1 50 10 15 500 25 3 3 2 20 0\nintr 12345\nctxt 678\n")
    ticks = os.sysconf("SC_CLK_TCK")
    read = parse_proc_stat(text)
    assert read.cores == 2
    assert read.busy_s == (100 + 20 + 30 + 5 + 7 + 3) / ticks  # guest time is already inside user
    assert read.idle_s == 1050 / ticks and read.total_s == 1215 / ticks
    began = machine_cpu()
    spin_until = time.process_time() + 0.2
    while time.process_time() < spin_until:
        pass
    assert machine_cpu().busy_s - began.busy_s >= 0.18
