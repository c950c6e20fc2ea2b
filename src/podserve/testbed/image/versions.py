"""What the image testbed is made of: BuildKit's and the registry's versions (from their go.mod), binary paths."""

from __future__ import annotations

from pathlib import Path

from podserve.testbed.cluster.versions import REPO, required_version
from podserve.testbed.machine_cache import inputs_digest, shared_cache

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


def buildkit_dir(tools: Path | None = None) -> Path:
    """Where buildctl, buildkitd and buildctl-daemonless.sh of this BuildKit module live (the shared cache's by
    default), named by its version and a digest of its go.mod and go.sum."""
    module = inputs_digest(BUILDKIT_MODULE / "go.mod", BUILDKIT_MODULE / "go.sum")
    return (tools or shared_cache()) / f"buildkit-{buildkit_version()}-{module}"


def registry_binary(tools: Path | None = None) -> Path:
    """The registry built from REGISTRY_MODULE (the shared cache's by default), named like buildkit_dir."""
    module = inputs_digest(REGISTRY_MODULE / "go.mod", REGISTRY_MODULE / "go.sum")
    return (tools or shared_cache()) / f"registry-{registry_version()}-{module}" / "registry"
