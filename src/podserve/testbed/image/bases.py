"""Stand-ins for the base images, built from Debian's packages with mmdebstrap and pushed under the real names.

No container registry is reachable here, so `python:3.11.7-slim-bookworm`, `python:3.11.7-slim` and
`nvidia/cuda:13.0.2-cudnn-runtime-ubuntu24.04` are STAND-INS served by the local registry (buildkitd
mirrors docker.io to it):
- python: Debian bookworm's python3 (3.11.2 stands in for 3.11.7), python3-venv and pip, with
  `python` and `pip` on PATH as the official image has them and no EXTERNALLY-MANAGED marker (as
  in the official image, a bare `pip install` installs);
- nvidia/cuda: a Debian bookworm minbase with Debian's apt sources and no CUDA libraries, so the
  GPU Dockerfile's own `apt-get install python3 python3-venv` runs; the server then runs on its
  CPU fallback.
The Dockerfiles pin each base by digest (`python:3.11.7-slim-bookworm@sha256:...`: the real image's, which no
registry here can serve); BuildKit pulls by that digest and so refuses a stand-in pushed under the tag. A checkout
the testbed builds from therefore names each stand-in by ITS digest instead (`pin_stand_ins`: the FROM lines' digests,
and nothing else, replaced), and a test builds the Dockerfile as committed to show the real digest is what BuildKit
asks for. Everything above them (the Dockerfiles' steps, pip, the wheels) is real. Each rootfs is cached in
~/.cache/podserve/image-bases/<recipe key>/rootfs.tar (machine_cache.shared_cache(), shared by every checkout); each image is labelled with its key and rebuilt only when it changes.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from podserve.testbed.image import versions
from podserve.testbed.image.ci_jobs import PIPELINE
from podserve.testbed.image.registry import Registry, RegistryError
from podserve.testbed.machine_cache import shared_cache

#: Debian's apt sources, as this machine has them (mmdebstrap reads them on stdin).
APT_SOURCES = Path("/etc/apt/sources.list.d/debian.sources")
SUITE = "bookworm"
KEY_LABEL = "io.podserve.stand-in.key"
#: No device nodes in the tar (a rootless build cannot make them; the runtime mounts /dev), no docs.
OPTIONS = ("--skip=output/dev", "--dpkgopt=path-exclude=/usr/share/doc/*", "--dpkgopt=path-exclude=/usr/share/man/*",
        "--dpkgopt=path-exclude=/usr/share/locale/*")
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


class StandInError(RuntimeError):
    """A stand-in base image could not be made; the message names it and the fix."""


@dataclasses.dataclass(frozen=True)
class Recipe:
    """How one stand-in rootfs is made: Debian packages (pinned where the image's promise depends on them)."""
    name: str
    packages: tuple[str, ...]
    hooks: tuple[str, ...]
    cmd: str
    says: str

    def key(self) -> str:
        text = repr((SUITE, self.packages, self.hooks, OPTIONS, self.cmd))
        return f"{self.name}-{hashlib.sha256(text.encode()).hexdigest()[:12]}"


PYTHON = Recipe(
    "python",
    ("python3.11=3.11.2-6+deb12u9", "python3=3.11.2-1+b1", "python3-venv=3.11.2-1+b1", "python3-pip=23.0.1+dfsg-1",
     "python-is-python3=3.11.2-1+deb12u1", "ca-certificates", "passwd"),
    ('rm -f "$1"/usr/lib/python3.11/EXTERNALLY-MANAGED', 'ln -s /usr/bin/pip3 "$1"/usr/local/bin/pip'),
    "python3",
    "Debian bookworm python3 3.11.2 standing in for Python 3.11.7 (no registry reachable here)")
CUDA = Recipe(
    "cuda", ("ca-certificates", "passwd"), (), "bash",
    "Debian bookworm minbase with Debian's apt sources and no CUDA libraries (no registry reachable here)")
#: Which recipe stands in for a base image, by repository.
RECIPES = {"library/python": PYTHON, "nvidia/cuda": CUDA}


def base_images() -> list[str]:
    """The base images the Dockerfiles and CI's default image name, as written (with their pinned digest; stage
    aliases, ${ARG} bases and CI's image built from Dockerfile.tooling, $TOOLING_IMAGE, left out)."""
    names = {PIPELINE["default"]["image"]} - {"$TOOLING_IMAGE"}
    for dockerfile in ("Dockerfile", "Dockerfile.tooling"):
        text = (versions.REPO / dockerfile).read_text()
        stages = set(re.findall(r"^FROM\s+\S+\s+AS\s+(\S+)", text, re.MULTILINE | re.IGNORECASE))
        names |= {image for image in re.findall(r"^FROM\s+(\S+)", text, re.MULTILINE)
                  if "$" not in image and image not in stages and image != "scratch"}
    return sorted(names)


def repository(image: str) -> tuple[str, str]:
    """docker.io's (repository, tag) of an image name: python:3.11[@sha256:...] -> (library/python, 3.11)."""
    name, tag = image.split("@", 1)[0].rsplit(":", 1)
    return (name if "/" in name else f"library/{name}"), tag


def recipe_for(image: str) -> Recipe:
    repo, _ = repository(image)
    if repo not in RECIPES:
        raise StandInError(f"no stand-in recipe for the base image {image}: add one to podserve.testbed.image.bases")
    return RECIPES[repo]


def rootfs_tar(recipe: Recipe, cache: Path | None = None, out=None) -> Path:
    """The recipe's rootfs as a tar, made once per machine with mmdebstrap (about 1-2 min) and reused by every checkout
    (machine_cache.shared_cache(): its name is its recipe's key, so a changed recipe makes a new one)."""
    target = (cache or shared_cache()) / "image-bases" / recipe.key() / "rootfs.tar"
    if target.is_file():
        return target
    if shutil.which("mmdebstrap") is None:
        raise StandInError("mmdebstrap is missing: `make image-tools` installs it (Debian's package, pinned)")
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_suffix(".tar.partial")
    started = time.monotonic()
    argv = ["mmdebstrap", "--variant=minbase", "--format=tar", "--include=" + ",".join(recipe.packages), *OPTIONS,
            *[f"--customize-hook={hook}" for hook in recipe.hooks], SUITE, str(partial), "-"]
    with APT_SOURCES.open("rb") as sources:
        done = subprocess.run(argv, stdin=sources, capture_output=True, text=True, timeout=900)
    if done.returncode != 0:
        partial.unlink(missing_ok=True)
        raise StandInError(f"mmdebstrap for the {recipe.name} stand-in failed:\n{done.stderr[-2000:]}")
    os.replace(partial, target)
    if out:
        print(f"  {recipe.name} stand-in rootfs made by mmdebstrap in {time.monotonic() - started:.0f}s", file=out)
    return target


def stand_in_dockerfile(recipe: Recipe, images: list[str]) -> str:
    return (f"# STAND-IN for {', '.join(images)}: {recipe.says}.\n"
            f"FROM scratch\nADD rootfs.tar /\nENV PATH={PATH} LANG=C.UTF-8\n"
            f'LABEL {KEY_LABEL}="{recipe.key()}" org.opencontainers.image.description="STAND-IN: {recipe.says}"\n'
            f'CMD ["{recipe.cmd}"]\n')


def pushed_key(registry: Registry, image: str) -> str | None:
    repo, tag = repository(image)
    try:
        return registry.describe(repo, tag).config.get("config", {}).get("Labels", {}).get(KEY_LABEL)
    except RegistryError:
        return None


def push_stand_ins(registry: Registry, build, out=None) -> dict[str, str]:
    """Make and push a stand-in under every base image name that lacks an up-to-date one; return {image: key}.

    `build(context, lines)` runs BuildKit lines in `context` (the job runner, with the registry's credentials).
    """
    wanted: dict[Recipe, list[str]] = {}
    for image in base_images():
        wanted.setdefault(recipe_for(image), []).append(image)
    for recipe, images in wanted.items():
        if all(pushed_key(registry, image) == recipe.key() for image in images):
            continue
        started = time.monotonic()
        names = ",".join(f"{registry.host}/{':'.join(repository(image))}" for image in images)
        with tempfile.TemporaryDirectory(prefix="podserve-stand-in-") as folder:  # this build's own context
            context = Path(folder)
            context.chmod(0o755)  # BuildKit reads it from its user namespace
            _link_or_copy(rootfs_tar(recipe, out=out), context / "rootfs.tar")
            (context / "Dockerfile").write_text(stand_in_dockerfile(recipe, images))
            done = build(context, ["buildctl-daemonless.sh build --frontend dockerfile.v0 --local context=. "
                                   f"--local dockerfile=. --output 'type=image,\"name={names}\",push=true'"])
        if done.returncode != 0:
            raise StandInError(f"pushing the {recipe.name} stand-in failed:\n{done.stderr[-3000:]}")
        if out:
            print(f"  stand-in {recipe.name} pushed as {', '.join(images)} in {time.monotonic() - started:.0f}s",
                  file=out)
    return {image: recipe_for(image).key() for image in base_images()}


def stand_in_digests(registry: Registry) -> dict[str, str]:
    """{base image as the Dockerfiles pin it: the digest of its stand-in in `registry`}."""
    return {image: registry.describe(*repository(image)).digest for image in base_images()}


def pin_stand_ins(dockerfile_text: str, digests: dict[str, str]) -> str:
    """The Dockerfile with each pinned base's digest replaced by its stand-in's (stand_in_digests); nothing else."""
    for image, digest in digests.items():
        if "@" in image:
            dockerfile_text = re.sub(rf"^(FROM\s+){re.escape(image)}(\s|$)",
                                     lambda m: f"{m.group(1)}{image.split('@')[0]}@{digest}{m.group(2)}",
                                     dockerfile_text, flags=re.MULTILINE)
    return dockerfile_text


def _link_or_copy(source: Path, target: Path) -> None:
    try:
        os.link(source, target)
    except OSError:  # another filesystem
        shutil.copyfile(source, target)
