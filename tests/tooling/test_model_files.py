"""`make model` and `make record` (podserve.tooling.model_files): value.py's model_path put in place, as CI does."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from manifest_helpers import REPO
from podserve.model_record import RECORD_COMMAND, RECORD_NAME, read_record, sha256_of
from podserve.tooling import example_models
from podserve.tooling.model_parts import split
from service_files import write_values

TEAM_MODEL = "model/detector.onnx"


def model_files(command: str, cwd: Path) -> subprocess.CompletedProcess:
    """Run `python -m podserve.tooling.model_files COMMAND --values value.py` in `cwd`, as `make model` does."""
    return subprocess.run([sys.executable, "-m", "podserve.tooling.model_files", command, "--values", "value.py"],
                          cwd=cwd, capture_output=True, text=True, timeout=120)


def team_service(tmp_path: Path, weights: bytes = b"the team's weights") -> Path:
    """A checkout whose value.py names the team's own model, committed under model/ beside README.md."""
    write_values(tmp_path, model_path=TEAM_MODEL)
    (tmp_path / "model").mkdir()
    shutil.copy(REPO / "model" / "README.md", tmp_path / "model" / "README.md")
    (tmp_path / TEAM_MODEL).write_bytes(weights)
    return tmp_path / TEAM_MODEL


def test_record_lists_only_the_models_files(tmp_path, example_model):
    model = team_service(tmp_path)
    (model.parent / "detector.onnx.data").write_bytes(b"external weights")  # a model may be several files
    shutil.copy(example_model, model.parent / example_model.name)  # the example, fetched earlier for the tests
    (model.parent / RECORD_NAME).write_text(f"{'0' * 64}  gone.onnx\n")  # a stale record: replaced, not merged
    done = model_files("record", tmp_path)
    assert done.returncode == 0, done.stderr
    assert read_record(model.parent) == {"detector.onnx": sha256_of(model),
                                         "detector.onnx.data": sha256_of(model.parent / "detector.onnx.data")}


def test_prepare_keeps_a_committed_team_model_and_never_rewrites_its_record(tmp_path):
    model = team_service(tmp_path)
    assert model_files("record", tmp_path).returncode == 0
    record = (model.parent / RECORD_NAME).read_bytes()
    done = model_files("prepare", tmp_path)
    assert done.returncode == 0, done.stderr
    assert "in place and matching" in done.stdout
    assert (model.parent / RECORD_NAME).read_bytes() == record
    assert not any(model.parent.glob("ch_ppocr*"))  # the example was not fetched


def test_prepare_refuses_a_team_model_that_differs_from_its_record(tmp_path):
    model = team_service(tmp_path)
    assert model_files("record", tmp_path).returncode == 0
    record = (model.parent / RECORD_NAME).read_bytes()
    model.write_bytes(b"weights changed after recording")
    done = model_files("prepare", tmp_path)
    assert done.returncode == 2
    assert f"model_path {TEAM_MODEL!r} does not match" in done.stderr and "detector.onnx: sha256" in done.stderr
    assert RECORD_COMMAND in done.stderr
    assert (model.parent / RECORD_NAME).read_bytes() == record


def test_prepare_refuses_a_team_model_never_recorded(tmp_path):
    team_service(tmp_path)
    done = model_files("prepare", tmp_path)
    assert done.returncode == 2
    assert f"model_path {TEAM_MODEL!r}: there is no model/{RECORD_NAME}" in done.stderr
    assert f"run `{RECORD_COMMAND}`" in done.stderr


def test_prepare_merges_committed_parts_into_model_path(tmp_path):
    model = team_service(tmp_path, weights=bytes(range(256)) * 40)
    original = model.read_bytes()
    split(model, 4000, tmp_path / "model-parts")
    model.unlink()  # what is committed: the parts, not the file
    done = model_files("prepare", tmp_path)
    assert done.returncode == 0, done.stderr
    assert model.read_bytes() == original
    assert read_record(model.parent) == {"detector.onnx": sha256_of(model)}


def test_prepare_fetches_the_example_only_when_model_path_names_it(tmp_path, example_model):
    write_values(tmp_path, model_path=f"model/{example_model.name}")
    (tmp_path / "model").mkdir()
    shutil.copy(example_model, tmp_path / "model")  # in place with its pinned hash: fetch downloads nothing
    done = model_files("prepare", tmp_path)
    assert done.returncode == 0, done.stderr
    assert read_record(tmp_path / "model") == {example_model.name: example_models.MODELS["cls"].sha256}


def test_prepare_forgets_an_example_fetched_before_and_deleted_since(tmp_path, example_model):
    """`make bench` records both examples; with the detector deleted since, `make model` drops it and keeps the rest."""
    write_values(tmp_path, model_path=f"model/{example_model.name}")
    (tmp_path / "model").mkdir()
    shutil.copy(example_model, tmp_path / "model")
    detector = example_models.MODELS["det"]
    (tmp_path / "model" / RECORD_NAME).write_text(f"{detector.sha256}  {detector.filename}\n"
                                                  f"{sha256_of(example_model)}  {example_model.name}\n"
                                                  f"{'0' * 64}  team-notes.txt\n")
    done = model_files("prepare", tmp_path)
    assert done.returncode == 0, done.stderr
    assert read_record(tmp_path / "model") == {example_model.name: example_models.MODELS["cls"].sha256,
                                                "team-notes.txt": "0" * 64}  # only a missing example is forgotten


def test_prepare_names_model_path_and_the_fix_when_there_is_no_model(tmp_path):
    write_values(tmp_path, model_path="model/missing.onnx")
    done = model_files("prepare", tmp_path)
    assert done.returncode == 2
    assert done.stderr.startswith("Error: value.py: model_path 'model/missing.onnx': no such file")
    assert RECORD_COMMAND in done.stderr and "model-parts" in done.stderr and "fix model_path" in done.stderr
    assert not (tmp_path / "model" / RECORD_NAME).exists()


def test_git_ignores_the_example_models_and_not_a_teams_model():
    names = [f"model/{m.filename}" for m in example_models.MODELS.values()]
    team = [TEAM_MODEL, f"model/{RECORD_NAME}", "model/README.md"]
    done = subprocess.run(["git", "check-ignore", "--no-index", *names, *team], cwd=REPO, capture_output=True,
                          text=True, timeout=30)
    assert done.stdout.split() == names
