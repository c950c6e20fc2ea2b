"""Server-side apply of one manifest with the official client, strict field validation, optionally a dry run."""

from __future__ import annotations

import json


class Applier:
    """Applies documents through one ApiClient; resolves kinds to resource paths by API discovery (once)."""

    def __init__(self, api_client, field_manager: str = "podserve"):
        from kubernetes.dynamic import DynamicClient

        self.api_client = api_client
        self.dynamic = DynamicClient(api_client)
        self.field_manager = field_manager

    def path(self, doc: dict) -> str:
        resource = self.dynamic.resources.get(api_version=doc["apiVersion"], kind=doc["kind"])
        namespace = doc["metadata"].get("namespace") if resource.namespaced else None
        return resource.path(name=doc["metadata"]["name"], namespace=namespace)

    def apply(self, doc: dict, *, dry_run: bool = False, force: bool = True) -> dict:
        """PATCH application/apply-patch+yaml with fieldValidation=Strict; raise ApiException when refused."""
        query = [("fieldManager", self.field_manager), ("fieldValidation", "Strict"), ("force", str(force).lower())]
        if dry_run:
            query.append(("dryRun", "All"))
        from kubernetes.client.exceptions import ApiException

        request = self.api_client.param_serialize(
            "PATCH", self.path(doc), query_params=query, body=json.dumps(doc),
            header_params={"Content-Type": "application/apply-patch+yaml", "Accept": "application/json"},
            auth_settings=["BearerToken"])
        response = self.api_client.call_api(*request)
        response.read()
        if not 200 <= response.status < 300:
            raise ApiException(http_resp=response)
        return json.loads(response.data)
