"""Build Argo Rollouts' controller and kubectl plugin from its Go module into the shared cache, its CRDs beside.

    python -m podserve.testbed.rollouts.build [--tools DIR]     (default: ~/.cache/podserve, machine_cache.py)

They go to <DIR>/argo-rollouts/argo-rollouts-<version>_<digest of cluster/argo-rollouts' go.mod, go.sum, tools.go and
cmd/>/: every checkout on the machine reuses them. cluster/argo-rollouts/go.mod pins the version (its own module:
Argo pins k8s.io/* v0.34, the control plane's module Kubernetes 1.35; it copies Argo's replace block, which a
dependency's go.mod cannot pass on). Argo's CRDs (its manifests/crds/, 5 files) are copied from that module as
downloaded, no copy kept in the repository: the test control plane installs them from there, as the platform's
install must apply the same files (server-side: rollout-crd.yaml is over client-side apply's 256 KiB annotation).
GOTOOLCHAIN=local (v1.10.1 says `go 1.26.1`), CGO_ENABLED=0. Measured cold (empty GOCACHE, modules downloaded,
niced on 2 cores): 541 CPU-s for the three, about 5 minutes on 2 idle cores. Beside them, argo-evaluate
(cluster/argo-rollouts/cmd/argo-evaluate): Argo's own evaluation of a metric's conditions on given counts, for the
AnalysisTemplates' unit tests.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

from podserve.testbed.cluster.build import _go, go_env, module_folder, run_cli, staged_build
from podserve.testbed.cluster.versions import GO_MODULE, required_version
from podserve.testbed.machine_cache import inputs_digest, shared_cache

#: Our Go module for Argo Rollouts: its go.mod pins github.com/argoproj/argo-rollouts (the one source of the version).
ROLLOUTS_MODULE = GO_MODULE / "argo-rollouts"
ARGO_ROLLOUTS = "github.com/argoproj/argo-rollouts"
CONTROLLER = "rollouts-controller"
PLUGIN = "kubectl-argo-rollouts"
EVALUATE = "argo-evaluate"
#: What is built: each binary and its package (ours under our module), named after its last element (go build -o DIR/).
PACKAGES = {CONTROLLER: f"{ARGO_ROLLOUTS}/cmd/{CONTROLLER}", PLUGIN: f"{ARGO_ROLLOUTS}/cmd/{PLUGIN}",
            EVALUATE: f"./cmd/{EVALUATE}"}
#: Argo's CRDs as its module ships them, and where they land beside the binaries.
CRDS_IN_MODULE = Path("manifests/crds")
CRD_FOLDER = "crds"
CRD_FILES = ("analysis-run-crd.yaml", "analysis-template-crd.yaml", "cluster-analysis-template-crd.yaml",
             "experiment-crd.yaml", "rollout-crd.yaml")


def rollouts_version() -> str:
    return required_version(ARGO_ROLLOUTS, ROLLOUTS_MODULE / "go.mod")


def cache_key() -> str:
    module = inputs_digest(ROLLOUTS_MODULE / "go.mod", ROLLOUTS_MODULE / "go.sum", ROLLOUTS_MODULE / "tools.go",
                           ROLLOUTS_MODULE / "cmd")
    return f"argo-rollouts-{rollouts_version()}_{module}"


def binaries_dir(tools: Path | None = None) -> Path:
    """Where the controller, the plugin and Argo's CRDs live: <tools>/argo-rollouts/<cache_key()>."""
    return (tools or shared_cache()) / "argo-rollouts" / cache_key()


def crd_paths(tools: Path | None = None) -> list[Path]:
    folder = binaries_dir(tools) / CRD_FOLDER
    return [folder / name for name in CRD_FILES]


def missing(target: Path) -> list[str]:
    wanted = [*PACKAGES, *(f"{CRD_FOLDER}/{name}" for name in CRD_FILES)]
    return [name for name in wanted if not (target / name).is_file()]


def build(tools: Path | None = None, out=sys.stdout) -> Path:
    """Build the controller and the plugin and copy Argo's CRDs into <tools>/argo-rollouts/<key>/ unless there."""
    target = binaries_dir(tools)
    if not missing(target):
        print(f"argo-rollouts up to date in {target}", file=out)
        return target
    env = go_env()
    version = rollouts_version()
    # upstream's LDFLAGS stamp the version the controller reports (its metrics' build info, `version`)
    stamp = f"-s -w -X {ARGO_ROLLOUTS}/utils/version.version={version.lstrip('v')} " \
            f"-X {ARGO_ROLLOUTS}/utils/version.gitTreeState=clean"

    def fill(staging: Path) -> list[str]:
        names = ", ".join(PACKAGES)
        print(f"building {names} ({ARGO_ROLLOUTS} {version}) ...", file=out, flush=True)
        # one go command: the three link side by side (-o DIR/ names each after its package's last element)
        _go(["build", "-ldflags", stamp, "-o", f"{staging}/", *PACKAGES.values()], names, env, ROLLOUTS_MODULE)
        module = module_folder(ARGO_ROLLOUTS, version, ROLLOUTS_MODULE, env)
        (staging / CRD_FOLDER).mkdir()
        for name in CRD_FILES:
            shutil.copyfile(module / CRDS_IN_MODULE / name, staging / CRD_FOLDER / name)
        return [*(f"{CRD_FOLDER}/{name}" for name in CRD_FILES), EVALUATE, PLUGIN, CONTROLLER]  # the controller last

    return staged_build(target, "argo-rollouts", fill, out)


def main(argv: list[str] | None = None) -> int:
    return run_cli(build, __doc__.splitlines()[0], argv)


if __name__ == "__main__":
    sys.exit(main())
