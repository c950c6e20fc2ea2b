"""Machine-wide exclusive locks (flock on a file): one holder at a time of a thing every checkout shares."""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path

from podserve.testbed.processes import poll_until


def try_lock(path: Path) -> int | None:
    """Take the lock on `path` now and return its descriptor (close it to release), or None if another holds it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def wait_for_lock(path: Path, timeout: float, what: str) -> int:
    """Take the lock on `path`, waiting up to `timeout` seconds; return its descriptor (close it to release)."""
    held = poll_until(lambda: (fd := try_lock(path)) is not None and (fd,),  # a tuple: descriptor 0 is truthy too
                      f"{what}: the lock {path} (another run holds it)", timeout, every=1.0)
    return held[0]


@contextlib.contextmanager
def locked(path: Path, timeout: float, what: str):
    """Hold the lock on `path` for the `with` block."""
    fd = wait_for_lock(path, timeout, what)
    try:
        yield
    finally:
        os.close(fd)
