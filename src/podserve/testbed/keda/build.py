"""Build KEDA's operator and metrics API server from its Go module into the shared cache, its CRDs beside.

    python -m podserve.testbed.keda.build [--tools DIR]     (default: ~/.cache/podserve, machine_cache.py)

They go to <DIR>/keda/keda-<version>_<digest of cluster/keda's go.mod, go.sum and tools.go>/: every checkout on the
machine reuses them. cluster/keda/go.mod pins github.com/kedacore/keda/v2 (its own module: KEDA pins its own k8s.io/*
line, the control plane's module Kubernetes 1.35; it copies KEDA's one replace line, which a dependency's go.mod
cannot pass on). KEDA's CRDs (its config/crd/bases/, 6 files) are copied from that module as downloaded, no copy kept
in the repository: the test control plane installs them from there. GOTOOLCHAIN=local (v2.21.0 says `go 1.26.0`),
CGO_ENABLED=0, the testbed's BUILD_FLAGS. Measured cold: see docs/tests.md and the KEDA note.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

from podserve.testbed.cluster.build import _go, go_env, module_folder, run_cli, staged_build
from podserve.testbed.cluster.versions import GO_MODULE, required_version
from podserve.testbed.machine_cache import inputs_digest, shared_cache

#: Our Go module for KEDA: its go.mod pins github.com/kedacore/keda/v2 (the one source of the version).
KEDA_MODULE = GO_MODULE / "keda"
KEDA = "github.com/kedacore/keda/v2"
OPERATOR = "keda-operator"
ADAPTER = "keda-adapter"
#: What is built: each binary and its package in KEDA's module.
PACKAGES = {OPERATOR: f"{KEDA}/cmd/operator", ADAPTER: f"{KEDA}/cmd/adapter"}
#: KEDA's CRDs as its module ships them, and where they land beside the binaries.
CRDS_IN_MODULE = Path("config/crd/bases")
CRD_FOLDER = "crds"
CRD_FILES = ("eventing.keda.sh_cloudeventsources.yaml", "eventing.keda.sh_clustercloudeventsources.yaml",
             "keda.sh_clustertriggerauthentications.yaml", "keda.sh_scaledjobs.yaml", "keda.sh_scaledobjects.yaml",
             "keda.sh_triggerauthentications.yaml")


def keda_version() -> str:
    return required_version(KEDA, KEDA_MODULE / "go.mod")


def cache_key() -> str:
    module = inputs_digest(KEDA_MODULE / "go.mod", KEDA_MODULE / "go.sum", KEDA_MODULE / "tools.go")
    return f"keda-{keda_version()}_{module}"


def binaries_dir(tools: Path | None = None) -> Path:
    """Where the operator, the adapter and KEDA's CRDs live: <tools>/keda/<cache_key()>."""
    return (tools or shared_cache()) / "keda" / cache_key()


def crd_paths(tools: Path | None = None) -> list[Path]:
    folder = binaries_dir(tools) / CRD_FOLDER
    return [folder / name for name in CRD_FILES]


def missing(target: Path) -> list[str]:
    wanted = [*PACKAGES, *(f"{CRD_FOLDER}/{name}" for name in CRD_FILES)]
    return [name for name in wanted if not (target / name).is_file()]


def build(tools: Path | None = None, out=sys.stdout) -> Path:
    """Build the operator and the adapter and copy KEDA's CRDs into <tools>/keda/<key>/ unless there; return it."""
    target = binaries_dir(tools)
    if not missing(target):
        print(f"keda up to date in {target}", file=out)
        return target
    env = go_env()
    version = keda_version()
    # upstream's GO_LDFLAGS stamp the version the operator logs and exports (keda_build_info)
    stamp = f"-s -w -X={KEDA}/version.Version={version.lstrip('v')} -X={KEDA}/version.GitCommit={version}"

    def fill(staging: Path) -> list[str]:
        module = module_folder(KEDA, version, KEDA_MODULE, env)
        (staging / CRD_FOLDER).mkdir()
        for name in CRD_FILES:
            shutil.copyfile(module / CRDS_IN_MODULE / name, staging / CRD_FOLDER / name)
        for name, package in PACKAGES.items():  # each its own -o name (both packages are called main: cmd/<x>)
            print(f"building {name} ({package} {version}) ...", file=out, flush=True)
            _go(["build", "-ldflags", stamp, "-o", str(staging / name), package], name, env, KEDA_MODULE)
        return [*(f"{CRD_FOLDER}/{name}" for name in CRD_FILES), ADAPTER, OPERATOR]  # the operator last

    return staged_build(target, "keda", fill, out)


def main(argv: list[str] | None = None) -> int:
    return run_cli(build, __doc__.splitlines()[0], argv)


if __name__ == "__main__":
    sys.exit(main())
