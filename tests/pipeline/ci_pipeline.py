"""Read .gitlab-ci.yml as GitLab does (extends merged), and parse a tool's command line with its real argparse, dry."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

from podserve.testbed.image import tooling
from podserve.testbed.image.ci_jobs import PREDEFINED, concrete_jobs, expand, resolved, script_lines, variables
from podserve.tooling import platform_rules

__all__ = ["EXEC", "PYTHON", "REPO", "TOOL", "concrete_jobs", "dry_parse", "is_tool_line", "expand",
           "make_manifests_artifact", "repo_tooling_python", "resolved", "run_job_lines", "script_lines", "tool_argv",
           "variables"]
from podserve.testbed.image.versions import REPO



_IMAGE: list[Path] = []  # the tooling image laid out from this tree, once per session


def repo_tooling_python() -> Path:
    """This tree's tooling image, laid out (podserve.testbed.image.tooling): the interpreter the job lines name."""
    if not _IMAGE:
        _IMAGE.append(tooling.lay_out(REPO, Path(tempfile.mkdtemp(prefix="tooling-image-")) / "root"))
    return _IMAGE[0]


def run_job_lines(lines: list[str], job: dict, cwd: Path, env: dict[str, str] | None = None,
                  timeout: float = 120, python: Path | None = None) -> subprocess.CompletedProcess:
    """Run a job's script lines with bash -e in `cwd`, with the job's variables, as the runner does; `env` holds CI/CD
    variables (the job's own variables are expanded with them, KUBECONFIG: $KUBECONFIG_PREVIEW_HK say); the tooling
    image's interpreter is `python` (default: this tree's, repo_tooling_python)."""
    job_env = {**os.environ, **variables(job, {**PREDEFINED, **(env or {})}), "CI_PROJECT_DIR": str(cwd), **(env or {})}
    job_env.pop("PYTHONPATH", None)  # as on a runner: the tools find their code as the image does, never by it
    lines = tooling.job_lines(lines, python or repo_tooling_python())
    return subprocess.run(["bash", "-euo", "pipefail", "-c", "\n".join(lines)], cwd=cwd, env=job_env,
                          capture_output=True, text=True, timeout=timeout)


#: How a job's last line hands the shell over to the tool, so the runner's SIGTERM reaches the tool itself.
EXEC = "exec "


#: How every job runs Python: the tooling image's own interpreter by its path, isolated (-I): no PYTHONPATH,
#: no job folder on the path (platform_rules.run_refusal refuses any other way in CI).
PYTHON = platform_rules.TOOLING_PYTHON
#: How a job's line runs a podserve tool.
TOOL = PYTHON + " -m podserve.tooling."


def is_tool_line(line: str) -> bool:
    """Whether the line runs a podserve tool (`/opt/venv/bin/python -I -m podserve.tooling.x ...`, or `exec` of one)."""
    return line.removeprefix(EXEC).startswith(TOOL)


def tool_argv(line: str, job: dict) -> tuple[str, list[str]]:
    """('podserve.tooling.x', argv) for a `[exec ]<PYTHON> -m podserve.tooling.x ...` line, variables expanded."""
    words = shlex.split(expand(line.removeprefix(EXEC).split(" > ")[0], variables(job)))
    assert words[:3] == [tooling.IMAGE_PYTHON, "-I", "-m"] and words[3].startswith("podserve.tooling."), line
    return words[3], words[4:]


_DRY_PARSE = textwrap.dedent("""
    import argparse, json, os, runpy, sys
    real = argparse.ArgumentParser.parse_args
    def parse_and_stop(self, args=None, namespace=None):
        parsed = real(self, args, namespace)   # the tool's own parser: exits 2 on a bad command line
        print("DRY-PARSED " + json.dumps(vars(parsed), default=str))
        sys.stdout.flush()
        os._exit(0)                            # stop before the tool does anything
    argparse.ArgumentParser.parse_args = parse_and_stop
    module, sys.argv = sys.argv[1], [sys.argv[1]] + sys.argv[2:]
    runpy.run_module(module, run_name="__main__", alter_sys=True)
    print("NO-ARGPARSE")
""")


def dry_parse(module: str, argv: list[str], cwd: Path = REPO, env: dict[str, str] | None = None) -> dict:
    """Parse `argv` with the module's real argparse parser and stop; return the namespace, or fail with why."""
    env = env if env is not None else {**os.environ, "PYTHONPATH": str(REPO / "src")}
    done = subprocess.run([sys.executable, "-c", _DRY_PARSE, module, *argv], cwd=cwd, capture_output=True, text=True,
                          timeout=60, env=env)
    marker = [line for line in done.stdout.splitlines() if line.startswith("DRY-PARSED ")]
    assert done.returncode == 0 and marker, (
        f"`python -m {module} {shlex.join(argv)}` is not a valid command line for the real {module} "
        f"(exit {done.returncode}):\n{done.stderr[-2000:]}{done.stdout[-500:]}")
    return json.loads(marker[0].removeprefix("DRY-PARSED "))


def make_manifests_artifact(work: Path, value_text: str) -> Path:
    """Run the `manifests` job's own script lines in `work` (holding only value.py); return `work` with its artifacts.

    The job runs in the tooling image, laid out from this tree (its conf/ and templates/ too).
    """
    work.mkdir(parents=True, exist_ok=True)
    (work / "value.py").write_text(value_text)
    job = resolved("manifests")
    done = run_job_lines(script_lines(job), job, work)
    assert done.returncode == 0, f"the manifests job's script failed:\n{done.stderr[-3000:]}"
    for path in job["artifacts"]["paths"]:
        assert (work / path).exists(), f"the manifests job did not make its artifact {path}"
    return work
