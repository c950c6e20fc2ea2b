"""The gateway's routes and clusters from a real cluster's live Istio objects, as istiod pushes them.

    routes = RouteFeed(api_client, "istio-ingress/podserve", work, slices).start()   # then Envoy(dynamic bootstrap)

Every `every` seconds it lists the live Gateways, VirtualServices and DestinationRules (what the deploy tool
applied: a canary's weights, a rollback's routes), translates them with istio.py, and when the result changed it
hands the new clusters to the SliceFeed (whose endpoint files are written first), then writes Envoy's file-based xDS
(envoy.write_xds: clusters, then routes). Every cluster once written is kept (and fed), as istiod keeps a cluster for
every Service port and DestinationRule subset whether a route names it or not: Envoy applies the clusters' file and
the routes' file one after the other, so a cluster dropped with the route that named it (the selector's migration
moves hk's route from the Service's cluster to its `stable` subset's, a rollback back) would answer that route's
requests 503 (no cluster) in between. Gateways that the cluster lacks (the platform chart's are rendered with
helm, not applied here) come from `extra` objects. Polled rather than watched, like the SliceFeed.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from podserve.testbed.mesh import envoy, ir, istio
from podserve.testbed.polling import Poller

#: The Istio kinds istiod reads for a gateway: (plural, kind).
KINDS = (("gateways", "Gateway"), ("virtualservices", "VirtualService"), ("destinationrules", "DestinationRule"))
GROUP, VERSION = istio.API_VERSION.split("/")


def _as_written(item: dict, kind: str) -> dict:
    """A live object as render wrote it: apiVersion, kind, name, namespace, labels, annotations and spec."""
    meta = item.get("metadata") or {}
    return {"apiVersion": istio.API_VERSION, "kind": kind,
            "metadata": {k: meta[k] for k in ("name", "namespace", "labels", "annotations") if meta.get(k)},
            "spec": item.get("spec") or {}}


class RouteFeed(Poller):
    """Keeps the xDS files of one gateway equal to the translation of the cluster's live Istio objects."""

    def __init__(self, api_client, gateway: str, folder: Path, slices=None, extra: list[dict] = (),
                 every: float = 0.5, selector: str | None = None):
        """`selector`: a label selector the VirtualServices and DestinationRules fed must match (a test's own
        service's, so that what other tests left in the cluster never reaches its gateway); Gateways are all fed."""
        from kubernetes import client

        super().__init__(every, "route-feed")
        self.objects_api = client.CustomObjectsApi(api_client)
        self.gateway, self.folder, self.slices, self.extra = gateway, Path(folder), slices, list(extra)
        self.selector = selector
        self.config: ir.GatewayConfig | None = None  # what was written: the live translation and the kept clusters
        self.translated: ir.GatewayConfig | None = None
        self.version = 0

    def objects(self) -> list[dict]:
        """Every live Gateway, VirtualService and DestinationRule (of `selector`), with the `extra` objects."""
        found = list(self.extra)
        for plural, kind in KINDS:
            chosen = {"label_selector": self.selector} if self.selector and kind != "Gateway" else {}
            listed = self.objects_api.list_cluster_custom_object(GROUP, VERSION, plural, **chosen)
            found += [_as_written(item, kind) for item in listed.get("items") or []]
        return found

    def sync(self) -> bool:
        """Translate what is live; write it, with every cluster written before, when it changed (endpoints of new
        clusters first); return whether."""
        translated = istio.translate(self.objects(), self.gateway)
        if translated == self.translated:
            return False
        config = keeping_clusters(translated, self.config)
        if self.slices is not None:
            envoy.write_empty_endpoints(config, self.slices.eds_folder)
            self.slices.set_config(config)
            self.slices.sync()
        self.version += 1
        envoy.write_xds(config, self.folder, self.slices.eds_folder if self.slices else self.folder, self.version)
        self.config, self.translated = config, translated
        return True

    def prepare(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)


def keeping_clusters(config: ir.GatewayConfig, before: ir.GatewayConfig | None) -> ir.GatewayConfig:
    """`config` with the clusters of `before` that it no longer has, as they were."""
    if before is None:
        return config
    names = {c.name for c in config.clusters}
    return replace(config, clusters=config.clusters + tuple(c for c in before.clusters if c.name not in names))
