"""Check the model files against the SHA-256 recorded when they were fetched or merged, before loading.

The record is `MODEL.sha256` in the model's folder (see podserve.model_record); the image
always has one (the Dockerfile refuses to build without it). A file that is missing or
differs stops the server before it listens, so `/api/ping` never answers 200 for a model
that is not the one CI recorded. With no record (a model put in by hand for a local run)
the server starts and logs a warning.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from podserve.model_record import RECORD_NAME, RecordError, mismatches, read_record, record_folder

log = logging.getLogger(__name__)

_FIX = ("Fetch or merge the model again (CI's model job does both), or record the files you meant to serve with "
        "`python -m podserve.tooling.model_parts record {folder}`")


class ModelCheckError(RuntimeError):
    """The model files do not match their record."""


def check_model(model_path: Path) -> int:
    """Verify every file `model_path`'s record lists; return how many matched, or raise ModelCheckError."""
    folder = record_folder(model_path)
    started = time.monotonic()
    try:
        entries = read_record(folder)
    except RecordError as exc:
        raise ModelCheckError(str(exc)) from exc
    if entries is None:
        log.warning("no %s beside the model in %s: the model files are not checked", RECORD_NAME, folder)
        return 0
    problems = mismatches(folder)
    if model_path.is_file() and model_path.name not in entries:
        problems.append(f"{model_path.name}: the model file (model_path) is not in the record")
    if problems:
        raise ModelCheckError(f"the model in {folder} does not match {RECORD_NAME}: {'; '.join(problems)}. "
                              + _FIX.format(folder=folder))
    log.info("model checked: %d file(s) in %s match %s (%.1fs)", len(entries), folder, RECORD_NAME,
             time.monotonic() - started)
    return len(entries)
