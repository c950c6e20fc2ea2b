"""An apply over a DestinationRule Argo manages keeps the pod template hashes Argo wrote on its subsets
(argo.keep_subset_hashes): render writes the subsets without labels, and applied as rendered they would select every
pod of the Service until Argo wrote them again. Offline: render's hk DestinationRule and live copies of it as Argo
and the move from the Deployment leave it. Live, through Envoy: tests/pipeline/test_real_node_rollout.py (every
version of the DestinationRule during four releases keeps a hash on each subset)."""

from __future__ import annotations

import copy

import pytest

from podserve.tooling import render
from podserve.tooling.analysis_template import HASH_POD_LABEL
from podserve.tooling.conf import load_conf
from podserve.tooling.deploy import argo, commands

REPO = __import__("pathlib").Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def rendered_rule() -> dict:
    objects = render.render(REPO / "value.py", conf=load_conf(), image_tag="new").stages["hk"]
    (rule,) = [o for o in objects if o["kind"] == "DestinationRule"]
    return rule


def argo_wrote(rule: dict, stable: str, canary: str) -> dict:
    """`rule` as the API server returns it once Argo wrote its hashes."""
    live = copy.deepcopy(rule)
    live["metadata"].setdefault("annotations", {})[argo.MANAGED_BY] = rule["metadata"]["name"]
    for subset in live["spec"]["subsets"]:
        subset["labels"] = {HASH_POD_LABEL: {"stable": stable, "canary": canary}[subset["name"]]}
    return live


def test_render_writes_subsets_without_labels(rendered_rule):
    assert [s.get("labels") for s in rendered_rule["spec"]["subsets"]] == [None, None]


def test_the_hashes_argo_wrote_are_kept_and_the_rest_of_the_rendered_rule_applied(rendered_rule):
    changed = copy.deepcopy(rendered_rule)
    changed["spec"]["subsets"][0]["trafficPolicy"]["connectionPool"]["http"]["http2MaxRequests"] = 7
    kept = argo.keep_subset_hashes(changed, argo_wrote(rendered_rule, "aaa", "bbb"))
    assert [s["labels"] for s in kept["spec"]["subsets"]] == [{HASH_POD_LABEL: "aaa"}, {HASH_POD_LABEL: "bbb"}]
    assert kept["spec"]["subsets"][0]["trafficPolicy"]["connectionPool"]["http"]["http2MaxRequests"] == 7
    assert changed["spec"]["subsets"][0].get("labels") is None  # the rendered object itself is left as it was


def test_a_rule_argo_does_not_manage_is_applied_as_rendered(rendered_rule):
    """The move from the Deployment: the live rule selects `track`, Argo has not taken it; both subsets must select
    every pod meanwhile (deploy/migration.py), and none of Argo's hashes exists yet."""
    live = copy.deepcopy(rendered_rule)
    for subset in live["spec"]["subsets"]:
        subset["labels"] = {"track": subset["name"]}
    assert argo.keep_subset_hashes(rendered_rule, live) is rendered_rule
    assert argo.keep_subset_hashes(rendered_rule, None) is rendered_rule


def test_a_subset_argo_has_not_labelled_and_other_kinds_are_left_alone(rendered_rule):
    live = argo_wrote(rendered_rule, "aaa", "bbb")
    del live["spec"]["subsets"][1]["labels"]
    kept = argo.keep_subset_hashes(rendered_rule, live)
    assert [s.get("labels") for s in kept["spec"]["subsets"]] == [{HASH_POD_LABEL: "aaa"}, None]
    service = {"kind": "Service", "metadata": {"name": "x"}, "spec": {}}
    assert argo.keep_subset_hashes(service, live) is service


class OneObject:
    """A cluster holding one object, as Kube.get reads it."""

    def __init__(self, live: dict):
        self.live = live

    def get(self, kind, namespace, name):
        return self.live if name == self.live["metadata"]["name"] else None


def test_the_dry_run_and_validation_send_what_apply_sends(rendered_rule):
    sent = commands.as_applied_over_live(OneObject(argo_wrote(rendered_rule, "aaa", "bbb")), rendered_rule)
    assert [s["labels"][HASH_POD_LABEL] for s in sent["spec"]["subsets"]] == ["aaa", "bbb"]
