"""The platform's rules come from the tooling that runs, never from the fork's checkout: an edited copy is refused.

The platform's rules are the files of `conf/` (limits, freeze windows, teams, regions, stages)
and `templates/` (what render writes). CI runs render and the deploy tool from the platform's
pinned tooling image (`.gitlab-ci.yml` TOOLING_IMAGE), which carries its own copy of both
beside its code: those are the rules that apply. A fork's checkout carries copies too (the
template's history); if they differ from the image's, the fork meant to change a rule, and
render refuses (exit 2) naming each file rather than silently applying the image's.
Platform fixes reach forks as a new tooling image release (docs/tenancy.md).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

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
