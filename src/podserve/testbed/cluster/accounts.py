"""Credentials of a ServiceAccount of the control plane: a kubeconfig with a token from TokenRequest.

    account_kubeconfig(plane, "podserve-system", "podserve-like-preview", path)   # CI's account, as tests use it
    account_kubeconfig(plane, "argo-rollouts", "argo-rollouts", path)             # the chart's Argo controller

A TokenRequest made with the admin kubeconfig returns a short-lived token, as the platform team mints CI's
(docs/tenancy.md); the kubeconfig written carries that token and the cluster's CA, nothing of the admin's, so what it
may do is the account's RBAC.
"""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from podserve.testbed.processes import StartError


def account_kubeconfig(plane, namespace: str, account: str, path: Path, seconds: int = 3600,
                       default_namespace: str | None = None) -> Path:
    """Write a kubeconfig for ServiceAccount `namespace/account` (a token valid `seconds`) and return its path.

    `default_namespace` becomes the context's namespace (a controller that reads its own namespace from its
    kubeconfig); without it the context has none, as CI's kubeconfig, whose commands name theirs."""
    api = plane.api_client()
    body = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": {"expirationSeconds": seconds}}
    method, url, headers, _, _ = api.param_serialize(
        "POST", f"/api/v1/namespaces/{namespace}/serviceaccounts/{account}/token",
        header_params={"Content-Type": "application/json", "Accept": "application/json"},
        auth_settings=["BearerToken"])
    response = api.call_api(method, url, header_params=headers, body=body)
    if response.status != 201:
        raise StartError(f"TokenRequest for {namespace}/{account} failed ({response.status}): {response.read()!r}")
    token = json.loads(response.read())["status"]["token"]
    admin = yaml.safe_load(Path(plane.kubeconfig).read_text())
    ca = admin["clusters"][0]["cluster"]["certificate-authority-data"]
    context = {"cluster": "test", "user": account, **({"namespace": default_namespace} if default_namespace else {})}
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": account,
        "clusters": [{"name": "test", "cluster": {"server": plane.server, "certificate-authority-data": ca}}],
        "users": [{"name": account, "user": {"token": token}}],
        "contexts": [{"name": account, "context": context}],
    }))
    path.chmod(0o600)
    return path
