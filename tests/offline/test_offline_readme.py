"""docs/offline.md's lines (moved from the README) work as written: the worker `make serve VALUES=examples/offline/value.py` runs,
fed by `topics send` and read back by `topics read`, on a real broker (the session's, on a free port)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

from kafka_workers import REPO
from podserve import kafka_access
from podserve.offline_settings import BOOTSTRAP_ENV
from podserve.testbed.processes import Program, free_port


def _readme_topic_lines() -> list[str]:
    readme = (REPO / "docs" / "offline.md").read_text()
    block = readme[readme.index("# Offline workers"):]
    block = block[block.index("```bash") + len("```bash"): block.index("```", block.index("```bash") + 7)]
    lines = block.strip().splitlines()
    assert lines[:2] == ["make kafka                                      # a real Kafka broker (KRaft, one node) on "
                         "127.0.0.1:9092; Ctrl-C stops it",
                         "make serve VALUES=examples/offline/value.py     # in a second shell: the worker (probes "
                         "and /metrics on :8080)"]
    return lines[2:]


def test_readme_feeds_the_offline_example_and_reads_its_results(kafka, tmp_path):
    """As team like: `make serve` and the topics tool take its credentials where `make kafka` writes them (here the
    session broker's, in a folder of the test's), and the brokers' ACLs apply."""
    send, read = _readme_topic_lines()
    port = free_port()
    env = {**os.environ, BOOTSTRAP_ENV: kafka.bootstrap, "PODSERVE_PORT": str(port), "PYTHONPATH": str(REPO / "src"),
           kafka_access.LOCAL_CREDENTIALS_ENV: str(kafka.write_credentials(tmp_path / "credentials"))}
    for name in (kafka_access.USERNAME_ENV, kafka_access.PASSWORD_ENV):
        env.pop(name, None)
    # What `make serve VALUES=examples/offline/value.py` runs once the venv and the model are in place.
    worker = Program("readme-worker", [sys.executable, "-m", "podserve.tooling.serve_local",
                                       "examples/offline/value.py"], tmp_path / "worker.log", env=env, cwd=REPO)
    try:
        worker.wait_until(lambda: subprocess.run(["curl", "-sf", f"localhost:{port}/api/ping"],
                                                 capture_output=True).returncode == 0, 90, "GET /api/ping answers 200")
        sent = subprocess.run(["bash", "-c", send], cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
        assert sent.returncode == 0 and "sent 2 message(s) to like.text-lines" in sent.stdout, sent.stderr
        results: dict[str, dict] = {}
        deadline = time.monotonic() + 60
        while len(results) < 2 and time.monotonic() < deadline:
            done = subprocess.run(["bash", "-c", read], cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
            assert done.returncode == 0, done.stderr
            results = {line.split(" ", 1)[0]: json.loads(line.split(" ", 1)[1]) for line in done.stdout.splitlines()}
            time.sleep(0.5)
        assert results["text-line.png"]["results"]["angle"] == 0
        assert results["text-line-upside-down.png"]["results"]["angle"] == 180
        assert results["text-line-upside-down.png"]["postid"] == "text-line-upside-down"
    finally:
        assert worker.stop(timeout=30) == 0, worker.log_tail(30)
