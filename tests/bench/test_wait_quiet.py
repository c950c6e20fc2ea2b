"""A window starts on idle cores: the server measured before it has finished working off its own window."""

import re
import sys
import time

from bench.proctree import process_state
from bench.systems import QUIET_TIMEOUT_S, Server, free_port
from podserve.testbed.processes import poll_until

#: A parent whose child keeps one core busy for a while, then both sleep: Gunicorn's arbiter and a worker still
#: answering what wrk left queued. The child prints when (time.monotonic(), the same clock in every process) it stops.
BUSY_CHILD = """
import subprocess, sys, time
subprocess.Popen([sys.executable, "-c", "import time\\nend = time.monotonic() + 0.4\\n"
                  "print(f'busy until {end}', flush=True)\\nwhile time.monotonic() < end: pass\\ntime.sleep(60)"])
time.sleep(60)
"""
IDLE = "print('busy until 0', flush=True)\nimport time\ntime.sleep(60)"


def _start(tmp_path, code: str) -> tuple[Server, float]:
    """The process, and when it stops using the CPU."""
    server = Server("test", "gunicorn", [sys.executable, "-c", code], {}, free_port(), "svc", tmp_path / "log", "")
    found = poll_until(lambda: re.search(r"busy until ([\d.]+)", server.log_path.read_text()),
                       "the test process saying how long it is busy", timeout=20, every=0.005)
    return server, float(found.group(1))


def test_waits_while_a_child_process_still_uses_a_core_and_no_longer(tmp_path):
    server, busy_until = _start(tmp_path, BUSY_CHILD)
    try:
        waited = server.wait_quiet()
        assert time.monotonic() >= busy_until, f"went on after {waited:.2f}s while the child still used a core"
        assert waited < QUIET_TIMEOUT_S - 1, f"took {waited:.2f}s to see the child stop"
        assert server.quiet_samples > 1
        server.wait_quiet()
        assert server.quiet_samples == 1  # idle now: goes on after its first look, however long the machine made it
    finally:
        server.stop()


def test_an_idle_server_is_quiet_at_once(tmp_path):
    server, _ = _start(tmp_path, IDLE)
    try:
        # Its line is written before its sleep starts, and the kernel adds a running task's time to its schedstat
        # only at a tick or a switch: time run before the first reading could land in the first 1 ms look.
        poll_until(lambda: process_state(server.process.pid) == "S", "the idle process asleep", timeout=20, every=0.005)
        server.wait_quiet()
        assert server.quiet_samples == 1
    finally:
        server.stop()
