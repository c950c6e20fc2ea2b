"""The README's first commands work as written: the local server from value.py, and its three curls."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time

import requests
from serving import REPO, free_port


def _readme_curls(after: str) -> list[str]:
    """The curl lines of the README's first bash block after the text `after`."""
    readme = (REPO / "README.md").read_text()
    block = readme[readme.index(after):]
    block = block[block.index("```bash") + len("```bash"): block.index("```", block.index("```bash") + 7)]
    return [line for line in block.splitlines() if line.startswith("curl ")]


def test_readme_curls_against_the_server_make_serve_starts(tmp_path):
    curls = _readme_curls("## Try it")
    assert len(curls) == 3
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "PODSERVE_PORT": str(port)}
    log = open(tmp_path / "serve.log", "wb")
    # What `make serve` runs once the venv and the model are in place.
    server = subprocess.Popen([sys.executable, "-m", "podserve.tooling.serve_local", "value.py"], cwd=REPO, env=env,
                              stdout=log, stderr=subprocess.STDOUT)
    try:
        started = time.monotonic()
        while time.monotonic() - started < 60:
            try:
                if requests.get(f"http://127.0.0.1:{port}/api/ping", timeout=1).status_code == 200:
                    break
            except requests.ConnectionError:
                time.sleep(0.1)
        else:
            raise AssertionError((tmp_path / "serve.log").read_text())
        answers = []
        for curl in curls:
            command = re.sub(r"localhost:8080", f"localhost:{port}", curl)
            done = subprocess.run(["bash", "-c", command], cwd=REPO, capture_output=True, text=True, timeout=30)
            assert done.returncode == 0, done.stderr
            answers.append(json.loads(done.stdout))
        ping, upright, upside_down = answers
        assert ping["results"]["ready"] is True
        assert upright["results"]["angle"] == 0 and upright["postid"] == "1"
        assert upside_down["results"]["angle"] == 180 and upside_down["postid"] == "2"
    finally:
        server.terminate()
        assert server.wait(30) == 0
        log.close()


def test_readme_mesh_curls_through_the_gateway_make_mesh_starts(tmp_path):
    """`make mesh` with PODS=1 on a free port: Envoy in front of the hk region's stages, the README's three curls."""
    import signal

    curls = _readme_curls("Through the mesh")  # the second bash block of "Try it"
    assert len(curls) == 3 and "/api/like/text-direction" in curls[0]
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    log = open(tmp_path / "mesh.log", "wb")
    # What `make mesh PODS=1` runs once the venv, the model and helm are in place (port and folder: free ones).
    mesh = subprocess.Popen([sys.executable, "-m", "podserve.testbed.mesh", "serve", "--pods", "1", "--port", str(port),
                             "--work", str(tmp_path / "mesh")], cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    state_path = tmp_path / "mesh" / "state.json"
    try:
        started = time.monotonic()
        while not state_path.exists():
            assert mesh.poll() is None and time.monotonic() - started < 120, (tmp_path / "mesh.log").read_text()
            time.sleep(0.2)
        state = json.loads(state_path.read_text())
        assert {pod["stage"] for pod in state["pods"]} == {"grey", "ab", "hk"} and state["envoy_admin"]
        answers = []
        for curl in curls:
            command = curl.replace("localhost:8080", f"localhost:{port}")
            done = subprocess.run(["bash", "-c", command], cwd=REPO, capture_output=True, text=True, timeout=30)
            assert done.returncode == 0, done.stderr
            answers.append(json.loads(done.stdout))
        production, grey, ab = answers
        assert production["results"]["angle"] == 0 and production["postid"] == "1"
        assert grey["results"]["angle"] == 180 and grey["postid"] == "2"
        assert ab["results"]["angle"] == 0 and ab["postid"] == "3"
    finally:
        mesh.send_signal(signal.SIGINT)  # Ctrl-C
        code = mesh.wait(60)
        log.close()
    assert code == 0
    for pod in state["pods"] + [{"pid": state["envoy_pid"]}]:
        assert not os.path.exists(f"/proc/{pod['pid']}") or "zombie" in open(f"/proc/{pod['pid']}/status").read().lower()
