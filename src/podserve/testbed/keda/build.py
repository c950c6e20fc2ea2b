"""Build KEDA's operator and metrics API server from its Go module into the shared cache, its CRDs beside.

    python -m podserve.testbed.keda.build [--tools DIR]     (default: ~/.cache/podserve, machine_cache.py)

They go to <DIR>/keda/keda-<version>_<digest of cluster/keda's go.mod, go.sum and tools.go>/
(podserve.testbed.engine_build): every checkout on the machine reuses them. cluster/keda/go.mod pins github.com/kedacore/keda/v2 (its own module: KEDA pins its own k8s.io/*
line, the control plane's module Kubernetes 1.35; it copies KEDA's one replace line, which a dependency's go.mod
cannot pass on). KEDA's CRDs (its config/crd/bases/, 6 files) are copied from that module as downloaded, no copy kept
in the repository: the test control plane installs them from there. GOTOOLCHAIN=local (v2.21.0 says `go 1.26.0`),
CGO_ENABLED=0, the testbed's BUILD_FLAGS. Measured cold (empty GOCACHE, modules downloaded, niced on 2 cores beside a
full suite's load): 1,400 CPU-s, 23 minutes of wall; the operator is most of it, the adapter shares its packages.
"""

from __future__ import annotations

import sys
from pathlib import PurePosixPath

from podserve.testbed.cluster.build import run_cli
from podserve.testbed.engine_build import EngineBuild

KEDA = "github.com/kedacore/keda/v2"
OPERATOR = "keda-operator"
ADAPTER = "keda-adapter"
ENGINE = EngineBuild(
    name="keda", upstream=KEDA,
    packages={OPERATOR: f"{KEDA}/cmd/operator", ADAPTER: f"{KEDA}/cmd/adapter"},  # the operator's presence ends a build
    crds_in_module=PurePosixPath("config/crd/bases"),
    crd_files=("eventing.keda.sh_cloudeventsources.yaml", "eventing.keda.sh_clustercloudeventsources.yaml",
               "keda.sh_clustertriggerauthentications.yaml", "keda.sh_scaledjobs.yaml", "keda.sh_scaledobjects.yaml",
               "keda.sh_triggerauthentications.yaml"),
    # upstream's GO_LDFLAGS stamp the version the operator logs and exports (keda_build_info)
    ldflags=lambda version: f"-s -w -X={KEDA}/version.Version={version.lstrip('v')} -X={KEDA}/version.GitCommit={version}")



def main(argv: list[str] | None = None) -> int:
    return run_cli(ENGINE.build, __doc__.splitlines()[0], argv)


if __name__ == "__main__":
    sys.exit(main())
