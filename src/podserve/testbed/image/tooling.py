"""The tooling image's interpreter on this machine, for CI's job lines (`/opt/venv/bin/python -I -m podserve.tooling...`).

The jobs run the tools isolated, from the image's own path, and the tools refuse to run otherwise
in CI (podserve.tooling.platform_rules.run_refusal): no PYTHONPATH can point them at a checkout.
So the tests and `make image` find the code the way the image does. `lay_out(source, root)`
copies what Dockerfile.tooling's COPY lines put in the image (conf/, templates/, the top-level
podserve modules and podserve/tooling/) from `source` (the repository, or a test's checkout with
its test conf) under root/opt/podserve, and writes root/opt/venv/bin/python: this environment's
Python started with -I, with the laid-out src/ first on its path (what the image's podserve.pth
adds). `job_lines` rewrites a job's lines to call it. Simulated: the image's venv (this
environment's packages stand in for requirements/tooling.txt's).
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

#: The tooling image's interpreter (Dockerfile.tooling's venv), as the job lines name it.
IMAGE_PYTHON = "/opt/venv/bin/python"
#: (source, destination) of Dockerfile.tooling's COPY lines, less requirements (installed, not read).
COPIES = (("conf", "opt/podserve/conf"), ("templates", "opt/podserve/templates"),
          ("src/podserve/tooling", "opt/podserve/src/podserve/tooling"))
TOP_LEVEL = ("src/podserve", "opt/podserve/src/podserve")  # its *.py files only (not runtime/ nor testbed/)

_WRAPPER = '''#!{python} -I
"""Stands in for the tooling image's {image_python} (podserve.testbed.image.tooling): isolated, the image's src/ first."""
import runpy, sys
sys.path.insert(0, {src!r})
{preload}
args = sys.argv[1:]
while args and args[0] in ("-I", "-u"):
    args.pop(0)
if args[:1] == ["-m"] and len(args) > 1:
    sys.argv = [args[1], *args[2:]]
    runpy.run_module(args[1], run_name="__main__", alter_sys=True)
elif args[:1] == ["-c"] and len(args) > 1:
    sys.argv = ["-c", *args[2:]]
    exec(compile(args[1], "<string>", "exec"), {{"__name__": "__main__"}})
else:
    raise SystemExit(f"the stand-in for {image_python} runs -m MODULE or -c CODE, not {{args}}")
'''


def lay_out(source: Path, root: Path, preload: str = "") -> Path:
    """Lay out the tooling image's files from `source` under `root`; return the path of its stand-in interpreter.

    `preload` is Python run before the tool (a test's import guard, say), as a sitecustomize would be."""
    if root.exists():
        shutil.rmtree(root)
    for src, dest in COPIES:
        shutil.copytree(source / src, root / dest, ignore=shutil.ignore_patterns("__pycache__"))
    for module in sorted((source / TOP_LEVEL[0]).glob("*.py")):
        shutil.copy2(module, root / TOP_LEVEL[1] / module.name)
    python = root / IMAGE_PYTHON.lstrip("/")
    python.parent.mkdir(parents=True, exist_ok=True)
    python.write_text(_WRAPPER.format(python=sys.executable, image_python=IMAGE_PYTHON,
                                      src=str(root / "opt/podserve/src"), preload=preload))
    python.chmod(0o755)
    return python


def job_lines(lines: list[str], python: Path) -> list[str]:
    """Return a job's script lines calling `python` (lay_out's) where they name the image's interpreter."""
    return [line.replace(IMAGE_PYTHON + " ", f"{python} ") for line in lines]
