"""Which build a pod runs, published on every HTTP answer: CI's smoke compares it with the pipeline's own.

The deploy tool gives the pod's server container its image digest (IMAGE_DIGEST_ENV, set where it
pins the image by digest: podserve.tooling.deploy.digest); the in-pod HTTP server adds it to every
answer as IMAGE_DIGEST_HEADER, so a request through the mesh says which build answered it
(podserve.tooling.smoke). Anything but a digest in the variable is left out, never sent as a header.
"""

from __future__ import annotations

import os
import re
from typing import Mapping

IMAGE_DIGEST_ENV = "PODSERVE_IMAGE_DIGEST"
IMAGE_DIGEST_HEADER = "X-Podserve-Image-Digest"
DIGEST = re.compile(r"sha256:[0-9a-f]{64}")


def digest_from(environ: Mapping[str, str] | None = None) -> str:
    """Return the pod's image digest from its environment ('' when unset or not a sha256 digest)."""
    value = (os.environ if environ is None else environ).get(IMAGE_DIGEST_ENV, "")
    return value if DIGEST.fullmatch(value) else ""


def header_line(environ: Mapping[str, str] | None = None) -> str:
    """Return the raw header line that names the image ('' without a digest)."""
    digest = digest_from(environ)
    return f"{IMAGE_DIGEST_HEADER}: {digest}\r\n" if digest else ""
