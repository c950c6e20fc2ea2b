"""What `make deploy` checks and says on a developer's machine: the image exists, the checkout is what was built.

CI deploys the image its image job pushed, by digest (`--image-metadata`). A person's `make deploy`
renders value.py and names the image `make image` tags with the checkout's commit. Against the local
cluster (`make cluster`: an API server on loopback, whose nodes pull from `make image`'s registry
storage), that image may never have been built: the deploy would wait for a pull that cannot
succeed, or, on kwok's simulated nodes, report a revision as serving that no container ever ran. So
on that path, and only there, the tool refuses (exit 3, naming `make image`) an image that is not in
that storage, warns when value.py or src/ hold changes the commit does not, and says when the pods it
waited for are kwok's, where no container runs.
"""

from __future__ import annotations

import ipaddress
import os
import subprocess
from pathlib import Path
from urllib.parse import urlsplit

from podserve.tooling.image_tag import LOCAL_REGISTRY_STORAGE

#: Where a tag lives in a distribution registry's filesystem storage.
_TAGS = "docker/registry/v2/repositories/{repository}/_manifests/tags/{tag}/current/link"
#: kwok's nodes carry this annotation (make cluster's pools): no container runs there.
KWOK_ANNOTATION = ("kwok.x-k8s.io/node", "fake")
NO_CONTAINER = ("no container ran: its pods are on kwok's simulated nodes (make cluster's pools); the real node runs "
                "containers (make cluster, docs/pipeline.md: The real node)")


def applies(api_server: str, environ=os.environ) -> bool:
    """Whether a deploy run with --local (make deploy) goes to the local cluster: outside CI, to an API server on
    loopback (another cluster pulls from its own registry, which this checkout cannot see)."""
    if environ.get("CI") or environ.get("GITLAB_CI"):
        return False
    host = urlsplit(api_server).hostname or ""
    try:
        return host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def missing_image(image: str, checkout: Path) -> str | None:
    """Why `image` cannot be pulled by the local cluster (make image never pushed it), or None when it is there."""
    if "@sha256:" in image or ":" not in image.rsplit("/", 1)[-1]:
        return None  # by digest, or untagged: not what make image names
    name, tag = image.rsplit(":", 1)
    path = name.split("/", 1)[1] if "/" in name else name  # the registry's own name goes; the storage is local
    storage = checkout / LOCAL_REGISTRY_STORAGE
    found = list(storage.glob(_TAGS.format(repository=f"*/{path}", tag=tag))) + \
        list(storage.glob(_TAGS.format(repository=path, tag=tag)))
    if found:
        return None
    return (f"{image}: the local cluster pulls what `make image` pushed ({LOCAL_REGISTRY_STORAGE}), which holds no "
            f"{path}:{tag}; run `make image`, then deploy again")


def uncommitted(checkout: Path, values: Path) -> list[str]:
    """value.py's and src/'s files whose changes the commit (the image's) does not hold."""
    try:
        done = subprocess.run(["git", "status", "--porcelain", "--", str(values.resolve()), "src"], cwd=checkout,
                              capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return []
    return [line[3:] for line in done.stdout.splitlines() if line[3:]] if done.returncode == 0 else []


def on_kwok_only(pods: list[dict], nodes: dict[str, dict]) -> bool:
    """Whether every pod that runs is on a kwok node (by the nodes' annotation)."""
    placed = [pod.get("spec", {}).get("nodeName") for pod in pods]
    key, value = KWOK_ANNOTATION
    return bool(placed) and all(
        name and (nodes.get(name) or {}).get("metadata", {}).get("annotations", {}).get(key) == value
        for name in placed)
