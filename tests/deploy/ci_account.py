"""Credentials of the platform chart's deploy accounts (one per team and tier), so the live tests prove its RBAC.

A TokenRequest made with the admin kubeconfig returns a short-lived token for the account, as
the platform team mints CI's (docs/tenancy.md); the kubeconfig written here carries that token
and the cluster's CA, nothing of the admin's.
"""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from podserve.tooling import tenancy


CHART_VALUES = Path(__file__).resolve().parents[2] / "charts" / "podserve-platform" / "values.yaml"


def deployer_identity(team: str, tier: str) -> tuple[str, str]:
    """Return the (namespace, name) of the ServiceAccount CI deploys `team`'s `tier` stages with."""
    return yaml.safe_load(CHART_VALUES.read_text())["deployer"]["namespace"], tenancy.account(team, tier)


def ci_kubeconfig(plane, path: Path, team: str = "like", tier: str = "preview", seconds: int = 3600) -> Path:
    """Write a kubeconfig for `team`'s `tier` account (a token from TokenRequest) and return its path."""
    namespace, name = deployer_identity(team, tier)
    api = plane.api_client()
    body = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": {"expirationSeconds": seconds}}
    method, url, headers, _, _ = api.param_serialize(
        "POST", f"/api/v1/namespaces/{namespace}/serviceaccounts/{name}/token",
        header_params={"Content-Type": "application/json", "Accept": "application/json"},
        auth_settings=["BearerToken"])
    response = api.call_api(method, url, header_params=headers, body=body)
    assert response.status == 201, f"TokenRequest for {namespace}/{name} failed: {response.read()!r}"
    token = json.loads(response.read())["status"]["token"]
    admin = yaml.safe_load(Path(plane.kubeconfig).read_text())
    cluster = admin["clusters"][0]["cluster"]
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "ci",
        "clusters": [{"name": "test", "cluster": {"server": plane.server,
                                                  "certificate-authority-data": cluster["certificate-authority-data"]}}],
        "users": [{"name": name, "user": {"token": token}}],
        "contexts": [{"name": "ci", "context": {"cluster": "test", "user": name}}],
    }))
    return path
