"""The pinned requirements' wheels, downloaded once, served as a simple (PEP 503) index on loopback for the builds.

A build container does not trust this machine's TLS interception CA, so pip inside it cannot
reach PyPI; it gets the same pinned wheels over plain HTTP on 127.0.0.1 instead, through the
Dockerfiles' PIP_INDEX_URL build argument (how a company's internal mirror is passed too).
Wheels are for the images' Python (CPython 3.11, manylinux x86_64) and cached in the machine's shared cache
(machine_cache.shared_cache()/wheels-cp311, shared by every checkout, written under a lock).
"""

from __future__ import annotations

import functools
import hashlib
import html
import os
import http.server
import re
import subprocess
import sys
import threading
from pathlib import Path

from podserve.model_record import sha256_of
from podserve.testbed.locks import locked
from podserve.testbed.machine_cache import shared_cache

CACHE = shared_cache() / "wheels-cp311"
LOCK_TIMEOUT_SECONDS = 900.0
#: Debian bookworm's glibc is 2.36: every manylinux tag up to it (pip does not expand --platform itself).
GLIBC_MINORS = range(5, 37)
PLATFORM = (*[f"--platform=manylinux_2_{minor}_x86_64" for minor in GLIBC_MINORS],
            "--platform=manylinux2014_x86_64", "--platform=manylinux2010_x86_64", "--platform=manylinux1_x86_64",
            "--python-version=3.11", "--implementation=cp", "--abi=cp311", "--only-binary=:all:")


class WheelError(RuntimeError):
    """The wheels could not be downloaded; the message quotes pip."""


def download(requirements: list[Path], cache: Path = CACHE) -> Path:
    """pip download every pinned wheel of `requirements` (once per content of those files) and index them."""
    cache.mkdir(parents=True, exist_ok=True)
    with locked(cache / ".lock", LOCK_TIMEOUT_SECONDS, "the wheel cache"):
        _download(requirements, cache)
        write_index(cache)
    return cache


def _download(requirements: list[Path], cache: Path) -> None:
    key = hashlib.sha256(b"".join(_with_includes(path) for path in sorted(requirements))).hexdigest()[:16]
    stamp = cache / f".done-{key}"
    if not stamp.is_file():
        argv = [sys.executable, "-m", "pip", "download", "--quiet", "--disable-pip-version-check", *PLATFORM,
                "--dest", str(cache / "files")]
        for path in requirements:
            argv += ["-r", str(path)]
        done = subprocess.run(argv, capture_output=True, text=True, timeout=900)
        if done.returncode != 0:
            raise WheelError(f"pip download failed for {', '.join(map(str, requirements))}:\n{done.stderr[-2000:]}")
        stamp.touch()


def _with_includes(path: Path) -> bytes:
    text = path.read_bytes()
    includes = re.findall(rb"^-r\s+(\S+)", text, re.MULTILINE)
    return text + b"".join(_with_includes(path.parent / name.decode()) for name in includes)


def _project(wheel: str) -> str:
    return re.sub(r"[-_.]+", "-", wheel.split("-")[0]).lower()


def write_index(root: Path) -> None:
    """root/simple/<project>/index.html linking every wheel in root/files/ with its sha256 (PEP 503)."""
    projects: dict[str, list[Path]] = {}
    for wheel in sorted((root / "files").glob("*.whl")):
        projects.setdefault(_project(wheel.name), []).append(wheel)
    for project, wheels in projects.items():
        folder = root / "simple" / project
        folder.mkdir(parents=True, exist_ok=True)
        links = "".join(f'<a href="../../files/{html.escape(w.name)}#sha256={_sha256(w)}">{html.escape(w.name)}</a>\n'
                        for w in wheels)
        _write_atomically(folder / "index.html", f"<!DOCTYPE html><html><body>\n{links}</body></html>\n")
    listing = "".join(f'<a href="{p}/">{p}</a>\n' for p in sorted(projects))
    _write_atomically(root / "simple" / "index.html", f"<!DOCTYPE html><html><body>\n{listing}</body></html>\n")


def _write_atomically(path: Path, text: str) -> None:
    """Another checkout's index may be serving this file right now: it sees the old page or the new, never half."""
    partial = path.with_name(f".{path.name}.{os.getpid()}")
    partial.write_text(text)
    os.replace(partial, path)


@functools.lru_cache(maxsize=None)
def _sha256_of(path: str, size: int, mtime: float) -> str:
    return sha256_of(Path(path))


def _sha256(path: Path) -> str:
    stat = path.stat()
    return _sha256_of(str(path), stat.st_size, stat.st_mtime)


class Index:
    """The index served on 127.0.0.1:<port> from a thread; `.url` is what PIP_INDEX_URL gets.

    `port` is a preference: when something else holds it, a free port is taken (the URL is part of
    BuildKit's cache key for the pip steps, so a stable port keeps them cached from run to run).
    """

    def __init__(self, root: Path, port: int = 0):
        handler = functools.partial(_Quiet, directory=str(root))
        try:
            self.server = http.server.ThreadingHTTPServer(("127.0.0.1", port), handler)
        except OSError:
            self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/simple/"
        self.thread = threading.Thread(target=self.server.serve_forever, name="wheel-index", daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(10)

    def __enter__(self) -> "Index":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format, *args):  # noqa: A002 - the base class's name
        pass
