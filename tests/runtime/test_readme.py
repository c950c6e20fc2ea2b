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


def _readme_curls() -> list[str]:
    readme = (REPO / "README.md").read_text()
    block = readme[readme.index("## Try it"):]
    block = block[block.index("```bash") + len("```bash"): block.index("```", block.index("```bash") + 7)]
    return [line for line in block.splitlines() if line.startswith("curl ")]


def test_readme_curls_against_the_server_make_serve_starts(tmp_path):
    curls = _readme_curls()
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
