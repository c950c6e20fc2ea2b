"""The image tag a render or a deploy names when none is given: the commit the image was built from.

In CI that is $CI_COMMIT_SHORT_SHA (what the service-image job pushed). Outside CI it is the
checkout's own commit, as `make image` tags the image it builds from that checkout, so that
`make image` then `make deploy` name the same image; "dev" when the folder is not in a git checkout.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

#: Where `make image` keeps its registry's storage, which `make cluster`'s nodes pull from (relative to the checkout).
LOCAL_REGISTRY_STORAGE = "build/image/registry-storage"
#: GitLab's CI_COMMIT_SHORT_SHA is 8 hex digits; the local tag has the same length.
SHORT_SHA_LENGTH = 8
OUTSIDE_GIT = "dev"


def commit_tag(folder: Path) -> str:
    """The short commit of the git checkout holding `folder`, else "dev"."""
    try:
        done = subprocess.run(["git", "rev-parse", f"--short={SHORT_SHA_LENGTH}", "HEAD"], cwd=folder,
                              capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return OUTSIDE_GIT
    return done.stdout.strip() if done.returncode == 0 and done.stdout.strip() else OUTSIDE_GIT


def default_image_tag(values_path: str | Path) -> str:
    """$CI_COMMIT_SHORT_SHA, else the commit of the checkout holding value.py, else "dev"."""
    return os.environ.get("CI_COMMIT_SHORT_SHA") or commit_tag(Path(values_path).resolve().parent)
