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

from podserve.model_record import RECORD_COMMAND, RECORD_NAME, RecordError, model_problems, read_record, record_folder

log = logging.getLogger(__name__)

_FIX = ("Fetch or merge the model again (`make model`, as CI's model job does), or record the files you meant to "
        f"serve with `{RECORD_COMMAND}` and commit {RECORD_NAME}")


class ModelCheckError(RuntimeError):
    """The model files do not match their record."""


def check_model(model_path: Path) -> int:
    """Verify every file `model_path`'s record lists; return how many matched, or raise ModelCheckError."""
    folder = record_folder(model_path)
    started = time.monotonic()
    try:
        problems = model_problems(model_path)
    except RecordError as exc:
        raise ModelCheckError(str(exc)) from exc
    if problems is None:
        log.warning("no %s beside the model in %s: the model files are not checked", RECORD_NAME, folder)
        return 0
    if problems:
        raise ModelCheckError(f"the model in {folder} does not match {RECORD_NAME}: {'; '.join(problems)}. "
                              + _FIX)
    entries = read_record(folder)
    log.info("model checked: %d file(s) in %s match %s (%.1fs)", len(entries), folder, RECORD_NAME,
             time.monotonic() - started)
    return len(entries)
