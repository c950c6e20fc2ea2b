"""Retiring a production service (`deploy retire --confirm NAME`, no prompt) and a renamed service's old objects
reported by the next deploy; live, on the control plane, with team like's production account."""

from __future__ import annotations

import pytest

from live import Live
from receiver import Receiver

PROJECT = "models/like/ocr-direction"  # one GitLab project; its service renamed from dt-retire-old to dt-retire-new


@pytest.fixture
def live(control_plane, rollouts_controller, tmp_path) -> Live:
    return Live(control_plane, tmp_path)


def test_a_renamed_service_s_old_objects_are_reported_and_retire_leaves_nothing_with_its_labels(live):
    old, new, namespace = "dt-retire-old", "dt-retire-new", live.namespace("hk")
    try:
        for name in (old, new):
            run = live.deploy("apply", "--stage", "hk", "--values", live.values(name), CI_PROJECT_PATH=PROJECT)
            assert run.returncode == 0, run.output
        assert f"NOTICED: service {old} of the same project ({PROJECT}) still runs in {namespace}" in run.stdout
        assert f"retire --stage hk --service {old} --team like --confirm {old}" in run.stdout

        refused = live.deploy("delete", "--stage", "hk", "--service", old, "--team", "like")
        assert refused.returncode == 2 and f"retire --stage hk --confirm {old}" in refused.stderr
        wrong = live.deploy("retire", "--stage", "hk", "--service", old, "--team", "like", "--confirm", new)
        assert wrong.returncode == 2 and f"pass --confirm {old}" in wrong.stderr
        assert live.objects(namespace, "hk", old) != []

        retired = live.deploy("retire", "--stage", "hk", "--service", old, "--team", "like", "--confirm", old)
        print(f"retire: exit {retired.returncode} after {retired.seconds:.1f} s")
        assert retired.returncode == 0, retired.output
        assert "nothing with its labels is left" in retired.stdout
        deleted = [line.split()[1] for line in retired.stdout.splitlines() if line.startswith("deleted ")]
        assert deleted[0] == f"VirtualService/{old}" and f"Rollout/{old}" in deleted  # callers stop before the pods
        assert live.objects(namespace, "hk", old) == []  # no Rollout, pod, ReplicaSet, history or Lease
        assert f"Rollout/{new}" in live.objects(namespace, "hk", new)  # the renamed service is untouched
    finally:
        live.remove(namespace, "hk", old)
        live.remove(namespace, "hk", new)


def test_retire_of_a_service_with_nothing_deployed_exits_1_without_a_notification(live):
    """It must show 5: a mistyped --service (nothing with its labels in the namespace) is a failure, not a retirement:
    exit 1, the message names the labels and the namespace, and nobody is notified."""
    receiver = Receiver()
    try:
        run = live.deploy("retire", "--stage", "hk", "--service", "dt-never-deployed", "--team", "like", "--confirm",
                          "dt-never-deployed", PODSERVE_NOTIFY_URL=receiver.url)
        print(f"retire of nothing: exit {run.returncode} after {run.seconds:.1f} s")
        assert run.returncode == 1, run.output
        assert "FAILED: nothing of dt-never-deployed runs in hk: no object in namespace podserve-like" in run.stdout
        assert receiver.bodies == []
    finally:
        receiver.stop()
