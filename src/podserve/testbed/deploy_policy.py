"""A copy of the platform's conf/ whose deploy policy has no freeze windows, for tests that deploy to production.

conf/deploy.yaml freezes each region's production on Friday evenings (hk: 10:00-16:00 UTC), so a
test suite that deploys with the repository's own policy fails for hours every week. The tests
that are about freeze windows write their own; every other one deploys with this copy.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import yaml

from podserve.tooling.conf import default_conf_dir

POLICY_FILE = "deploy.yaml"


def unfrozen_conf(target: Path, source: Path | None = None) -> Path:
    """Copy `source` (default: the repository's conf/) to `target` with deploy.yaml's freeze windows emptied;
    return `target`."""
    shutil.copytree(source or default_conf_dir(), target)
    policy = yaml.safe_load((target / POLICY_FILE).read_text(encoding="utf-8"))
    policy["freeze_windows"] = {}
    (target / POLICY_FILE).write_text(yaml.safe_dump(policy), encoding="utf-8")
    return target
