"""README's command blocks run as written (tests/readme_blocks.py says where each runs), and docs/mesh.md's curls."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time

from fresh_copy import Background, answers_ping, fresh_copy, run
from readme_blocks import FIRST_BLOCK, NEEDS, all_blocks, command_word, starts_a_server
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
    found = all_blocks()
    assert [command_word(line) for line in found[0].commands] == FIRST_BLOCK
    assert (REPO / ".ci" / "run").read_text().strip().splitlines()[-1] == "make test"  # the second command
    unknown = [b.first_line for b in found if b.first_line.startswith("# needs:") and not NEEDS.match(b.first_line)]
    assert unknown == [], f"blocks whose `# needs:` no test provides (see tests/readme_blocks.py): {unknown}"
    assert [b.first_line for b in found if b.kind == "python" and b.file is None] == [], \
        "a ```python block that names no file to write (its first line `# src/<module>.py`) is run by no test"
    started = {command_word(line) for b in found if b.needs is None for line in b.commands if starts_a_server(line)}
    served = {b.needs for b in found if b.needs and b.needs.startswith("make serve")}
    assert served <= started, f"blocks need servers no block starts: {served - started}"
    assert {b.needs for b in found[1:] if b.kind == "bash"} == {None, "make serve", "make serve VALUES=mine.py",
                                                                   "cluster"}


class _Servers:
    """The `make serve ...` lines README has you start, one at a time, each on a free port."""

    def __init__(self, copy, folder):
        self.copy, self.folder = copy, folder
        self.running: dict[str, tuple[Background, int]] = {}
        self.stopped: list[Background] = []

    def start(self, line: str) -> None:
        for command in list(self.running):  # Ctrl-C in the shell that ran it, before the next
            self.stop(command)
        port = free_port()
        server = Background(command_word(line), self.copy, self.folder / f"serve-{len(self.stopped)}.log",
                            PODSERVE_PORT=str(port))
        self.running[command_word(line)] = (server, port)
        server.wait_until(lambda: answers_ping(port), timeout=180)

    def port(self, command: str) -> int:
        assert command in self.running, f"a block needs `{command}`, which no earlier block left running"
        return self.running[command][1]

    def stop(self, command: str) -> None:
        server, _port = self.running.pop(command)
        server.stop()
        self.stopped.append(server)

    def stop_all(self) -> None:
        for command in list(self.running):
            self.stop(command)


def test_readme_blocks_run_as_written_in_a_fresh_copy(tmp_path):
    """Every block, in README's order, in a fresh copy: `make serve` lines started in the background, the blocks that
    need one run against it, files written, every other line run and exiting 0."""
    found = all_blocks()
    copy = fresh_copy(tmp_path / "repo")
    example = REPO / "model" / MODELS["cls"].filename  # fetched once by `make test`'s `make model`: not again
    shutil.copy(example, copy / "model" / example.name)
    servers = _Servers(copy, tmp_path)
    answers: dict[str, list] = {}
    plain: list[str] = []
    try:
        servers.start(found[0].commands[0])  # the first block's `make serve`; `make test` is this run
        for block in found[1:]:
            if block.kind == "python":
                assert block.file, f"a ```python block names no file to write: {block.first_line!r}"
                (copy / block.file).write_text(block.text)
            elif block.needs == "cluster":
                continue  # the deploy suite's (tests/deploy/test_readme_deploy.py)
            elif block.needs:
                port = servers.port(block.needs)
                answers.setdefault(block.needs, []).extend(
                    json.loads(run(line.replace("localhost:8080", f"localhost:{port}"), copy).stdout)
                    for line in block.commands)
            else:
                for line in block.commands:
                    if starts_a_server(line):
                        servers.start(line)
                    else:
                        run(line, copy)
                        plain.append(command_word(line))
    finally:
        servers.stop_all()
    for server in servers.stopped:
        assert '"msg": "exited cleanly"' in server.log(), server.log()[-3000:]

    ping, upright, upside_down, video = answers["make serve"]
    assert ping["results"]["ready"] is True
    assert upright["results"]["angle"] == 0 and upright["postid"] == "1"
    assert upside_down["results"]["angle"] == 180 and upside_down["postid"] == "2"
    frames = video["results"]["frames"]
    assert [(f["timestamp"], f["angle"]) for f in frames] == [(0.0, 0), (1.0, 0), (2.0, 0), (3.0, 180), (4.0, 180),
                                                               (5.0, 180)] and video["postid"] == "3"

    # Your own service: its route, its handler's answer with the context decode gave, and a 400 naming the field.
    own, refused = answers["make serve VALUES=mine.py"]
    assert own["results"] == {"upside_down": True, "width": 246, "height": 58}, own
    assert refused["error"] == "invalid_input" and refused["field"] == "image" and refused["postid"] == "7", refused
    assert {"make record", "make model", "make render"} <= set(plain)
    assert read_record(copy / "model") == {example.name: MODELS["cls"].sha256}  # only the model, not README.md
    assert (copy / "model" / RECORD_NAME).is_file() and (copy / "build" / "manifests" / "grey" / "deployment.yaml").is_file()


def test_readme_mesh_curls_through_the_gateway_make_mesh_starts(tmp_path):
    """`make mesh` with PODS=1 on a free port: a control plane, istiod and Envoy in front of the hk region's stages,
    docs/mesh.md's three curls."""
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
            assert mesh.poll() is None and time.monotonic() - started < 240, (tmp_path / "mesh.log").read_text()
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
