"""Production never goes back to an older pipeline's commit: a retried old deploy job is refused before any change.

No cluster: `commands.apply` and `rollback` against the in-memory API (tests/deploy/fake_kube.py), and the CLI
in-process for its exit status. Each deploy runs as the GitLab job of the pipeline `ci()` names.
"""

from __future__ import annotations

import copy
import json
from dataclasses import replace

import pytest

from fake_kube import REPO, Deploy
from podserve.tooling.deploy import cli, failures, pipeline
from podserve.tooling.deploy.errors import BadInput, OutdatedPipeline
from podserve.tooling.deploy.history import Revision, history_name
from podserve.tooling.deploy.kube import CONFIGMAPS, Kube


def sha(pipeline_id: int) -> str:
    """A made-up 40-character commit for pipeline `pipeline_id`."""
    return f"{pipeline_id:08d}".ljust(40, "a")


def ci(monkeypatch, pipeline_id: int | str | None) -> None:
    """Run what follows as a job of pipeline `pipeline_id` (None: by hand, outside GitLab CI)."""
    if pipeline_id is None:
        monkeypatch.delenv(pipeline.PIPELINE_ID_VARIABLE, raising=False)
        monkeypatch.delenv(pipeline.COMMIT_VARIABLE, raising=False)
        return
    monkeypatch.setenv(pipeline.PIPELINE_ID_VARIABLE, str(pipeline_id))
    monkeypatch.setenv(pipeline.COMMIT_VARIABLE, sha(pipeline_id) if isinstance(pipeline_id, int) else "")


def deployed(monkeypatch, pipeline_id: int | None, tag: str, deploy: Deploy | None = None) -> Deploy:
    """Deploy image tag `tag` to hk from pipeline `pipeline_id`; it serves."""
    deploy = deploy or Deploy(monkeypatch)
    ci(monkeypatch, pipeline_id)
    assert deploy.apply(tag, "serving") == 0, deploy.output
    return deploy


def unchecked_lines(deploy: Deploy) -> list[str]:
    return [line for line in deploy.said if line.startswith("pipeline order not checked")]


def run_cli(monkeypatch, deploy: Deploy, tag: str) -> int:
    """Run `apply --stage hk` as CI does, in-process, against the deploy's in-memory API; return its exit status."""
    monkeypatch.setattr(Kube, "from_environment", lambda: deploy.kube)
    monkeypatch.setattr(cli.signal, "signal", lambda *_args: None)  # leave pytest's SIGTERM handler alone
    return cli.main(["apply", "--stage", deploy.stage, "--values", str(REPO / "value.py"), "--image-tag", tag])


def test_an_old_pipeline_s_retried_job_is_refused_with_exit_3_and_nothing_changes(monkeypatch, capsys):
    deploy = deployed(monkeypatch, 200, "v2", deployed(monkeypatch, 100, "v1"))
    store, writes = copy.deepcopy(deploy.kube.store), list(deploy.kube.writes)
    ci(monkeypatch, 100)  # pipeline 100's deploy-hk, retried after 200 deployed
    deploy.sent.clear()

    assert run_cli(monkeypatch, deploy, "v1") == failures.EXIT_REFUSED == 3
    error = capsys.readouterr().err
    assert error.startswith("Error: Refused: this job's pipeline is older than the one that deployed what runs: "
                            "hk runs revision 2 from pipeline 200 (commit 00000200), image ")
    assert ":v2; this job is from pipeline 100 (commit 00000100), older; nothing was changed" in error
    assert ("The rollback: `python -m podserve.tooling.deploy rollback --stage hk --service "
            "text-direction --team ") in error
    assert "(puts back revision 1: pipeline 100 (commit 00000100), image " in error
    assert error.rstrip().endswith("Fix: to go back on purpose, run the `rollback` command above; otherwise revert "
                                   "the commit and deploy the revert from a new pipeline")
    assert deploy.kube.store == store and deploy.kube.writes == writes  # no Lease taken either
    assert deploy.image().endswith(":v2")
    assert [b["outcome"] for b in deploy.sent] == ["refused"]  # whoever watches production hears of it


def test_a_newer_deploy_that_ends_while_this_one_waits_for_the_lock_is_checked_again(monkeypatch):
    deploy = deployed(monkeypatch, 200, "v1")
    take_lock, raced = deploy.kube.request, []

    def newer_deploy_ends_first(method, path, query=None, body=None, **options):
        if method == "POST" and not raced:  # pipeline 300 held the lock, recorded its revision, and let go
            raced.append(True)
            history = deploy.history()
            history.record(deploy.kube, replace(history.current, number=2, pipeline=300, commit=sha(300)))
        return take_lock(method, path, query, body, **options)
    deploy.kube.request = newer_deploy_ends_first
    writes = len(deploy.kube.writes) + 1  # the racing deploy's history

    ci(monkeypatch, 250)
    with pytest.raises(OutdatedPipeline, match="hk runs revision 2 from pipeline 300"):
        deploy.apply("v2", "serving")
    assert [kind for _verb, kind, _name in deploy.kube.writes[writes:]] == ["leases"]  # only the lock's release
    assert deploy.image().endswith(":v1")


def test_the_same_pipeline_deploys_again_a_retried_job(monkeypatch):
    deploy = deployed(monkeypatch, 200, "v2", deployed(monkeypatch, 200, "v1"))
    assert deploy.image().endswith(":v2") and not unchecked_lines(deploy)
    assert (deploy.history().current.pipeline, deploy.history().previous.pipeline) == (200, 200)


def test_a_newer_pipeline_deploys_and_its_pipeline_and_commit_are_recorded(monkeypatch):
    deploy = deployed(monkeypatch, 250, "v2", deployed(monkeypatch, 200, "v1"))
    current, previous = deploy.history().current, deploy.history().previous
    assert (current.pipeline, current.commit, previous.pipeline, previous.commit) == (250, sha(250), 200, sha(200))
    assert not unchecked_lines(deploy)


def test_a_deploy_by_hand_goes_on_and_says_the_order_was_not_checked(monkeypatch):
    deploy = deployed(monkeypatch, None, "v2", deployed(monkeypatch, 200, "v1"))
    assert unchecked_lines(deploy) == [
        "pipeline order not checked: this deploy has no $CI_PIPELINE_ID (run outside GitLab CI), so whether no "
        "pipeline is older than what runs in hk (pipeline 200 (commit 00000200)) is not known"]
    assert deploy.history().current.pipeline is None


def test_a_history_written_before_pipelines_were_recorded_still_loads_and_deploys(monkeypatch):
    deploy = deployed(monkeypatch, None, "v1")
    key = (CONFIGMAPS.plural, deploy.namespace, history_name(deploy.service))
    old = json.loads(deploy.kube.store[key]["data"]["current"])
    del old["pipeline"], old["commit"]  # as the tool wrote it before this change
    deploy.kube.store[key]["data"]["current"] = json.dumps(old)

    deployed(monkeypatch, 100, "v2", deploy)
    assert len(unchecked_lines(deploy)) == 1
    assert "revision 1 was recorded without its pipeline" in unchecked_lines(deploy)[0]
    assert deploy.history().previous.number == 1 and deploy.history().current.pipeline == 100


def test_a_revision_reads_without_the_new_fields_and_past_fields_it_does_not_know():
    revision = Revision.from_json(json.dumps({"number": 3, "objects": [], "image": "i", "from_a_newer_tool": 1}))
    assert (revision.number, revision.pipeline, revision.commit) == (3, None, "")


def test_rollback_goes_back_on_purpose_and_keeps_each_revision_s_pipeline(monkeypatch):
    deploy = deployed(monkeypatch, 200, "v2", deployed(monkeypatch, 100, "v1"))
    ci(monkeypatch, 150)  # a rollback from any job, even an older pipeline's, is not blocked
    assert deploy.rollback("serving") == 0, deploy.output
    assert deploy.image().endswith(":v1")
    history = deploy.history()
    assert (history.current.pipeline, history.current.commit, history.previous.pipeline) == (100, sha(100), 200)

    ci(monkeypatch, 50)
    with pytest.raises(OutdatedPipeline, match="hk runs revision 1 from pipeline 100"):
        deploy.apply("v0")
    deployed(monkeypatch, 100, "v1", deploy)  # pipeline 100's job retried: what runs
    deployed(monkeypatch, 300, "v3", deploy)  # a later pipeline deploys as ever
    assert deploy.history().current.pipeline == 300


class Killed(BaseException):
    """SIGKILL stand-in: nothing in the tool catches it, so the history keeps the deploy pending."""


def test_a_deploy_killed_midway_counts_as_what_runs_until_rollback_puts_back_what_ran_before(monkeypatch):
    deploy = deployed(monkeypatch, 100, "v1")

    def killed_at_the_rollout(verb, doc):
        if doc["kind"] == "Rollout":
            raise Killed()
    deploy.kube.fail = killed_at_the_rollout
    ci(monkeypatch, 200)
    with pytest.raises(Killed):
        deploy.apply("v2")
    deploy.kube.fail = lambda verb, doc: None
    history = deploy.history()
    assert (history.current.pipeline, history.pending.pipeline, history.restore.pipeline) == (100, 200, 100)

    ci(monkeypatch, 150)
    with pytest.raises(OutdatedPipeline) as refused:
        deploy.apply("v15")
    assert "hk runs revision 2 (its deploy never finished) from pipeline 200" in refused.value.message
    assert "(puts back what ran before unfinished revision 2)" in refused.value.message
    assert deploy.history().pending.number == 2

    assert deploy.rollback("serving") == 0, deploy.output  # finishes the killed deploy's rollback
    assert (deploy.history().current.pipeline, deploy.history().pending) == (100, None)
    deployed(monkeypatch, 150, "v15", deploy)  # now newer than what runs


@pytest.mark.parametrize("value", ["abc", "", " ", "-5", "1e3", "12 34", "12\u00b2"])
def test_a_pipeline_id_that_is_not_a_number_is_refused_naming_the_variable(monkeypatch, capsys, value):
    deploy = deployed(monkeypatch, 100, "v1")
    store = copy.deepcopy(deploy.kube.store)
    ci(monkeypatch, value)
    assert run_cli(monkeypatch, deploy, "v2") == 2
    error = capsys.readouterr().err
    assert error.startswith(f"Error: $CI_PIPELINE_ID is {value!r}, not a pipeline id") and "Nothing was changed" in error
    assert deploy.kube.store == store
    with pytest.raises(BadInput, match="CI_PIPELINE_ID"):
        deploy.apply("v2")


@pytest.mark.parametrize("stage", ["grey", "ab"])
def test_grey_and_ab_follow_whichever_pipeline_deployed_last(monkeypatch, stage):
    deploy = deployed(monkeypatch, 200, "v2", deployed(monkeypatch, 300, "v1", Deploy(monkeypatch, stage=stage)))
    assert deploy.image().endswith(":v2") and not unchecked_lines(deploy)
    assert deploy.history().current.pipeline == 200

