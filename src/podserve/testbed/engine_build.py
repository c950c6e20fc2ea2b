"""Build an engine's binaries from its upstream Go module into the shared cache, with the CRDs its module ships.

An engine (Argo Rollouts, KEDA) is built through a Go module of ours, cluster/<name>/, whose go.mod pins the upstream
module (the one source of its version) and copies upstream's replace lines (a dependency's are not passed on). The
binaries and CRDs go to <tools>/<name>/<name>-<version>_<digest of our module's inputs>/, so every checkout on the
machine reuses them and a changed pin builds anew. One go command builds every package (their links side by side);
the CRDs are copied from the module as downloaded, no copy kept in the repository.
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from podserve.testbed.cluster.build import _go, go_env, module_folder, staged_build
from podserve.testbed.cluster.versions import GO_MODULE, required_version
from podserve.testbed.machine_cache import inputs_digest, shared_cache

CRD_FOLDER = "crds"


@dataclass(frozen=True)
class EngineBuild:
    """One engine: our module, the upstream module it pins, what is built and which CRDs come along."""

    name: str                                   # cluster/<name>, the cache folder, the make target
    upstream: str                               # the upstream module path
    packages: dict[str, str]                    # binary name -> package; the first one's presence ends the build
    crds_in_module: PurePosixPath               # where upstream's module keeps its CRDs
    crd_files: tuple[str, ...]
    ldflags: Callable[[str], str]               # the link flags for a version (upstream's version stamp)
    inputs: tuple[str, ...] = ("go.mod", "go.sum", "tools.go")  # our module's files the cache key digests

    @property
    def module(self) -> Path:
        return GO_MODULE / self.name

    def version(self) -> str:
        return required_version(self.upstream, self.module / "go.mod")

    def cache_key(self) -> str:
        return f"{self.name}-{self.version()}_{inputs_digest(*(self.module / name for name in self.inputs))}"

    def binaries_dir(self, tools: Path | None = None) -> Path:
        """Where the binaries and the CRDs live: <tools>/<name>/<cache_key()>, the shared cache by default."""
        return (tools or shared_cache()) / self.name / self.cache_key()

    def crd_paths(self, tools: Path | None = None) -> list[Path]:
        folder = self.binaries_dir(tools) / CRD_FOLDER
        return [folder / name for name in self.crd_files]

    def missing(self, target: Path) -> list[str]:
        wanted = [*self.packages, *(f"{CRD_FOLDER}/{name}" for name in self.crd_files)]
        return [name for name in wanted if not (target / name).is_file()]

    def build(self, tools: Path | None = None, out=sys.stdout) -> Path:
        """Build every package and copy the CRDs into binaries_dir(tools) unless all are there; return it."""
        target = self.binaries_dir(tools)
        if not self.missing(target):
            print(f"{self.name} up to date in {target}", file=out)
            return target
        env, version = go_env(), self.version()

        def fill(staging: Path) -> list[str]:
            print(f"building {', '.join(self.packages)} ({self.upstream} {version}) ...", file=out, flush=True)
            # -o DIR/ names each binary after its package's last element; renamed to ours after
            _go(["build", "-ldflags", self.ldflags(version), "-o", f"{staging}/", *self.packages.values()], self.name,
                env, self.module)
            for name, package in self.packages.items():
                os.replace(staging / PurePosixPath(package).name, staging / name)
            module = module_folder(self.upstream, version, self.module, env)
            (staging / CRD_FOLDER).mkdir()
            for name in self.crd_files:
                shutil.copyfile(module / self.crds_in_module / name, staging / CRD_FOLDER / name)
            return [*(f"{CRD_FOLDER}/{name}" for name in self.crd_files), *reversed(self.packages)]

        return staged_build(target, self.name, fill, out)
