"""What the image testbed is made of: BuildKit's and the registry's versions (from their go.mod), binary paths."""

from __future__ import annotations

import os
from pathlib import Path

from podserve.testbed.cluster.versions import REPO, required_version

#: BuildKit's module (buildctl and buildkitd at one version: the one CI's moby/buildkit image runs).
BUILDKIT_MODULE = REPO / "tests/pipeline/buildctl"
#: The registry's module (distribution's cmd/registry).
REGISTRY_MODULE = REPO / "tests/pipeline/registry"
#: Upstream's wrapper CI's build jobs call, shipped in BuildKit's module (examples/buildctl-daemonless/).
DAEMONLESS_SCRIPT = "buildctl-daemonless.sh"


def buildkit_version() -> str:
    return required_version("github.com/moby/buildkit", BUILDKIT_MODULE / "go.mod")


def registry_version() -> str:
    return required_version("github.com/distribution/distribution/v3", REGISTRY_MODULE / "go.mod")


def shared_cache() -> Path:
    """Where what every checkout on this machine may reuse lives (content-keyed, written atomically): $PODSERVE_CACHE,
    else ~/.cache/podserve. A fresh clone then skips what only its inputs' content decides (the stand-in bases)."""
    return Path(os.environ.get("PODSERVE_CACHE") or Path.home() / ".cache" / "podserve")


def buildkit_dir(tools: Path = REPO / ".tools") -> Path:
    """Where buildctl, buildkitd and buildctl-daemonless.sh of this BuildKit version live."""
    return tools / f"buildkit-{buildkit_version()}"


def registry_binary(tools: Path = REPO / ".tools") -> Path:
    return tools / f"registry-{registry_version()}" / "registry"
