"""The real node's simulated GPUs: fake-gpu-plugin outlives a plugin folder that is not ready for it yet."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

from podserve.testbed.cluster import versions
from podserve.testbed.cluster.node import PLUGIN_SOCKET
from podserve.testbed.processes import poll_until


def test_a_start_that_fails_is_tried_again_until_the_plugin_serves(tmp_path):
    """A node coming up can pull the plugin's socket from under it (the kubelet empties its plugin folder when its
    device manager starts): the plugin must start again, not exit. Here the folder is missing at first."""
    # A Unix socket's path holds at most 107 bytes: an xdist worker's tmp_path (.../popen-gw1/<test>/) is too long
    # for it (bind: invalid argument at every attempt), so the folder is a short one of its own.
    short = Path(tempfile.mkdtemp(prefix="gpu-", dir="/tmp"))
    folder = short / "device-plugins"
    log = tmp_path / "plugin.log"
    with open(log, "wb") as out:
        plugin = subprocess.Popen([str(versions.binaries_dir() / "fake-gpu-plugin"), "--count=2",
                                   f"--socket-dir={folder}/"], stdout=out, stderr=subprocess.STDOUT)
    try:
        poll_until(lambda: "attempt 1 of" in log.read_text() or plugin.poll() is not None,
                   "the plugin's first failed start", timeout=10)
        assert plugin.poll() is None, f"the plugin exited after a failed start:\n{log.read_text()}"
        folder.mkdir()
        # Serving again: its socket is in the folder while it waits for a kubelet to register with (none here).
        poll_until((folder / PLUGIN_SOCKET).exists, "the plugin's socket in the new folder", timeout=10)
        assert plugin.poll() is None, log.read_text()
    finally:
        plugin.terminate()
        plugin.wait(10)
        shutil.rmtree(short, ignore_errors=True)
