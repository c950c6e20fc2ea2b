"""Offline schema checks for Kubernetes objects: every object must meet a real schema.

Core kinds go through kubernetes-validate --strict (the official OpenAPI schemas, unknown
fields rejected) at each Kubernetes version we support. Istio and Prometheus-operator kinds
go through the `openAPIV3Schema` of their CRDs in ../shared/schemas/crds, closed first so
that unknown fields are rejected (structural schemas prune them silently in a cluster).
A kind with no schema on either path is an error, never a pass: kubernetes-validate alone
would only warn.
"""

from __future__ import annotations

import copy
import functools
from pathlib import Path

import jsonschema
import kubernetes_validate
import yaml
from kubernetes_validate.utils import SchemaNotFoundError

from podserve.tooling.conf import load_conf

REPO = Path(__file__).resolve().parents[2]
SCHEMAS = REPO.parent / "shared" / "schemas"
CRDS = SCHEMAS / "crds"
_VERSIONS = load_conf().platform.kubernetes
#: The oldest and newest Kubernetes versions we support (conf/platform.yaml).
KUBE_VERSIONS = (_VERSIONS.oldest, _VERSIONS.newest)


def shared_schemas() -> Path:
    """Return ../shared/schemas, failing loudly when it is not beside the repository."""
    assert CRDS.is_dir(), f"{CRDS} is missing: the CRD schemas live in ../shared/schemas beside the repository"
    return SCHEMAS


@functools.lru_cache(maxsize=None)
def crd_validators() -> dict[tuple[str, str], jsonschema.Draft7Validator]:
    """Return {(apiVersion, kind): validator} for every served version of every CRD in shared/ and of Argo
    Rollouts' (its module's own files, `make argo-rollouts`)."""
    from podserve.testbed.rollouts import build

    argo = build.ENGINE.crd_paths()
    assert all(p.is_file() for p in argo), f"{argo[0].parent} lacks Argo's CRDs: run `make argo-rollouts`"
    validators = {}
    for path in [*sorted(shared_schemas().joinpath("crds").glob("*.yaml")), *argo]:
        for crd in yaml.safe_load_all(path.read_text(encoding="utf-8")):
            if not crd or crd.get("kind") != "CustomResourceDefinition":
                continue
            spec = crd["spec"]
            for version in spec["versions"]:
                schema = closed(_with_object_header(version["schema"]["openAPIV3Schema"]))
                key = (f"{spec['group']}/{version['name']}", spec["names"]["kind"])
                validators[key] = jsonschema.Draft7Validator(schema)
    return validators


def _with_object_header(schema: dict) -> dict:
    """Every object may carry apiVersion, kind and metadata, whether or not its CRD lists them."""
    header = {"apiVersion": {"type": "string"}, "kind": {"type": "string"}, "metadata": {"type": "object"}}
    return dict(schema, properties={**header, **schema.get("properties", {})})


def closed(schema: dict) -> dict:
    """Return a CRD schema as JSON Schema that rejects unknown fields, nulls only where nullable."""
    schema = copy.deepcopy(schema)
    _close(schema)
    return schema


def _close(node) -> None:
    if isinstance(node, list):
        for item in node:
            _close(item)
        return
    if not isinstance(node, dict):
        return
    if "properties" in node and "additionalProperties" not in node \
            and not node.get("x-kubernetes-preserve-unknown-fields"):
        node["additionalProperties"] = False
    if node.get("x-kubernetes-int-or-string") and "type" not in node:
        node["anyOf"] = node.get("anyOf", []) + [{"type": "integer"}, {"type": "string"}]
    if node.get("nullable") and "type" in node:
        node["type"] = [node["type"], "null"]
    for key in ("properties", "patternProperties"):
        for child in (node.get(key) or {}).values():
            _close(child)
    for key in ("items", "additionalProperties", "not", "allOf", "anyOf", "oneOf"):
        if key in node:
            _close(node[key])


def schema_errors(doc: dict) -> list[str]:
    """Return every schema error of one object, at every supported version; [] when it is valid."""
    name = f"{doc.get('kind')} {(doc.get('metadata') or {}).get('name')}"
    crd = crd_validators().get((doc.get("apiVersion"), doc.get("kind")))
    if crd is not None:
        errors = [f"{name}: {'.'.join(map(str, e.path))}: {e.message}" for e in crd.iter_errors(doc)]
        meta = doc.get("metadata") or {}
        if not isinstance(meta.get("name"), str):
            errors.append(f"{name}: metadata.name is missing")
        return errors
    errors = []
    for version in KUBE_VERSIONS:
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            errors.append(f"{name} @ {version}: {'.'.join(map(str, exc.path))}: {exc.message}")
        except SchemaNotFoundError as exc:
            errors.append(f"{name} @ {version}: no schema to check it against ({exc.message})")
    return errors


def all_schema_errors(docs: list[dict]) -> list[str]:
    """Return the schema errors of every object."""
    return [error for doc in docs for error in schema_errors(doc)]
