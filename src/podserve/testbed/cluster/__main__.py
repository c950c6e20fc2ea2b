"""`make cluster`: build what is missing, start the control plane (and Argo Rollouts' controller) on fixed ports, stay
until Ctrl-C.

    python -m podserve.testbed.cluster [--region hk] [--kubeconfig build/cluster/kubeconfig] [--no-real-node]
                                       [--registry-port 5002] [--real-node-pool own|gpu|cpu]

The data (etcd, keys, logs) lives in a temporary folder removed on exit; the admin kubeconfig
is copied to --kubeconfig for kubectl, helm and `make deploy`. When the real node's pieces are
built (`make node-tools cluster-binaries`), the cluster gains the real node (node.py) and a
registry on 127.0.0.1:--registry-port serving `make image`'s storage (build/image/registry-storage),
from which the node pulls every conf/regions.yaml registry name (registry.hk.example.com/<team>/<service>
from the folder hk/ that `make image` pushed it to). With --real-node-pool gpu (or cpu) the real node joins
that pool of the region and kwok's nodes of it are cordoned: `make deploy` of a service small enough for
the node's 2 cores then runs there (docs/pipeline.md: the real node).
"""

from __future__ import annotations

import argparse
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path

from podserve.testbed.cluster import build, node, versions
from podserve.testbed.cluster.controlplane import start
from podserve.testbed.cluster.platform import FAKE_NODE_LABEL, REGION_LABEL, fake_nodes, taints_for
from podserve.testbed.image.registry import RegistryError
from podserve.testbed.processes import StartError
from podserve.testbed.rollouts.controller import RolloutsController
from podserve.tooling.conf import load_conf
from podserve.tooling.deploy.target import label_selector
from podserve.tooling.image_tag import LOCAL_REGISTRY_STORAGE

DEFAULT_KUBECONFIG = versions.REPO / "build" / "cluster" / "kubeconfig"


def _stop(signum, frame):  # noqa: ARG001 - signal handler signature
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--region", default="hk", help="whose platform chart values to install (hk, eu, na)")
    parser.add_argument("--kubeconfig", type=Path, default=DEFAULT_KUBECONFIG, help="where to write the kubeconfig")
    parser.add_argument("--no-real-node", dest="real_node", action="store_false",
                        help="leave the real node out (kwok's fake nodes only)")
    parser.add_argument("--registry-port", type=int, default=5002, help="the node's registry (make image's storage)")
    parser.add_argument("--real-node-pool", choices=("own", "gpu", "cpu"), default="own",
                        help="own: the real node's own pool, which no conf pool selects; gpu or cpu: it joins that "
                             "pool of the region (its labels and taints) and kwok's nodes of that pool are cordoned, "
                             "so that a deploy whose pods fit its 2 cores lands on it")
    args = parser.parse_args(argv)
    if args.region not in load_conf().regions:
        print(f"Error: --region {args.region!r} is not in conf/regions.yaml; use one of "
              f"{', '.join(load_conf().regions)}", file=sys.stderr)
        return 2
    try:
        build.build()
    except build.BuildError as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return 2
    for signum in (signal.SIGINT, signal.SIGTERM):  # Ctrl-C, or a supervisor stopping us: stop everything
        signal.signal(signum, _stop)
    workdir = Path(tempfile.mkdtemp(prefix="podserve-cluster-"))
    plane = real = registry = rollouts = None
    try:
        plane = start(workdir / "plane", region=args.region, fixed_ports=True)
        # production stages are Argo Rollouts: `make deploy STAGE=hk` waits on the controller's status
        rollouts = RolloutsController.start(plane, workdir / "argo-rollouts")
        if args.real_node and not node.missing_pieces():
            real, registry = _start_node(plane, workdir, args.registry_port, args.real_node_pool)
        elif args.real_node:
            print(f"no real node: it lacks {', '.join(node.missing_pieces())} (make node-tools cluster-binaries)")
        args.kubeconfig.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(plane.kubeconfig, args.kubeconfig)
        args.kubeconfig.chmod(0o600)  # admin credentials
        print(f"control plane up in {plane.timings['total']:.1f}s: {plane.server}, region {plane.region} chart, "
              f"{len(fake_nodes(load_conf()))} fake nodes (kwok)")
        if real is not None:
            print(f"real node {real.name} Ready in {real.timings['total']:.1f}s (containerd, runc, kubelet; "
                  f"GPUs: fake-gpu-plugin); images from {registry.host}")
        print(f"Argo Rollouts' controller running as the chart's account (log: {workdir / 'argo-rollouts'})")
        print(f"  kubectl --kubeconfig {args.kubeconfig} get nodes -o wide")
        print(f"  logs: {workdir / 'plane' / 'logs'}; Ctrl-C stops everything", flush=True)
        while True:
            time.sleep(1)
            plane.check_alive()
            if real is not None:
                real.check_alive()
    except (StartError, RegistryError) as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("stopping ...", flush=True)
    finally:
        for part in (rollouts, real, registry, plane):
            if part is not None:
                part.stop()
        args.kubeconfig.unlink(missing_ok=True)
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


def _start_node(plane, workdir: Path, port: int, pool_name: str):
    """The registry on make image's storage, then the real node pulling from it; both stopped if either fails."""
    from podserve.testbed.image.registry import Registry  # noqa: PLC0415 - only with a real node

    conf = load_conf()
    pool = {} if pool_name == "own" else \
        {"pool": (chosen := getattr(conf.regions[plane.region].node_pools, pool_name)).node_selector,
         "taints": taints_for(chosen.tolerations)}
    registry = Registry.start(workdir / "registry", port, versions.REPO / LOCAL_REGISTRY_STORAGE)
    try:
        real = node.RealNode.start(plane, workdir / "node", mirrors=node.mirrors_for(registry, conf),
                                   region=plane.region, **pool)
    except BaseException:
        registry.stop()
        raise
    if pool:
        cordoned = _cordon_fake_pool(plane, pool["pool"])
        print(f"real node {real.name} joins {plane.region}'s {pool_name} pool {pool['pool']}; kwok's nodes of that "
              f"pool cordoned: {', '.join(cordoned)}")
    return real, registry


def _cordon_fake_pool(plane, node_selector: dict[str, str]) -> list[str]:
    """Cordon kwok's nodes of the region's pool chosen by `node_selector` (they would outscore the real node)."""
    from kubernetes import client  # noqa: PLC0415 - only with a real node

    core = client.CoreV1Api(plane.api_client())
    selector = label_selector({**node_selector, REGION_LABEL: plane.region, **FAKE_NODE_LABEL})
    names = sorted(n.metadata.name for n in core.list_node(label_selector=selector).items)
    for name in names:
        core.patch_node(name, {"spec": {"unschedulable": True}})
    return names


if __name__ == "__main__":
    sys.exit(main())
