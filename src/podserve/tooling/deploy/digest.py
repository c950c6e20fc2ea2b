"""Images by digest: the deploy applies `<repository>@sha256:...`, the image that was built and tested, never a tag.

BuildKit writes what it pushed to `--metadata-file` (JSON, `containerimage.digest`: the
manifest's digest, one for every name it pushed, so every region's registry serves the same
bytes under it). `apply --image-metadata FILE` replaces the server container's tag with that
digest before anything is applied; the history keeps the applied objects, so a rollback
re-applies the digest that was tested, whatever the tag points at by then. The server container
also gets the digest in its environment (podserve.image_identity): the pod publishes it on every
answer, and CI's smoke checks that grey serves this pipeline's build, not another branch's.
"""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path

from podserve.image_identity import IMAGE_DIGEST_ENV
from podserve.tooling.deploy.errors import BadInput
from podserve.tooling.rollout import WORKLOAD_KINDS

#: BuildKit's key for the pushed image's manifest digest in --metadata-file.
DIGEST_KEY = "containerimage.digest"
DIGEST = re.compile(r"sha256:[0-9a-f]{64}")
#: The container render names for the service's own image (templates/deployment.yaml.j2).
SERVER_CONTAINER = "server"


def from_metadata(path: str | Path) -> str:
    """Return the digest BuildKit recorded in its metadata file; BadInput naming the file when it has none."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise BadInput(f"--image-metadata {path} cannot be read as BuildKit's metadata JSON ({exc}); pass the file "
                       "the image job wrote with `buildctl build --metadata-file`") from None
    digest = data.get(DIGEST_KEY) if isinstance(data, dict) else None
    if not isinstance(digest, str) or not DIGEST.fullmatch(digest):
        raise BadInput(f"--image-metadata {path} has no {DIGEST_KEY} of the form sha256:<64 hex>; pass the file "
                       "of the job that pushed the service's image")
    return digest


def repository(image: str) -> str:
    """Return the image reference without its tag or digest (the registry's port stays)."""
    name = image.split("@", 1)[0]
    head, _, last = name.rpartition("/")
    return f"{head}/{last.split(':', 1)[0]}" if head else last.split(":", 1)[0]


def pin(objects: tuple[dict, ...], digest: str) -> tuple[dict, ...]:
    """Return copies of `objects` whose server containers name their image by `digest`, and know it (its env)."""
    pinned = []
    for obj in objects:
        if obj.get("kind") in WORKLOAD_KINDS:
            obj = copy.deepcopy(obj)
            for container in obj["spec"]["template"]["spec"]["containers"]:
                if container.get("name") == SERVER_CONTAINER:
                    container["image"] = f"{repository(container['image'])}@{digest}"
                    env = [e for e in container.get("env") or [] if e.get("name") != IMAGE_DIGEST_ENV]
                    container["env"] = [*env, {"name": IMAGE_DIGEST_ENV, "value": digest}]
        pinned.append(obj)
    return tuple(pinned)
