"""Helpers for the tooling tests: the pinned binaries, rendered folders read back, kubectl kustomize."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
TOOLS = REPO / ".tools" / "bin"
#: An environment for helm and kubectl that reaches no cluster and reads no user config.
OFFLINE_ENV = {"KUBECONFIG": "/dev/null", "PATH": "/usr/bin:/bin", "HOME": "/nonexistent"}


def tool(name: str) -> Path:
    """Return the pinned binary from .tools/bin, failing loudly when `make tools` has not run."""
    path = TOOLS / name
    assert path.is_file(), f"{path} is missing: run `make tools` (make test does it first)"
    return path


def run_tool(args: list, tmp: Path) -> subprocess.CompletedProcess:
    """Run helm or kubectl offline, with its caches under tmp."""
    env = dict(OFFLINE_ENV, HOME=str(tmp), XDG_CACHE_HOME=str(tmp / "cache"), XDG_CONFIG_HOME=str(tmp / "config"),
               XDG_DATA_HOME=str(tmp / "data"))
    return subprocess.run([str(a) for a in args], capture_output=True, text=True, timeout=120, env=env)


def read_tree(out: Path) -> dict[str, list[dict]]:
    """Return {stage: documents} of a folder render wrote."""
    return {stage.name: [doc for path in sorted(stage.glob("*.yaml"))
                         for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")) if doc]
            for stage in sorted(out.iterdir()) if stage.is_dir()}


def kustomize(kubectl: Path, stage_dir: Path, tmp: Path) -> list[dict]:
    """Build a stage folder with `kubectl kustomize`: kubectl's own YAML decoding and unique object ids, offline."""
    work = tmp / f"kustomize-{stage_dir.name}"
    shutil.copytree(stage_dir, work)
    files = sorted(p.name for p in work.glob("*.yaml"))
    (work / "kustomization.yaml").write_text(yaml.safe_dump({"resources": files}), encoding="utf-8")
    result = run_tool([kubectl, "kustomize", work], tmp)
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]
