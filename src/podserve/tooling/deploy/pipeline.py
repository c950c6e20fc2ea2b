"""The GitLab pipeline a deploy runs in, and the rule that production never goes back to an older pipeline's commit.

Anyone who may run a project's jobs can retry an old pipeline's deploy job (or play its manual
gate): without a check, that puts the old commit back into production. Each revision in the
history records the pipeline that applied it ($CI_PIPELINE_ID: numbered in order across the
GitLab instance) and its commit ($CI_COMMIT_SHA); `apply` to a production stage (track
`stable`) refuses, before any change, a job whose pipeline is older than the one that deployed
what runs there. The same pipeline (a retried job) and newer ones deploy. Going back on purpose
is `rollback`, or a revert deployed from a new pipeline. grey and ab follow whichever branch
played them last, so they are not checked. Where either side has no pipeline (the tool run by
hand, or a history written before pipelines were recorded) the order cannot be checked: the
deploy goes on, and says so in one line.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

from podserve.tooling.deploy.errors import BadInput, OutdatedPipeline
from podserve.tooling.deploy.history import History, Revision
from podserve.tooling.deploy.target import Target

#: GitLab's predefined variable holding the pipeline's id, unique and increasing across the GitLab instance.
PIPELINE_ID_VARIABLE = "CI_PIPELINE_ID"
#: GitLab's predefined variable holding the commit the pipeline runs for.
COMMIT_VARIABLE = "CI_COMMIT_SHA"
_DIGITS = re.compile(r"[0-9]+")  # ASCII only: str.isdigit() also takes "²", which int() refuses
#: How many characters of a commit are shown (GitLab's $CI_COMMIT_SHORT_SHA is 8).
SHORT_SHA = 8


@dataclass(frozen=True)
class Origin:
    """Where a deploy comes from: its GitLab pipeline's id and commit (None and "" when run by hand)."""

    pipeline: int | None = None
    commit: str = ""

    def describe(self) -> str:
        """Return e.g. 'pipeline 1234 (commit 1a2b3c4d)', or what is unknown."""
        where = f"pipeline {self.pipeline}" if self.pipeline is not None else "no pipeline"
        return f"{where} (commit {self.commit[:SHORT_SHA]})" if self.commit else where


def from_environment(environ=os.environ) -> Origin:
    """Return the pipeline and commit GitLab set for this job; BadInput when $CI_PIPELINE_ID is set but not a number."""
    text = environ.get(PIPELINE_ID_VARIABLE)
    commit = (environ.get(COMMIT_VARIABLE) or "").strip()
    if text is None:
        return Origin(None, commit)
    if not _DIGITS.fullmatch(text.strip()):
        raise BadInput(f"${PIPELINE_ID_VARIABLE} is {text!r}, not a pipeline id: GitLab sets it to the pipeline's "
                       f"number, and the deploy tool orders deploys by it. Do not set or override "
                       f"{PIPELINE_ID_VARIABLE} (a CI/CD or manual job variable); run the job as GitLab starts it, "
                       "or the tool by hand without it. Nothing was changed")
    return Origin(int(text.strip()), commit)


def origin_of(revision: Revision) -> Origin:
    """Return the pipeline and commit a recorded revision came from."""
    return Origin(revision.pipeline, revision.commit)


def newest_deployed(history: History) -> Revision | None:
    """Return the revision of the newest pipeline that reached the stage: the current one, or a pending one from a
    newer pipeline (a deploy killed midway, or whose rollback was cut short: its objects may run); else the current
    one, with or without a pipeline (None before the first deploy)."""
    known = [r for r in (history.current, history.pending) if r is not None and r.pipeline is not None]
    return max(known, key=lambda r: r.pipeline, default=history.current)


def check_order(target: Target, history: History, job: Origin) -> str | None:
    """Refuse (OutdatedPipeline) a production deploy from a pipeline older than the one that deployed what runs.

    Return the line to print when the order cannot be checked (either side has no pipeline), else None.
    """
    if not target.stage.production:
        return None
    deployed = newest_deployed(history)
    if deployed is None:
        return None  # the stage's first recorded deploy: nothing to be older than
    if deployed.pipeline is None or job.pipeline is None:
        missing = (f"this deploy has no ${PIPELINE_ID_VARIABLE} (run outside GitLab CI)" if job.pipeline is None else
                   f"revision {deployed.number} was recorded without its pipeline (by hand, or by an older tool)")
        return (f"pipeline order not checked: {missing}, so whether {job.describe()} is older than what runs in "
                f"{target.stage.name} ({origin_of(deployed).describe()}) is not known")
    if job.pipeline >= deployed.pipeline:
        return None
    raise OutdatedPipeline(_refusal(target, history, deployed, job))  # exit 3, notified as `refused`


def _refusal(target: Target, history: History, deployed: Revision, job: Origin) -> str:
    """The refusal's detail: the stage, what runs (pipeline, commit, image), this job's pipeline, and the rollback."""
    stage = target.stage.name
    rollback = (f"`python -m podserve.tooling.deploy rollback --stage {stage} --service {target.service} "
                f"--team {target.team}`")
    return (f"{stage} runs revision {deployed.number}{_unfinished(history, deployed)} from "
            f"{origin_of(deployed).describe()}, image {deployed.image}; this job is from {job.describe()}, older; "
            f"nothing was changed. The rollback: {rollback}{_what_rollback_puts_back(history)}")


def _unfinished(history: History, deployed: Revision) -> str:
    return " (its deploy never finished)" if deployed is history.pending else ""


def _what_rollback_puts_back(history: History) -> str:
    """Say what `rollback` would put back: what ran before an unfinished deploy, else the previous revision."""
    if history.pending is not None:
        return f" (puts back what ran before unfinished revision {history.pending.number})"
    previous = history.previous
    if previous is None:
        return ""
    return f" (puts back revision {previous.number}: {origin_of(previous).describe()}, image {previous.image})"
