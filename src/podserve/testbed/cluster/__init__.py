"""A real Kubernetes control plane on loopback with fake (kwok) GPU nodes, for the tests and `make cluster`.

    from podserve.testbed.cluster import start
    plane = start(workdir, region="hk")      # ControlPlane: .kubeconfig, .server, .region, .api_client()
    ...
    plane.stop()

Binaries: `python -m podserve.testbed.cluster.build` (make cluster-binaries). A person:
`python -m podserve.testbed.cluster serve` (make cluster), fixed ports, until Ctrl-C.
"""

__all__ = ["ControlPlane", "StartError", "start"]


def __getattr__(name: str):
    """Import lazily, so that `python -m podserve.testbed.cluster.build` needs nothing beyond the stdlib."""
    if name in ("ControlPlane", "start"):
        from podserve.testbed.cluster import controlplane

        return getattr(controlplane, name)
    if name == "StartError":
        from podserve.testbed.processes import StartError

        return StartError
    raise AttributeError(name)
