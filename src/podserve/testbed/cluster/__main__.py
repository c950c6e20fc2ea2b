"""`make cluster`: build what is missing, start the control plane on fixed ports, stay until Ctrl-C.

    python -m podserve.testbed.cluster [--region hk] [--kubeconfig build/cluster/kubeconfig]

The data (etcd, keys, logs) lives in a temporary folder removed on exit; the admin kubeconfig
is copied to --kubeconfig for kubectl, helm and `make deploy`.
"""

from __future__ import annotations

import argparse
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path

from podserve.testbed.cluster import build, versions
from podserve.testbed.cluster.controlplane import start
from podserve.testbed.cluster.platform import fake_nodes
from podserve.testbed.processes import StartError
from podserve.tooling.conf import load_conf

DEFAULT_KUBECONFIG = versions.REPO / "build" / "cluster" / "kubeconfig"


def _stop(signum, frame):  # noqa: ARG001 - signal handler signature
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--region", default="hk", help="whose platform chart values to install (hk, eu, na)")
    parser.add_argument("--kubeconfig", type=Path, default=DEFAULT_KUBECONFIG, help="where to write the kubeconfig")
    args = parser.parse_args(argv)
    if args.region not in load_conf().regions:
        print(f"Error: --region {args.region!r} is not in conf/regions.yaml; use one of "
              f"{', '.join(load_conf().regions)}", file=sys.stderr)
        return 2
    try:
        build.build(versions.REPO / ".tools")
    except build.BuildError as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return 2
    for signum in (signal.SIGINT, signal.SIGTERM):  # Ctrl-C, or a supervisor stopping us: stop everything
        signal.signal(signum, _stop)
    workdir = Path(tempfile.mkdtemp(prefix="podserve-cluster-"))
    plane = None
    try:
        plane = start(workdir / "plane", region=args.region, fixed_ports=True)
        args.kubeconfig.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(plane.kubeconfig, args.kubeconfig)
        args.kubeconfig.chmod(0o600)  # admin credentials
        print(f"control plane up in {plane.timings['total']:.1f}s: {plane.server}, region {plane.region} chart, "
              f"{len(fake_nodes(load_conf()))} fake nodes (kwok)")
        print(f"  kubectl --kubeconfig {args.kubeconfig} get nodes")
        print(f"  logs: {workdir / 'plane' / 'logs'}; Ctrl-C stops everything", flush=True)
        while True:
            time.sleep(1)
            plane.check_alive()
    except StartError as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("stopping ...", flush=True)
    finally:
        if plane is not None:
            plane.stop()
        args.kubeconfig.unlink(missing_ok=True)
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
