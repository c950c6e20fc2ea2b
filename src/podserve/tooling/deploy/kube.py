"""The deploy tool's door to the API server: credentials, REST paths per kind, plain-dict requests.

Credentials come from `$KUBECONFIG`, else the in-cluster service account, never from the
repository. Requests go through the official client's connection (TLS, tokens, exec
plugins) but send and return plain dicts shaped as the API documents them, so the
diagnosis reads exactly what the server said. Errors carry the server's Status message.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from urllib.parse import quote

from podserve.tooling.deploy.errors import BadInput, ClusterError

FIELD_MANAGER = "podserve-deploy"
#: Reads are idempotent: one answered 429 or 5xx, or a server not reached, is tried again after each of these pauses.
READ_RETRY_PAUSES = (0.5, 1.0, 2.0, 4.0)
RETRIABLE = frozenset({0, 429, 500, 502, 503, 504})


@dataclass(frozen=True)
class Kind:
    """Where a kind lives in the API: its apiVersion, plural, and whether it is namespaced."""

    api_version: str
    plural: str
    namespaced: bool = True

    def path(self, namespace: str | None = None, name: str | None = None) -> str:
        """Return the collection (or, with name, the object) path, in `namespace` or across all."""
        base = f"/api/{self.api_version}" if "/" not in self.api_version else f"/apis/{self.api_version}"
        if self.namespaced and namespace:
            base += f"/namespaces/{quote(namespace)}"
        base += f"/{self.plural}"
        return base + (f"/{quote(name)}" if name else "")


#: The kinds render writes (what apply sends and prune considers), by kind name.
MANAGED = {
    "Deployment": Kind("apps/v1", "deployments"),
    "Service": Kind("v1", "services"),
    "VirtualService": Kind("networking.istio.io/v1", "virtualservices"),
    "DestinationRule": Kind("networking.istio.io/v1", "destinationrules"),
    "PodDisruptionBudget": Kind("policy/v1", "poddisruptionbudgets"),
    "PodMonitor": Kind("monitoring.coreos.com/v1", "podmonitors"),
    "HorizontalPodAutoscaler": Kind("autoscaling/v2", "horizontalpodautoscalers"),
    "ScaledObject": Kind("keda.sh/v1alpha1", "scaledobjects"),
    "Rollout": Kind("argoproj.io/v1alpha1", "rollouts"),
    "AnalysisTemplate": Kind("argoproj.io/v1alpha1", "analysistemplates"),
}
#: What the tool reads or keeps beside them.
REPLICASETS = Kind("apps/v1", "replicasets")
PODS = Kind("v1", "pods")
NODES = Kind("v1", "nodes")
EVENTS = Kind("v1", "events")
CONFIGMAPS = Kind("v1", "configmaps")
LEASES = Kind("coordination.k8s.io/v1", "leases")


def kind_of(doc: dict) -> Kind:
    """Return where a rendered document's kind lives; BadInput if render never writes it."""
    kind = MANAGED.get(doc.get("kind", ""))
    if kind is None:
        raise BadInput(f"manifest kind {doc.get('kind')!r} is not one render writes ({', '.join(MANAGED)}); "
                       "pass the folder `render` wrote")
    return Kind(doc.get("apiVersion") or kind.api_version, kind.plural, kind.namespaced)


class Kube:
    """A connection to one cluster, speaking plain dicts."""

    def __init__(self, api_client):
        self.api = api_client

    @classmethod
    def from_environment(cls) -> "Kube":
        """Connect with $KUBECONFIG, else the in-cluster service account; BadInput when neither is there."""
        from kubernetes import client, config

        configuration = client.Configuration()
        try:
            if os.environ.get("KUBECONFIG"):
                config.load_kube_config(config_file=os.environ["KUBECONFIG"], client_configuration=configuration)
            elif os.environ.get("KUBERNETES_SERVICE_HOST"):
                config.load_incluster_config(client_configuration=configuration)
            else:
                raise BadInput("no cluster credentials: set KUBECONFIG to the stage's kubeconfig (in CI, the "
                               "file variable KUBECONFIG_PREVIEW_HK or KUBECONFIG_<REGION> of the team's account), or run inside "
                               "the cluster with a service account")
        except config.ConfigException as exc:
            raise BadInput(f"the cluster credentials cannot be used: {exc}; check KUBECONFIG") from None
        return cls(client.ApiClient(configuration))

    # --- requests ------------------------------------------------------------------------------

    def request(self, method: str, path: str, query: dict | None = None, body=None,
                content_type: str = "application/json", timeout: float = 30, raw: bool = False):
        """Send one request; return the decoded JSON (or text when raw); ClusterError on a non-2xx answer.

        A GET answered 429 or 5xx, or not answered, is retried with back-off (READ_RETRY_PAUSES); writes never are
        (a write that may have happened is the caller's to judge: apply's ends interrupted and rolled back).
        """
        for pause in (*READ_RETRY_PAUSES, None):
            try:
                return self._request_once(method, path, query, body, content_type, timeout, raw)
            except ClusterError as exc:
                if method != "GET" or exc.status not in RETRIABLE or pause is None:
                    raise
                time.sleep(pause)

    def _request_once(self, method: str, path: str, query: dict | None, body, content_type: str, timeout: float,
                      raw: bool):
        params = [(k, str(v).lower() if isinstance(v, bool) else v) for k, v in (query or {}).items() if v is not None]
        headers = {"Accept": "application/json", "Content-Type": content_type}
        method, url, headers, _, _ = self.api.param_serialize(method, path, query_params=params,
                                                              header_params=headers, auth_settings=["BearerToken"])
        # The client encodes JSON bodies itself; an apply patch goes as text (JSON is valid YAML).
        data = json.dumps(body) if body is not None and not content_type.endswith("json") else body
        try:
            response = self.api.call_api(method, url, header_params=headers, body=data, _request_timeout=timeout)
            payload = response.read()
        except Exception as exc:  # urllib3 and TLS errors: the server cannot be reached
            if isinstance(exc, ClusterError):
                raise
            raise ClusterError(0, f"{method} {path}: cannot reach the API server ({exc})") from None
        text = payload.decode("utf-8", "replace") if isinstance(payload, bytes) else str(payload or "")
        if not 200 <= response.status < 300:
            raise ClusterError(response.status, f"{method} {path}: {_status_message(text, response.status)}")
        if raw:
            return text
        return json.loads(text) if text else {}

    def get(self, kind: Kind, namespace: str | None, name: str) -> dict | None:
        """Return the object, or None when it does not exist."""
        try:
            return self.request("GET", kind.path(namespace, name))
        except ClusterError as exc:
            if exc.status == 404:
                return None
            raise

    def list(self, kind: Kind, namespace: str | None = None, selector: str | None = None,
             field_selector: str | None = None) -> dict:
        """Return the List (items and metadata.resourceVersion), in a namespace or across all."""
        return self.request("GET", kind.path(namespace), {"labelSelector": selector, "fieldSelector": field_selector})

    def apply(self, doc: dict, dry_run: bool = False, force: bool = True, manager: str = FIELD_MANAGER) -> dict:
        """Server-side apply `doc` as our field manager with strict field validation; return the result."""
        kind = kind_of(doc) if doc.get("kind") in MANAGED else _known(doc)
        meta = doc["metadata"]
        query = {"fieldManager": manager, "fieldValidation": "Strict", "force": force,
                 "dryRun": "All" if dry_run else None}
        return self.request("PATCH", kind.path(meta.get("namespace"), meta["name"]), query, doc,
                            "application/apply-patch+yaml")

    def delete(self, kind: Kind, namespace: str | None, name: str, uid: str | None = None,
               propagation: str = "Background", resource_version: str | None = None) -> bool:
        """Delete the object (its dependents too), only if it still has `uid` and `resource_version` when given;
        return False when it was already gone (409 when a precondition no longer holds)."""
        body = {"kind": "DeleteOptions", "apiVersion": "v1", "propagationPolicy": propagation}
        preconditions = {key: value for key, value in (("uid", uid), ("resourceVersion", resource_version)) if value}
        if preconditions:
            body["preconditions"] = preconditions
        try:
            self.request("DELETE", kind.path(namespace, name), body=body)
            return True
        except ClusterError as exc:
            if exc.status == 404:
                return False
            raise

    def logs(self, namespace: str, pod: str, container: str, previous: bool, lines: int) -> str:
        """Return a container's last log lines (its previous run's when `previous`); '' when none can be read."""
        try:
            return self.request("GET", PODS.path(namespace, pod) + "/log",
                                {"container": container, "previous": previous, "tailLines": lines}, raw=True)
        except ClusterError:  # no kubelet answering (or no previous run): the diagnosis uses the status instead
            return ""

    def wait_for_change(self, kind: Kind, namespace: str, selector: str, resource_version: str,
                        seconds: int) -> None:
        """Watch the collection from `resource_version`; return at its first change or after `seconds`."""
        params = [("watch", "true"), ("labelSelector", selector), ("resourceVersion", resource_version),
                  ("timeoutSeconds", seconds), ("allowWatchBookmarks", "false")]
        method, url, headers, _, _ = self.api.param_serialize("GET", kind.path(namespace), query_params=params,
                                                              header_params={"Accept": "application/json"},
                                                              auth_settings=["BearerToken"])
        try:
            response = self.api.call_api(method, url, header_params=headers, _request_timeout=(10, seconds + 10))
            for _ in response.response.stream(256):
                break
            response.response.release_conn()
        except Exception:  # a broken watch only ends the wait early; the next snapshot is read anyway
            return


def _known(doc: dict) -> Kind:
    for kind in (CONFIGMAPS, LEASES):
        if doc.get("apiVersion") == kind.api_version and doc.get("kind", "").lower() + "s" == kind.plural:
            return kind
    raise BadInput(f"cannot apply kind {doc.get('kind')!r}")


def _status_message(text: str, status: int) -> str:
    try:
        body = json.loads(text)
        return f"{body.get('reason', status)}: {body.get('message', text)}"
    except ValueError:
        return f"HTTP {status}: {text.strip()[:300]}"
