"""The model's checksum record: `model/MODEL.sha256`, written when the model is fetched or merged.

One line per file, in the format `sha256sum` reads and writes (`<hex>  <path relative to the
folder>`), so `cd model && sha256sum -c MODEL.sha256` checks it by hand too. CI's tooling
writes it (example_models fetch, model_parts merge, model_files record); the pod's runtime reads it at
start and refuses a model that does not match. Standard library only: both sides import it.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable
from pathlib import Path

#: The record's file name, in the model's folder.
RECORD_NAME = "MODEL.sha256"
#: The command that (re)writes the record for the model value.py names (podserve.tooling.model_files record).
RECORD_COMMAND = "make record"
#: One line as sha256sum writes it: the digest, a space, then a space (text mode) or `*` (binary mode), the name.
_LINE = re.compile(r"^(?P<digest>[0-9a-f]{64}) [ *](?P<name>.+)$")


class RecordError(ValueError):
    """The record cannot be read: a line is not `<64 hex>  <relative path>`."""


def sha256_of(path: Path) -> str:
    """Return the hex SHA-256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def record_folder(model_path: Path) -> Path:
    """The folder whose record covers `model_path`: the path itself if a folder, else its parent."""
    return model_path if model_path.is_dir() else model_path.parent


def read_record(folder: Path) -> dict[str, str] | None:
    """Return {relative path: sha256} from `folder`'s record, or None when it has none."""
    path = folder / RECORD_NAME
    if not path.is_file():
        return None
    entries = {}
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        match = _LINE.match(line)
        if not match:
            raise RecordError(f"{path} line {number}: {line!r} is not '<sha256 hex>  <file>'; rewrite it with "
                              f"`{RECORD_COMMAND}`")
        entries[match["name"]] = match["digest"]
    return entries


def record(folder: Path, files: list[Path], forget: Iterable[str] = ()) -> Path:
    """Add (or refresh) `files`, which must lie in `folder`, to its record; drop the entries named in `forget`."""
    entries = read_record(folder) or {}
    for name in forget:
        entries.pop(name, None)
    for file in files:
        entries[file.resolve().relative_to(folder.resolve()).as_posix()] = sha256_of(file)
    path = folder / RECORD_NAME
    partial = path.with_name(RECORD_NAME + ".partial")
    partial.write_text("".join(f"{digest}  {name}\n" for name, digest in sorted(entries.items())))
    partial.replace(path)
    return path


def mismatches(folder: Path) -> list[str]:
    """Check every file the record names; return one sentence per file that is missing or differs."""
    entries = read_record(folder) or {}
    problems = []
    for name, digest in sorted(entries.items()):
        file = folder / name
        if not file.is_file():
            problems.append(f"{name}: missing (the record lists it)")
        else:
            actual = sha256_of(file)
            if actual != digest:
                problems.append(f"{name}: sha256 {actual} but {digest} was recorded")
    return problems


def model_problems(model_path: Path) -> list[str] | None:
    """Check `model_path` against its folder's record: None when there is no record, else one sentence per file
    missing or different, and one if model_path itself (a file) is not recorded. Raises RecordError."""
    folder = record_folder(model_path)
    entries = read_record(folder)
    if entries is None:
        return None
    problems = mismatches(folder)
    if model_path.is_file() and model_path.name not in entries:
        problems.append(f"{model_path.name}: the model file (model_path) is not in the record")
    return problems
