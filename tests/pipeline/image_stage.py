"""Fixtures' helpers for the real image builds: one build stage per test session, its jobs run once and shared."""

from __future__ import annotations

import functools
import hashlib
from pathlib import Path

import yaml

from podserve.testbed.image import pipeline
from podserve.testbed.image.versions import REPO
from podserve.testbed.locks import try_lock
from podserve.testbed.machine_cache import shared_cache

#: The tests' registry storage, kept between sessions and shared by every checkout on the machine (its build cache
#: makes a fresh clone's builds cache hits); one session at a time holds it, others use their checkout's own.
STORAGE = shared_cache() / "image-test-registry"
OWN_STORAGE = REPO / ".tools" / "image-test-registry"
#: What a pull of each image moves (config + compressed layers), measured 2026-11-23 + 10%: CPU service image 143.0 MB,
#: GPU service image 412.0 MB (onnxruntime-gpu), tooling image 95.1 MB. A change that raises one says why here.
#: PyAV (av 18.1.0, FFmpeg inside the wheel: issue 29's video decoding, in requirements/runtime.txt) added 36.9 MB to
#: both service images: CPU 179.9 MB measured, so 197.9 MB; GPU 412.0 + 36.9 = 448.9 MB, so 493.8 MB.
SIZE_BUDGET = {"service-cpu": 197_900_000, "service-gpu": 493_800_000, "tooling": 104_600_000}
#: What runs hk's pods: its Rollout (its pod template is what a container runs under here)
HK_WORKLOAD = "build/manifests/hk/rollout.yaml"
#: The wheel index's preferred port (any free one when taken): stable per storage, so that the pip steps' cache key
#: (PIP_INDEX_URL is a build argument) is the same from session to session.
INDEX_PORT = 20000 + int(hashlib.sha256(str(STORAGE).encode()).hexdigest(), 16) % 10000


def registry_storage() -> tuple[Path, int | None]:
    """The shared STORAGE with its lock held (close the descriptor to release), or OWN_STORAGE when another holds it."""
    fd = try_lock(STORAGE.with_name(STORAGE.name + ".lock"))
    return (STORAGE, fd) if fd is not None else (OWN_STORAGE, None)


class BuiltFlavor:
    """A checkout of value.py in one flavor whose manifests, model and service-image jobs have run (and what they said)."""

    def __init__(self, stage: pipeline.BuildStage, workdir: Path, flavor: str):
        self.stage, self.flavor = stage, flavor
        self.checkout = stage.checkout(workdir / f"checkout-{flavor}",
                                       pipeline.flavored_value((REPO / "value.py").read_text(), flavor))
        self.jobs = {name: stage.run_job(name, self.checkout) for name in ("manifests", "model", "service-image")}
        for name, done in self.jobs.items():
            assert done.returncode == 0, f"the {name} job failed ({flavor}):\n{done.stderr[-4000:]}"

    @functools.cached_property
    def images(self) -> list[str]:
        return (self.checkout / "build/images.txt").read_text().split()

    @functools.cached_property
    def deployment(self) -> dict:
        return yaml.safe_load((self.checkout / HK_WORKLOAD).read_text())

    def repo_and_tag(self, image: str) -> tuple[str, str]:
        host = f"{self.stage.registry.host}/"
        assert image.startswith(host), f"{image} is not in the local registry {host}"
        repo, tag = image.removeprefix(host).rsplit(":", 1)
        return repo, tag
