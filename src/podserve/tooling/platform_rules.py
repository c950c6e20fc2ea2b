"""The platform's rules come from the tooling that runs, never from the fork's checkout: an edited copy is refused.

The platform's rules are the files of `conf/` (limits, freeze windows, teams, regions, stages)
and `templates/` (what render writes). CI runs render and the deploy tool from the platform's
pinned tooling image (`.gitlab-ci.yml` TOOLING_IMAGE), which carries its own copy of both
beside its code: those are the rules that apply. A fork's checkout carries copies too (the
template's history); if they differ from the image's, the fork meant to change a rule, and
render refuses (exit 2) naming each file rather than silently applying the image's.
Platform fixes reach forks as a new tooling image release (docs/tenancy.md).

In CI the tools also refuse to run unless they are the image's own, isolated from the job: its
interpreter started with `-I` (no PYTHONPATH or other PYTHON* variable, user site or job folder on
the path) and this code not loaded from the job's checkout (`run_refusal`), so that a CI/CD
variable or a file of the fork cannot put other code in their place.
"""

from __future__ import annotations

import hashlib
import os
import sys
from pathlib import Path

#: GitLab's predefined variables: set ("true") in every CI job, and the job's folder (its checkout).
CI_VARIABLE = "GITLAB_CI"
JOB_FOLDER_VARIABLE = "CI_PROJECT_DIR"
#: How the jobs run the tools (.gitlab-ci.yml): the tooling image's interpreter, by its path, isolated.
TOOLING_PYTHON = "/opt/venv/bin/python -I"

#: The folders of platform rules, relative to a checkout's root and to the tooling's own root.
RULE_FOLDERS = ("conf", "templates")


def tooling_root() -> Path:
    """Return the folder holding the running tooling's own conf/ and templates/ (/opt/podserve in the image)."""
    return Path(__file__).resolve().parents[3]


def fingerprints(root: Path) -> dict[str, str]:
    """Return {relative path: SHA-256} of every file in `root`'s rule folders."""
    found = {}
    for folder in RULE_FOLDERS:
        for path in sorted((root / folder).rglob("*")):
            if path.is_file() and "__pycache__" not in path.parts:
                found[path.relative_to(root).as_posix()] = hashlib.sha256(path.read_bytes()).hexdigest()
    return found


def differences(checkout: Path, platform: Path | None = None) -> list[str]:
    """Return one line per rule file the checkout changed, added or removed against the platform's copy."""
    platform = platform or tooling_root()
    if checkout.resolve() == platform.resolve():
        return []
    theirs, ours = fingerprints(checkout), fingerprints(platform)
    lines = [f"{path}: edited" for path in sorted(theirs.keys() & ours.keys()) if theirs[path] != ours[path]]
    lines += [f"{path}: added (not in the platform's)" for path in sorted(theirs.keys() - ours.keys())]
    lines += [f"{path}: removed" for path in sorted(ours.keys() - theirs.keys()) if theirs]
    return lines


def refusal(checkout: Path, platform: Path | None = None) -> str | None:
    """Return the message refusing a checkout that edits the platform's rules, or None when it does not."""
    changed = differences(checkout, platform)
    if not changed:
        return None
    listing = "\n".join(f"  - {line}" for line in changed)
    return (f"{checkout} changes the platform's rules, which a service cannot change:\n{listing}\n"
            f"They come from the platform's tooling image ({platform or tooling_root()}), not from this checkout. "
            "Put these files back as the platform ships them (merge the platform's release into your fork); to "
            "change a rule, ask the platform team (docs/tenancy.md).")


def run_refusal(environ=os.environ, isolated: bool | None = None, code: Path | None = None) -> str | None:
    """In a CI job, return why this tool may not run (None outside CI, or when it runs as the image's own): it must
    be started isolated (`python -I`) and be loaded from outside the job's folder (the checkout)."""
    if environ.get(CI_VARIABLE) != "true":
        return None
    isolated = bool(sys.flags.isolated) if isolated is None else isolated
    code = (code or tooling_root()).resolve()
    job = Path(environ.get(JOB_FOLDER_VARIABLE) or "/nonexistent").resolve()
    problem = ("it was started without -I, so PYTHONPATH and the job's folder may have put other code first"
               if not isolated else
               f"it was loaded from {code}, inside the job's checkout {job}" if code == job or job in code.parents
               else None)
    if problem is None:
        return None
    return (f"in CI the platform's tools run only as the tooling image's own (`{TOOLING_PYTHON} -m "
            f"podserve.tooling.<tool>`, .gitlab-ci.yml): {problem}. Nothing was done; run the job as the platform's "
            "pipeline file writes it")
