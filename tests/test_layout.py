"""The package keeps its one rule: the pod's runtime and CI's tooling never import each other."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PACKAGE = REPO / "src" / "podserve"
#: What CI's tooling may not pull in: requirements/tooling.txt does not install these.
SERVER_ONLY = ("uvloop", "httptools", "onnxruntime", "prometheus_client", "PIL", "numpy")


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def test_runtime_never_imports_tooling():
    offenders = {f"{p.name}: {n}" for p in (PACKAGE / "runtime").rglob("*.py") for n in _imports(p)
                 if n.startswith("podserve.tooling")}
    assert offenders == set()


def test_tooling_never_imports_the_runtime():
    offenders = {f"{p.name}: {n}" for p in (PACKAGE / "tooling").rglob("*.py") for n in _imports(p)
                 if n.startswith("podserve.runtime")}
    assert offenders == set()


def test_every_tooling_module_imports_without_the_servers_dependencies():
    # A fresh interpreter in which the server's packages cannot be imported, as in CI's render job.
    tooling = PACKAGE / "tooling"
    modules = sorted("podserve.tooling." + ".".join(p.relative_to(tooling).with_suffix("").parts)
                     for p in tooling.rglob("*.py") if p.stem not in ("__main__", "__init__"))
    script = f"""
import importlib, importlib.abc, sys
class Refuse(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {SERVER_ONLY!r}:
            raise ImportError(f"{{name}} is a server-only dependency")
sys.meta_path.insert(0, Refuse())
for module in {modules!r}:
    importlib.import_module(module)
print("imported", len({modules!r}))
"""
    done = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=60,
                          env={"PYTHONPATH": str(REPO / "src"), "PATH": "/usr/bin:/bin"})
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("imported")
