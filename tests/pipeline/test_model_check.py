"""The server checks the model against the SHA-256 recorded when it was merged, and refuses to start on a mismatch."""

from __future__ import annotations

import subprocess
import sys
import time

import requests

from podserve.model_record import RECORD_NAME
from serving import Server


def merged_model(source, tmp_path):
    """Split a real model and merge it into tmp/model/ with the CLI, as CI does; return the merged file."""
    tool = [sys.executable, "-m", "podserve.tooling.model_parts"]
    subprocess.run([*tool, "split", str(source), "--max-bytes", "64", "--out", str(tmp_path / "parts")], check=True,
                   timeout=60, capture_output=True)
    subprocess.run([*tool, "merge", str(tmp_path / "parts" / f"{source.name}.parts.json"), "--out",
                    str(tmp_path / "model")], check=True, timeout=60, capture_output=True)
    return tmp_path / "model" / source.name


def start(model, log_path) -> Server:
    return Server(log_path, handler="fixture_handlers:Affine", model_path=str(model), service_name="affine")


def test_a_model_matching_its_record_serves(affine_model, tmp_path):
    model = merged_model(affine_model, tmp_path)
    assert (model.parent / RECORD_NAME).is_file()
    server = start(model, tmp_path / "server.log")
    try:
        server.wait_ready(timeout=60)
        assert "model checked: 1 file(s)" in server.log()
    finally:
        assert server.stop() == 0


def test_a_changed_model_file_stops_the_server_before_ping_ever_answers(affine_model, tmp_path):
    model = merged_model(affine_model, tmp_path)
    data = bytearray(model.read_bytes())
    data[-1] ^= 0x01
    model.write_bytes(bytes(data))
    server = start(model, tmp_path / "server.log")
    answers = []
    deadline = time.monotonic() + 60
    while server.process.poll() is None and time.monotonic() < deadline:
        try:
            answers.append(requests.get(server.url("/api/ping"), timeout=1).status_code)
        except requests.ConnectionError:
            pass
        time.sleep(0.05)
    code = server.stop()
    assert code == 2
    assert 200 not in answers
    log = server.log_path.read_text()
    assert f"does not match {RECORD_NAME}" in log and f"{model.name}: sha256" in log, log
    assert "make record" in log  # the fix


def test_the_check_names_each_problem_and_the_fix(tmp_path):
    import pytest

    from podserve.model_record import record
    from podserve.runtime.core.model_check import ModelCheckError, check_model

    model = tmp_path / "m.onnx"
    model.write_bytes(b"weights")
    assert check_model(model) == 0  # no record (a model put in by hand): not checked, a warning is logged
    (tmp_path / "extra.bin").write_bytes(b"x")
    record(tmp_path, [model, tmp_path / "extra.bin"])
    assert check_model(model) == 2
    (tmp_path / "extra.bin").unlink()
    with pytest.raises(ModelCheckError, match=r"extra\.bin: missing"):
        check_model(model)
    record_file = tmp_path / RECORD_NAME
    record_file.write_text(f"{'0' * 64}  other.onnx\n")
    with pytest.raises(ModelCheckError, match=r"m\.onnx: the model file \(model_path\) is not in the record"):
        check_model(model)
    record_file.write_text("not a checksum line\n")
    with pytest.raises(ModelCheckError, match=r"line 1: 'not a checksum line'.*make record"):
        check_model(model)
