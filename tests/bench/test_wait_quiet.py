"""A window starts on idle cores: the server measured before it has finished working off its own window."""

import re
import sys
import threading
import time

from bench.proctree import process_state
from bench.systems import QUIET_TIMEOUT_S, Server, free_port
from podserve.testbed.processes import poll_until

#: A parent whose child keeps one core busy until the file `stop` exists, then both sleep: Gunicorn's arbiter
#: and a worker still answering what wrk left queued. The child prints that it is busy, then when (time.monotonic(),
#: the same clock in every process) it stopped. (A child busy for a fixed time could be done before the first look on
#: a loaded machine, and the wait would show nothing.)
BUSY_CHILD = """
import subprocess, sys, time
subprocess.Popen([sys.executable, "-c", "import os, time\\nprint('busy until 0', flush=True)\\n"
                  "while not os.path.exists({stop!r}): pass\\n"
                  "print(f'stopped at {{time.monotonic()}}', flush=True)\\ntime.sleep(60)"])
time.sleep(60)
"""
#: How long the child stays busy once the wait has looked once.
BUSY_SECONDS = 0.4
IDLE = "print('busy until 0', flush=True)\nimport time\ntime.sleep(60)"


def _start(tmp_path, code: str) -> tuple[Server, float]:
    """The process, and when it stops using the CPU."""
    server = Server("test", "gunicorn", [sys.executable, "-c", code], {}, free_port(), "svc", tmp_path / "log", "")
    found = poll_until(lambda: re.search(r"busy until ([\d.]+)", server.log_path.read_text()),
                       "the test process saying how long it is busy", timeout=20, every=0.005)
    return server, float(found.group(1))


def test_waits_while_a_child_process_still_uses_a_core_and_no_longer(tmp_path):
    stop = tmp_path / "stop"
    server, _ = _start(tmp_path, BUSY_CHILD.format(stop=str(stop)))
    try:

        def stop_after_the_first_look() -> None:  # so the first look sees the child busy, whatever the load
            poll_until(lambda: getattr(server, "quiet_samples", 0) >= 1, "the wait's first look", timeout=60,
                       every=0.005)
            time.sleep(BUSY_SECONDS)
            stop.touch()

        stopper = threading.Thread(target=stop_after_the_first_look)
        stopper.start()
        waited = server.wait_quiet()
        stopper.join(60)
        stopped = poll_until(lambda: re.search(r"stopped at ([\d.]+)", server.log_path.read_text()),
                             "the child saying when it stopped", timeout=20, every=0.005)
        assert time.monotonic() >= float(stopped.group(1)), \
            f"went on after {waited:.2f}s while the child still used a core"
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
