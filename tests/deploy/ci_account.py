"""Credentials of the platform chart's deploy accounts (one per team and tier), so the live tests prove its RBAC.

A TokenRequest made with the admin kubeconfig returns a short-lived token for the account, as
the platform team mints CI's (docs/tenancy.md); the kubeconfig written here carries that token
and the cluster's CA, nothing of the admin's.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from podserve.testbed.cluster.accounts import account_kubeconfig
from podserve.tooling import tenancy


CHART_VALUES = Path(__file__).resolve().parents[2] / "charts" / "podserve-platform" / "values.yaml"


def deployer_identity(team: str, tier: str) -> tuple[str, str]:
    """Return the (namespace, name) of the ServiceAccount CI deploys `team`'s `tier` stages with."""
    return yaml.safe_load(CHART_VALUES.read_text())["deployer"]["namespace"], tenancy.account(team, tier)


def ci_kubeconfig(plane, path: Path, team: str = "like", tier: str = "preview", seconds: int = 3600) -> Path:
    """Write a kubeconfig for `team`'s `tier` account (a token from TokenRequest) and return its path."""
    namespace, name = deployer_identity(team, tier)
    return account_kubeconfig(plane, namespace, name, path, seconds)
