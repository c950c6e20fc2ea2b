"""Istio URI matching: which route a path reaches, and whether two routes can share a path.

A service's public route is its stage path matched exactly, plus a prefix that ends in "/"
for sub-paths; never a bare prefix, which is how the old system let `test` catch `test-2`.
Istio merges the VirtualServices bound to one gateway and host without a defined order,
so two services' matches must never both accept a path: `overlaps` decides that for exact
and prefix matches, and probes regex matches (RE2, full match) with sample paths.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import yaml

from podserve.tooling.valuefile import Problem, ValueFileError

KINDS = ("exact", "prefix", "regex")
#: Suffixes tried after a prefix when comparing it with a regex (regexes cannot be compared exactly).
_PROBES = ("", "a", "0", "-2", "/", "/a", "/0", "/v2/models/m/infer", "a/b")


@dataclass(frozen=True)
class UriMatch:
    """One Istio `uri` match: kind is exact, prefix or regex."""

    kind: str
    value: str

    def accepts(self, path: str) -> bool:
        """Return whether Istio's match of this kind accepts `path`."""
        if self.kind == "exact":
            return path == self.value
        if self.kind == "prefix":
            return path.startswith(self.value)
        return re.fullmatch(self.value, path) is not None

    def samples(self) -> list[str]:
        """Return paths this match accepts, for probing a regex against it."""
        if self.kind == "exact":
            return [self.value]
        if self.kind == "prefix":
            return [self.value + probe for probe in _PROBES]
        return []


@dataclass(frozen=True)
class Route:
    """A match that sends traffic to `owner` (a service, or namespace/name of a foreign route)."""

    owner: str
    host: str
    match: UriMatch


def service_matches(public_path: str) -> list[UriMatch]:
    """Return the matches of a service's public path: the path itself and its sub-paths."""
    return [UriMatch("exact", public_path), UriMatch("prefix", public_path + "/")]


def overlaps(a: UriMatch, b: UriMatch) -> bool:
    """Return whether some path is accepted by both matches."""
    if a.kind == "regex" and b.kind == "regex":
        return a.value == b.value
    if b.kind == "regex":
        a, b = b, a
    if a.kind == "regex":
        return any(a.accepts(path) for path in b.samples())
    if a.kind == "exact":
        return b.accepts(a.value)
    if b.kind == "exact":
        return a.accepts(b.value)
    return a.value.startswith(b.value) or b.value.startswith(a.value)


def routes_of(doc: dict) -> list[Route]:
    """Return the routes of one VirtualService: each http match's uri, with its hosts, once each (a production
    route's canary header route serves the same paths)."""
    meta = doc.get("metadata") or {}
    # The namespace is part of the owner: two teams may both have a service of one name (docs/tenancy.md).
    owner = f"{meta.get('namespace', '')}/{(meta.get('labels') or {}).get('service') or meta.get('name', '')}"
    spec = doc.get("spec") or {}
    found = []
    for http in spec.get("http") or []:
        for match in http.get("match") or [{}]:
            uri = match.get("uri") or {"prefix": "/"}
            kind = next(k for k in KINDS if k in uri)
            found.extend(Route(owner, host, UriMatch(kind, uri[kind])) for host in spec.get("hosts") or [])
    return list(dict.fromkeys(found))


def owners_of(virtual_services: list[dict], host: str, path: str) -> list[str]:
    """Return the owners of every VirtualService on `host` with a route that accepts `path`.

    Istio gives VirtualServices merged on one host no order, so more than one owner here
    means a caller of that path may reach either service: a conflict.
    """
    owners = []
    for doc in virtual_services:
        for route in routes_of(doc):
            if route.host == host and route.match.accepts(path):
                owners.append(route.owner)
                break
    return owners


def conflicts(ours: list[Route], theirs: list[Route]) -> list[tuple[Route, Route]]:
    """Return each pair of routes of different owners on one host that can share a path."""
    return [(a, b) for a in ours for b in theirs
            if a.owner != b.owner and a.host == b.host and overlaps(a.match, b.match)]


def load_existing_routes(path: str | Path) -> list[Route]:
    """Read the routes already served: VirtualServices as `kubectl get virtualservices -A -o yaml` writes them.

    The file may hold one object, a List of them (items), or several YAML documents.
    """
    try:
        docs = [d for d in yaml.safe_load_all(Path(path).read_text(encoding="utf-8")) if d]
    except (OSError, yaml.YAMLError) as exc:
        raise ValueFileError(path, [Problem("existing routes", f"cannot be read: {exc}; pass the output of "
                                            "`kubectl get virtualservices -A -o yaml`")]) from None
    objects = [item for d in docs if isinstance(d, dict)
               for item in (d.get("items") or [] if d.get("kind") == "List" else [d])]
    return [route for obj in objects if obj.get("kind") == "VirtualService" for route in routes_of(obj)]
