"""Rendered manifests on disk: one canonical YAML file per object kind, per stage folder.

Files are written only after every stage has rendered and passed its checks; what is
written is exactly the checked documents, dumped with sorted keys so that output is
byte-for-byte repeatable.
"""

from __future__ import annotations

import re
from pathlib import Path

import yaml

#: The files a stage folder may hold; stale ones (an HPA no longer wanted) are removed.
KIND_FILES = {
    "Deployment": "deployment.yaml", "Service": "service.yaml", "VirtualService": "virtualservice.yaml",
    "DestinationRule": "destinationrule.yaml", "PodDisruptionBudget": "poddisruptionbudget.yaml",
    "PodMonitor": "podmonitor.yaml", "HorizontalPodAutoscaler": "horizontalpodautoscaler.yaml",
    "ScaledObject": "scaledobject.yaml", "Rollout": "rollout.yaml", "AnalysisTemplate": "analysistemplate.yaml",
}


class _Dumper(getattr(yaml, "CSafeDumper", yaml.SafeDumper)):
    """SafeDumper that writes no anchors and quotes y/n/Y/N (Kubernetes' YAML 1.1 parser reads booleans)."""

    def ignore_aliases(self, data) -> bool:
        return True


_Dumper.add_implicit_resolver("tag:yaml.org,2002:bool", re.compile(r"^(?:y|Y|n|N)$"), list("yYnN"))


def dump(docs: list[dict]) -> str:
    """Return documents as canonical YAML text (sorted keys, no line wrapping)."""
    return yaml.dump_all(docs, Dumper=_Dumper, sort_keys=True, default_flow_style=False,
                         explicit_start=True, width=10_000, allow_unicode=False)


def stage_files(docs: list[dict]) -> dict[str, str]:
    """Return {file name: text} for one stage: its documents grouped by kind."""
    grouped: dict[str, list[dict]] = {}
    for doc in docs:
        grouped.setdefault(KIND_FILES[doc["kind"]], []).append(doc)
    return {name: dump(group) for name, group in sorted(grouped.items())}


#: What render writes in out/<stage>/ for a stage the service does not run in (value.py regions): the reason.
NOT_DEPLOYED = "not-deployed.txt"


def write_not_deployed(out: Path, skipped: dict[str, str]) -> list[Path]:
    """Write out/<stage>/not-deployed.txt (the reason) for each skipped stage, removing its manifests; return them."""
    written = []
    for stage, reason in skipped.items():
        folder = out / stage
        folder.mkdir(parents=True, exist_ok=True)
        for stale in KIND_FILES.values():
            (folder / stale).unlink(missing_ok=True)
        (folder / NOT_DEPLOYED).write_text(reason + "\n", encoding="utf-8")
        written.append(folder / NOT_DEPLOYED)
    return written


def write_stages(out: Path, rendered: dict[str, list[dict]]) -> list[Path]:
    """Write each stage's files under out/<stage>/, removing stale ones; return the paths written."""
    written = []
    for stage, docs in rendered.items():
        folder = out / stage
        folder.mkdir(parents=True, exist_ok=True)
        (folder / NOT_DEPLOYED).unlink(missing_ok=True)
        files = stage_files(docs)
        for stale in set(KIND_FILES.values()) - set(files):
            (folder / stale).unlink(missing_ok=True)
        for name, text in files.items():
            (folder / name).write_text(text, encoding="utf-8")
            written.append(folder / name)
    return written


def remove_stages(out: Path) -> list[Path]:
    """Remove the manifests an earlier render wrote under out/<stage>/ (only files render writes, and the folders
    left empty), so that no later step picks up manifests of a value.py that no longer renders; return them."""
    removed = []
    for folder in sorted(p for p in out.glob("*") if p.is_dir()) if out.is_dir() else []:
        for name in sorted([*KIND_FILES.values(), NOT_DEPLOYED]):
            if (folder / name).is_file():
                (folder / name).unlink()
                removed.append(folder / name)
        if not any(folder.iterdir()):
            folder.rmdir()
    return removed
