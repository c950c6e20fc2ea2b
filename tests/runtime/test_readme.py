"""README's command blocks run as written (tests/readme_blocks.py says where each runs), and docs/mesh.md's curls."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time

from fresh_copy import Background, answers_ping, fresh_copy, run
from readme_blocks import FIRST_BLOCK, NEEDS, blocks, command_word
from serving import REPO, free_port

from podserve.model_record import RECORD_NAME, read_record
from podserve.tooling.example_models import MODELS


def _curls(path, after: str) -> list[str]:
    """The curl lines of the first bash block after the text `after` in `path`."""
    text = path.read_text()
    block = text[text.index(after):]
    block = block[block.index("```bash") + len("```bash"): block.index("```", block.index("```bash") + 7)]
    return [line for line in block.splitlines() if line.startswith("curl ")]


def test_every_readme_block_is_one_the_tests_run():
    found = blocks()
    assert [command_word(line) for line in found[0].commands] == FIRST_BLOCK
    assert (REPO / ".ci" / "run").read_text().strip().splitlines()[-1] == "make test"  # the second command
    unknown = [b.first_line for b in found if b.first_line.startswith("# needs:") and not NEEDS.match(b.first_line)]
    assert unknown == [], f"blocks whose `# needs:` no test provides (see tests/readme_blocks.py): {unknown}"
    assert {b.needs for b in found[1:]} == {None, "make serve", "cluster"}


def test_readme_blocks_run_as_written_in_a_fresh_copy(tmp_path):
    """make serve, the curls against it, then every block without `# needs:`, in order, in a fresh copy."""
    found = blocks()
    copy = fresh_copy(tmp_path / "repo")
    example = REPO / "model" / MODELS["cls"].filename  # fetched once by `make test`'s `make model`: not again
    shutil.copy(example, copy / "model" / example.name)
    port = free_port()
    server = Background(command_word(found[0].commands[0]), copy, tmp_path / "serve.log", PODSERVE_PORT=str(port))
    try:
        server.wait_until(lambda: answers_ping(port), timeout=180)
        answers = [json.loads(run(line.replace("localhost:8080", f"localhost:{port}"), copy).stdout)
                   for block in found if block.needs == "make serve" for line in block.commands]
    finally:
        server.stop()
    assert '"msg": "exited cleanly"' in server.log()
    ping, upright, upside_down, video = answers
    assert ping["results"]["ready"] is True
    assert upright["results"]["angle"] == 0 and upright["postid"] == "1"
    assert upside_down["results"]["angle"] == 180 and upside_down["postid"] == "2"
    frames = video["results"]["frames"]
    assert [(f["timestamp"], f["angle"]) for f in frames] == [(0.0, 0), (1.0, 0), (2.0, 0), (3.0, 180), (4.0, 180),
                                                               (5.0, 180)] and video["postid"] == "3"

    plain = [line for block in found[1:] if block.needs is None for line in block.commands]
    assert {"make record", "make model", "make render"} <= {command_word(line) for line in plain}
    for line in plain:
        run(line, copy)
    assert read_record(copy / "model") == {example.name: MODELS["cls"].sha256}  # only the model, not README.md
    assert (copy / "model" / RECORD_NAME).is_file() and (copy / "build" / "manifests" / "grey" / "deployment.yaml").is_file()



def test_readme_mesh_curls_through_the_gateway_make_mesh_starts(tmp_path):
    """`make mesh` with PODS=1 on a free port: Envoy in front of the hk region's stages, docs/mesh.md's three curls."""
    import signal

    curls = _curls(REPO / "docs" / "mesh.md", "Through the mesh")
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
