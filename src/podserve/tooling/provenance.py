"""Where rendered code comes from, as GitLab's CI variables tell the pipeline, and what may reach it: production's
requests are mirrored only to a grey built from the protected default branch.

    source = Source.from_environment()       # CI_COMMIT_BRANCH, CI_DEFAULT_BRANCH, CI_COMMIT_REF_PROTECTED
    source.production_code                   # the protected default branch: the code production runs
    mark(grey_docs, source)                  # grey's record of it, in the cluster (below)

grey runs whichever branch pushed last. Its record of where it came from is written by the grey job's render into the
cluster with grey's own objects, the only ones it may write: every object of grey carries SOURCE_ANNOTATION (branch,
default branch, protected), and grey's pods built from the protected default branch carry release.MIRROR_LABEL.
Production's mirror never names a branch: it goes to grey's DestinationRule subset release.MIRROR_SUBSET, which selects
that label. So whenever production deploys (the same pipeline or weeks later) and whichever branch deployed grey since,
a copy reaches only pods of default-branch code; another branch's grey (no label) gets none, and its pods replace the
labelled ones as its rollout goes: from its first pod on, no copy reaches it.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from typing import Mapping

from podserve.tooling import release

#: GitLab's predefined variables (docs: predefined CI/CD variables): the branch of a branch pipeline (empty for tags
#: and merge-request pipelines), the project's default branch, whether the ref is protected.
BRANCH_VARIABLE = "CI_COMMIT_BRANCH"
DEFAULT_BRANCH_VARIABLE = "CI_DEFAULT_BRANCH"
PROTECTED_VARIABLE = "CI_COMMIT_REF_PROTECTED"
#: On every object of grey: where its code came from ({"branch", "default_branch", "protected"}, JSON).
SOURCE_ANNOTATION = "podserve.io/source"


@dataclass(frozen=True)
class Source:
    """The branch a render's code is from, the project's default branch, and whether the ref is protected."""

    branch: str = ""
    default_branch: str = ""
    protected: bool = False

    @classmethod
    def from_environment(cls, env: Mapping[str, str] | None = None) -> "Source":
        env = os.environ if env is None else env
        return cls(env.get(BRANCH_VARIABLE, ""), env.get(DEFAULT_BRANCH_VARIABLE, ""),
                   env.get(PROTECTED_VARIABLE, "") == "true")

    @property
    def production_code(self) -> bool:
        """The protected default branch: the only code production's data may reach."""
        return bool(self.branch) and self.branch == self.default_branch and self.protected

    def describe(self) -> str:
        if not self.branch:
            return "built outside a branch pipeline (no CI_COMMIT_BRANCH: a local render, a tag, a merge request)"
        if self.production_code:
            return f"built from the protected default branch {self.branch}"
        why = "not the default branch " + (self.default_branch or "(CI_DEFAULT_BRANCH unset)") \
            if self.branch != self.default_branch else "the default branch, but not protected"
        return f"built from branch {self.branch} ({why})"

    def mirror_note(self, percent: float) -> str:
        """What render says of production's mirror for grey built from this source."""
        if self.production_code:
            return f"grey is {self.describe()}: hk mirrors {percent:g}% of its requests to it"
        return (f"grey is {self.describe()}: production's requests are not mirrored to it (they go only to a grey "
                "of the protected default branch)")


def mark(grey_docs: list[dict], source: Source) -> list[dict]:
    """Record `source` on grey's objects (SOURCE_ANNOTATION on each), and where it is production's code, label an online
    grey's pods with release.MIRROR_LABEL (the mirror subset's selector). In place: they are render's own."""
    record = json.dumps(asdict(source), sort_keys=True)
    mirrored = source.production_code and any(doc.get("kind") == "DestinationRule" for doc in grey_docs)
    for doc in grey_docs:
        doc.setdefault("metadata", {}).setdefault("annotations", {})[SOURCE_ANNOTATION] = record
        if mirrored and doc.get("kind") == "Deployment":
            template = doc["spec"]["template"].setdefault("metadata", {})
            template.setdefault("labels", {})[release.MIRROR_LABEL] = release.MIRROR_LABEL_VALUE
    return grey_docs
