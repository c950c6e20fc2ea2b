"""Build istiod (pilot-discovery) from the istio.io/istio module into the shared cache, with Istio's CRDs beside it.

    python -m podserve.testbed.mesh.build [--tools DIR]     (default: ~/.cache/podserve, machine_cache.py)

They go to <DIR>/istiod/istio-<pseudo-version>_<digest of cluster/istiod's go.mod, go.sum and tools.go>/: every
checkout on the machine reuses them. cluster/istiod/go.mod pins the version (its own module: istio needs k8s.io/*
v0.36, the control plane's module pins Kubernetes 1.35). Istio's CRDs are copied from that module's
manifests/charts/base/files/crd-all.gen.yaml as downloaded (the control plane installs them from there: no copy of
them is kept in the repository). GOTOOLCHAIN=local (the module says `go 1.26.0`), CGO_ENABLED=0.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

from podserve.testbed.cluster.build import _go, go_env, module_folder, run_cli, staged_build
from podserve.testbed.cluster.versions import GO_MODULE, required_version
from podserve.testbed.machine_cache import inputs_digest, shared_cache

#: Our Go module for istiod: its go.mod pins istio.io/istio (the one source of that version).
ISTIOD_MODULE = GO_MODULE / "istiod"
ISTIO = "istio.io/istio"
PILOT_DISCOVERY = "pilot-discovery"
#: Istio's CRDs, as the istio module ships them (its base chart's files).
CRD_FILE = "crd-all.gen.yaml"
CRD_IN_MODULE = Path("manifests/charts/base/files") / CRD_FILE
#: The release line the module is (its VERSION file, e.g. 1.31): the gateway tells istiod it runs that version.
VERSION_FILE = "VERSION"


def istio_version() -> str:
    return required_version(ISTIO, ISTIOD_MODULE / "go.mod")


def cache_key() -> str:
    module = inputs_digest(ISTIOD_MODULE / "go.mod", ISTIOD_MODULE / "go.sum", ISTIOD_MODULE / "tools.go")
    return f"istio-{istio_version()}_{module}"


def binaries_dir(tools: Path | None = None) -> Path:
    """Where pilot-discovery and Istio's CRDs live: <tools>/istiod/<cache_key()>, the shared cache by default."""
    return (tools or shared_cache()) / "istiod" / cache_key()


def missing(target: Path) -> list[str]:
    return [name for name in (PILOT_DISCOVERY, CRD_FILE, VERSION_FILE) if not (target / name).is_file()]


def build(tools: Path | None = None, out=sys.stdout) -> Path:
    """Build pilot-discovery and copy Istio's CRDs into <tools>/istiod/<key>/ unless both are there; return it."""
    target = binaries_dir(tools)
    if not missing(target):
        print(f"istiod up to date in {target}", file=out)
        return target
    env = go_env()

    def fill(staging: Path) -> list[str]:
        print(f"building istiod ({PILOT_DISCOVERY}, {ISTIO} {istio_version()}) ...", file=out, flush=True)
        _go(["build", "-ldflags", "-s -w", "-o", str(staging / PILOT_DISCOVERY),
             f"{ISTIO}/pilot/cmd/{PILOT_DISCOVERY}"], "istiod", env, ISTIOD_MODULE)
        module = module_folder(ISTIO, istio_version(), ISTIOD_MODULE, env)
        shutil.copyfile(module / CRD_IN_MODULE, staging / CRD_FILE)
        shutil.copyfile(module / VERSION_FILE, staging / VERSION_FILE)
        return [CRD_FILE, VERSION_FILE, PILOT_DISCOVERY]  # the binary last

    return staged_build(target, "istiod", fill, out)


def main(argv: list[str] | None = None) -> int:
    return run_cli(build, __doc__.splitlines()[0], argv)


if __name__ == "__main__":
    sys.exit(main())
