"""README's `# needs: cluster` blocks run as written, in a fresh copy, against the test control plane as CI's
account of the example's team (its preview account: the blocks deploy grey)."""

from __future__ import annotations

from fresh_copy import fresh_copy, run
from live import Live
from readme_blocks import blocks, command_word
from test_local_image import stand_in_for_make_image

GREY = ("podserve-like-grey", "grey")  # value.py's team is like


def test_readme_deploy_commands_run_as_written(control_plane, rollouts_controller, tmp_path):
    cluster_blocks = [b for b in blocks() if b.needs == "cluster"]
    assert cluster_blocks, "README has no `# needs: cluster` block: its deploy commands would go untested"
    live = Live(control_plane, tmp_path)
    copy = fresh_copy(tmp_path / "repo")
    stand_in_for_make_image(copy)  # README's step before `make deploy`; the real `make image` takes minutes
    service = "text-direction"  # value.py's; no other test deploys it
    outputs = {}
    try:
        for block in cluster_blocks:
            for line in block.commands:
                done = run(line, copy, timeout=300, KUBECONFIG=str(live.ci_kubeconfig))
                outputs.setdefault(command_word(line), []).append(done.stdout + done.stderr)
        assert any(f"serving: revision 1 of {service} in grey" in o for o in outputs["make deploy STAGE=grey"])
        assert "revision 1" in outputs["make status STAGE=grey"][0]
        assert "rolled back" in outputs["make rollback STAGE=grey"][0]
        assert live.objects(*GREY, service) == []  # make delete left nothing
    finally:
        live.remove(*GREY, service)
