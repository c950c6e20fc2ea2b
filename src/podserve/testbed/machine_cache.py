"""The machine's shared cache: what every checkout on this machine may reuse, each entry named by its inputs.

$PODSERVE_CACHE, else ~/.cache/podserve. A fresh clone then skips whatever only its inputs decide: the
Go-built binaries (named by their versions and a digest of their go.mod, go.sum and sources), the
stand-in base images, the wheels, Maven's local repository, the image tests' registry. Entries are
written atomically (built aside, then renamed in) or under a lock, so two sessions never see half of one.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

DIGEST_LENGTH = 12


def shared_cache() -> Path:
    """The cache's root: $PODSERVE_CACHE, else ~/.cache/podserve."""
    return Path(os.environ.get("PODSERVE_CACHE") or Path.home() / ".cache" / "podserve")


def inputs_digest(*paths: Path) -> str:
    """A short digest of the files at `paths` (folders: every file under them), names and contents."""
    digest = hashlib.sha256()
    for path in paths:
        files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
        for file in files:
            digest.update(str(file.relative_to(path.parent)).encode() + b"\0" + file.read_bytes() + b"\0")
    return digest.hexdigest()[:DIGEST_LENGTH]
