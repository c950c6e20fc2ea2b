"""Build Argo Rollouts' controller and kubectl plugin from its Go module into the shared cache, its CRDs beside.

    python -m podserve.testbed.rollouts.build [--tools DIR]     (default: ~/.cache/podserve, machine_cache.py)

They go to <DIR>/argo-rollouts/argo-rollouts-<version>_<digest of cluster/argo-rollouts' go.mod, go.sum, tools.go and
cmd/>/ (podserve.testbed.engine_build): every checkout on the machine reuses them. cluster/argo-rollouts/go.mod pins
the version (its own module:
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

import sys
from pathlib import PurePosixPath

from podserve.testbed.cluster.build import run_cli
from podserve.testbed.engine_build import EngineBuild

ARGO_ROLLOUTS = "github.com/argoproj/argo-rollouts"
CONTROLLER = "rollouts-controller"
PLUGIN = "kubectl-argo-rollouts"
EVALUATE = "argo-evaluate"
ENGINE = EngineBuild(
    name="argo-rollouts", upstream=ARGO_ROLLOUTS,
    # each binary and its package (ours under our module); the controller's presence ends a build
    packages={CONTROLLER: f"{ARGO_ROLLOUTS}/cmd/{CONTROLLER}", PLUGIN: f"{ARGO_ROLLOUTS}/cmd/{PLUGIN}",
              EVALUATE: f"./cmd/{EVALUATE}"},
    crds_in_module=PurePosixPath("manifests/crds"),
    crd_files=("analysis-run-crd.yaml", "analysis-template-crd.yaml", "cluster-analysis-template-crd.yaml",
               "experiment-crd.yaml", "rollout-crd.yaml"),
    # upstream's LDFLAGS stamp the version the controller reports (its metrics' build info, `version`)
    ldflags=lambda version: f"-s -w -X {ARGO_ROLLOUTS}/utils/version.version={version.lstrip('v')} "
                            f"-X {ARGO_ROLLOUTS}/utils/version.gitTreeState=clean",
    inputs=("go.mod", "go.sum", "tools.go", "cmd"))



def main(argv: list[str] | None = None) -> int:
    return run_cli(ENGINE.build, __doc__.splitlines()[0], argv)


if __name__ == "__main__":
    sys.exit(main())
