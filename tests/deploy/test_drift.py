"""drift.differences: what really runs against the history, from API-shaped objects (no cluster)."""

from __future__ import annotations

import copy

from podserve.tooling.deploy import drift
from podserve.tooling.deploy.history import History, Revision


def deployment(image: str, replicas: int = 2) -> dict:
    return drift.stamped({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "s", "namespace": "n"},
                          "spec": {"replicas": replicas, "template": {"metadata": {"labels": {"a": "b"}},
                                                                      "spec": {"containers": [{"image": image}]}}}})


def history(*images: str, pending: str | None = None) -> History:
    revisions = [Revision(n, [deployment(image)], image, "ci (pid 1)", "2026-11-23T12:00:00Z")
                 for n, image in enumerate(images, 1)]
    found = History("s", "hk", "n", revisions[-1], revisions[-2] if len(revisions) > 1 else None)
    if pending:
        found.pending = Revision(len(images) + 1, [deployment(pending)], pending, "ci (pid 7)", "2026-11-23T13:00:00Z")
    return found


def live(image: str, replicas: int = 2) -> dict:
    """As the server returns it: defaults added beside what was applied."""
    obj = deployment(image, replicas)
    obj["spec"]["template"]["spec"]["containers"][0]["terminationMessagePath"] = "/dev/termination-log"
    obj["metadata"]["resourceVersion"] = "7"
    return obj


def test_a_deployment_running_what_was_recorded_has_no_differences():
    assert drift.differences(history("r/s:v1", "r/s:v2"), live("r/s:v2")) == []
    assert drift.template_hash(deployment("r/s:v1")) != drift.template_hash(deployment("r/s:v2"))


def test_a_rollout_undo_by_hand_names_the_revision_really_running():
    found = history("r/s:v1", "r/s:v2")
    undone = copy.deepcopy(live("r/s:v1"))
    (line,) = drift.differences(found, undone)
    assert line.startswith("the live Deployment runs revision 1's pod template (image r/s:v1), not recorded revision 2")
    assert "`kubectl rollout undo`" in line
    assert drift.running_revision(found, undone).number == 1 and drift.template_drifted(found, undone)


def test_a_killed_deploy_is_reported_with_what_it_left_running():
    found = history("r/s:v1", pending="r/s:v2")
    lines = drift.differences(found, live("r/s:v2"))
    assert lines[0].startswith("revision 2 (r/s:v2) was started by ci (pid 7) at 2026-11-23T13:00:00Z and never "
                               "finished: that deploy was killed")
    assert "the pod template of unfinished revision 2" in lines[1] and "or by the killed deploy" in lines[1]
    assert drift.running_revision(found, live("r/s:v2")).number == 2


def test_an_incident_scale_and_a_deleted_deployment_are_reported():
    (scaled,) = drift.differences(history("r/s:v1"), live("r/s:v1", replicas=5))
    assert scaled == "the live Deployment has 5 replicas, recorded revision 1 2: scaled by hand (an incident scale?)"
    (gone,) = drift.differences(history("r/s:v1"), None)
    assert "is gone" in gone
