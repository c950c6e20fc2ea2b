"""The route feed (testbed/mesh/routefeed.py) keeps every cluster it wrote, as istiod does.

Envoy applies the clusters' file and then the routes' file (file-based xDS, one watch each): a cluster left out of
the clusters' file while the routes still name it answers those routes' requests 503 (no cluster) in between. The
selector's migration moves a production route from its Service's cluster to the `stable` subset's, and a rollback
moves it back; the real node's canary test (tests/pipeline/test_real_node_canary.py) sends requests through both.
"""

from __future__ import annotations

import json

from mesh_setup import REPO, before_subsets
from podserve.testbed.mesh import envoy
from podserve.testbed.mesh.mesh import gateway_objects
from podserve.testbed.mesh.routefeed import RouteFeed
from podserve.tooling import render
from podserve.tooling.conf import load_conf


class Fed(RouteFeed):
    """The feed, given its objects by the test instead of by a cluster."""

    live: list[dict] = []

    def objects(self) -> list[dict]:
        return list(self.extra) + self.live


def _routed(folder) -> set[str]:
    """The clusters the written routes name."""
    found = set()
    for host in json.loads(envoy.xds_path(folder, "rds").read_text())["resources"][0]["virtual_hosts"]:
        for route in host["routes"]:
            action = route["route"]
            found |= {action["cluster"]} if "cluster" in action else {
                c["name"] for c in action["weighted_clusters"]["clusters"]}
    return found


def _clusters(folder) -> set[str]:
    return {c["name"] for c in json.loads(envoy.xds_path(folder, "cds").read_text())["resources"]}


def test_a_route_moved_to_another_cluster_and_back_never_names_a_cluster_the_written_clusters_left_out(tmp_path):
    conf = load_conf()
    rendered = render.render(REPO / "value.py", stages=["hk"], conf=conf, image_tag="v1").stages["hk"]
    before = [before_subsets(json.loads(json.dumps(doc))) for doc in rendered]
    feed = Fed(None, conf.stages["hk"].gateway, tmp_path, extra=gateway_objects(conf, "hk"))
    feed.prepare()
    moves = []
    for objects in (before, rendered, before):
        feed.live = objects
        routed_before = _routed(tmp_path) if moves else set()
        assert feed.sync()
        moves.append((routed_before, _routed(tmp_path), _clusters(tmp_path)))
    (_, first, _), (left, migrated, kept), (came_back_from, back, kept_back) = moves
    assert first != migrated and first == back  # the route moved and came back
    assert left <= kept and migrated <= kept  # what the routes named before and after the change: both written
    assert came_back_from <= kept_back and back <= kept_back
