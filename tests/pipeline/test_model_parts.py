"""A model over the git host's file limit: split into parts with a manifest, merged back byte-exact, bad parts
refused by name."""

from __future__ import annotations

import hashlib
import json
import random
import subprocess
import sys
from pathlib import Path

import pytest

from podserve.model_record import RECORD_NAME, read_record

MAX_BYTES = 256 * 1024
SIZE = 3 * 1024 * 1024 + 12345  # a few MB, over a dozen parts: bounded, and not a multiple of the limit


def model_parts(*args, cwd: Path) -> subprocess.CompletedProcess:
    """Run the CLI as a person would."""
    return subprocess.run([sys.executable, "-m", "podserve.tooling.model_parts", *map(str, args)], cwd=cwd,
                          capture_output=True, text=True, timeout=60)


@pytest.fixture
def big_model(tmp_path) -> Path:
    path = tmp_path / "big.onnx"
    path.write_bytes(random.Random(9).randbytes(SIZE))
    return path


@pytest.fixture
def parts(big_model, tmp_path) -> Path:
    """Split the file into model-parts/; return the manifest."""
    done = model_parts("split", big_model.name, "--max-bytes", MAX_BYTES, "--out", "model-parts", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    return tmp_path / "model-parts" / "big.onnx.parts.json"


def test_split_then_merge_is_byte_exact_and_recorded(big_model, parts, tmp_path):
    manifest = json.loads(parts.read_text())
    files = sorted(p for p in parts.parent.iterdir() if p != parts)
    assert [p.name for p in files] == [part["name"] for part in manifest["parts"]]
    assert len(files) == -(-SIZE // MAX_BYTES) == 13
    assert all(p.stat().st_size <= MAX_BYTES for p in files)
    assert manifest["sha256"] == hashlib.sha256(big_model.read_bytes()).hexdigest()

    done = model_parts("merge", parts.relative_to(tmp_path), "--out", "model", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    merged = tmp_path / "model" / "big.onnx"
    assert merged.read_bytes() == big_model.read_bytes()
    assert read_record(tmp_path / "model") == {"big.onnx": manifest["sha256"]}
    print(f"{SIZE} bytes -> {len(files)} parts of <= {MAX_BYTES} -> merged byte-exact")


def test_a_file_of_exactly_n_parts_has_no_empty_last_part(tmp_path):
    (tmp_path / "m.bin").write_bytes(b"x" * 4 * 1000)
    assert model_parts("split", "m.bin", "--max-bytes", 1000, cwd=tmp_path).returncode == 0
    sizes = [p["size"] for p in json.loads((tmp_path / "m.bin.parts.json").read_text())["parts"]]
    assert sizes == [1000] * 4


def test_a_corrupted_part_is_refused_by_name_and_nothing_is_written(parts, tmp_path):
    victim = parts.parent / "big.onnx.part-0005"
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one bit flipped, size unchanged
    victim.write_bytes(bytes(data))
    done = model_parts("merge", parts, "--out", "model", cwd=tmp_path)
    assert done.returncode == 2
    assert "big.onnx.part-0005: corrupted" in done.stderr
    assert "part-0004" not in done.stderr and "part-0006" not in done.stderr
    assert not (tmp_path / "model" / "big.onnx").exists() and not (tmp_path / "model" / RECORD_NAME).exists()


def test_missing_and_truncated_parts_are_each_refused_by_name(parts, tmp_path):
    (parts.parent / "big.onnx.part-0002").unlink()
    truncated = parts.parent / "big.onnx.part-0012"
    truncated.write_bytes(truncated.read_bytes()[:-1])
    done = model_parts("merge", parts, "--out", "model", cwd=tmp_path)
    assert done.returncode == 2
    assert "big.onnx.part-0002: missing" in done.stderr
    assert "big.onnx.part-0012: corrupted" in done.stderr
    assert not list((tmp_path / "model").glob("big.onnx*"))


def test_bad_input_exits_2_naming_the_fix(tmp_path):
    (tmp_path / "m.bin").write_bytes(b"abc")
    zero = model_parts("split", "m.bin", "--max-bytes", 0, cwd=tmp_path)
    assert zero.returncode == 2 and "--max-bytes 0" in zero.stderr
    absent = model_parts("merge", "nowhere.parts.json", cwd=tmp_path)
    assert absent.returncode == 2 and "nowhere.parts.json: no such manifest" in absent.stderr
    (tmp_path / "evil.parts.json").write_text(json.dumps({
        "format": "podserve-model-parts/1", "file": "../escape", "sha256": "0" * 64,
        "parts": [{"name": "m.bin.part-0000", "size": 3, "sha256": "0" * 64}]}))
    evil = model_parts("merge", "evil.parts.json", cwd=tmp_path)
    assert evil.returncode == 2 and "not a manifest written by" in evil.stderr
    assert not (tmp_path.parent / "escape").exists()
