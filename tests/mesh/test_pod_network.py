"""The mesh's pod network (podserve.testbed.mesh.podnetwork): what a killed run left is reclaimed, and nothing in it
reaches an address outside it."""

from __future__ import annotations

import subprocess
import sys

from podserve.testbed.mesh.podnetwork import NETNS, STATE, PodNetwork


def test_a_killed_run_s_network_and_processes_are_reclaimed_and_nothing_inside_reaches_out():
    stale = PodNetwork.create()
    address = stale.new_address()
    sleeper = subprocess.Popen(stale.inside([sys.executable, "-c", "import time; time.sleep(60)"]))
    gone = subprocess.Popen(["true"])
    gone.wait()
    (STATE / f"{stale.number}.owner").write_text(f"{gone.pid} 0\n")  # its owner is dead: a killed run
    outside = subprocess.run(stale.inside([sys.executable, "-c", (
        "import socket; s = socket.socket(); s.settimeout(2); print(s.connect_ex(('10.244.0.7', 8080)))")]),
        capture_output=True, text=True, timeout=30)
    fresh = PodNetwork.create()
    try:
        sleeper.wait(timeout=10)  # killed by the reclaim
        print(f"\nstale {stale.name} ({address}) reclaimed: its sleeper exited {sleeper.returncode}; from inside, a "
              f"kwok pod address gave errno {outside.stdout.strip()}; the new network is {fresh.name}")
        assert sleeper.returncode == -9
        assert not (NETNS / stale.name).exists() or fresh.number == stale.number
        assert outside.stdout.strip() == "101"  # ENETUNREACH: no route out of the namespace
    finally:
        fresh.remove()
        if sleeper.poll() is None:
            sleeper.kill()
