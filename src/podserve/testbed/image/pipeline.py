"""The pipeline's build stage for real on this machine: a registry, the wheel index, the stand-in bases, the jobs.

    with BuildStage.start(workdir, port=None, storage=None) as stage:   # port None: a free one
        checkout = stage.checkout(workdir / "checkout", value_text)     # the repo as CI checks it out
        stage.run_job("manifests", checkout); stage.run_job("service-image", checkout)

A checkout is a copy of the working tree's files (tracked and untracked, less what git ignores)
and of model/ (the model job's artifact), whose conf/regions.yaml sends each region's images to
the local registry (`<registry>/<region>`): the push targets still come from conf, as in CI.
Each job runs its own script lines from .gitlab-ci.yml with its variables expanded as GitLab does,
CI's predefined variables pointing at the local registry, REGISTRY_AUTH_CONFIG (and its protected twin) a
docker config.json written for this run, PIP_INDEX_URL the local index; the build jobs run in the
runner's namespaces (runner.py), the others in a plain shell, their `/opt/venv/bin/python -I` being the
tooling image laid out from the checkout (tooling.py: its conf/ is the checkout's test conf, as the
image built from that checkout would hold).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import yaml

from podserve.testbed.image import bases, ci_jobs, runner, tooling, wheels
from podserve.testbed.image.registry import Registry
from podserve.testbed.image.versions import REPO
from podserve.testbed.processes import free_port

#: The requirements whose wheels the index serves (the images' `pip install -r` files and what they include).
REQUIREMENTS = ("cpu.txt", "gpu.txt", "tooling.txt")
#: CI's team/project path in the registry (CI_REGISTRY_IMAGE's path).
PROJECT_PATH = "team/service"
BUILD_TIMEOUT = 1500


def release_variables(tag: str) -> dict[str, str]:
    """What GitLab gives the platform project's pipeline of a protected tag `tag`: tooling-image's rule matches it."""
    platform = ci_jobs.PIPELINE["variables"]["PLATFORM_PROJECT"]
    return {"CI_PROJECT_PATH": platform, "CI_COMMIT_TAG": tag, "CI_COMMIT_REF_PROTECTED": "true",
            "CI_COMMIT_BRANCH": ""}


class BuildStage:
    """The registry, the index and the stand-in bases; run_job() runs a job of .gitlab-ci.yml against them."""

    def __init__(self, workdir: Path, registry: Registry, index: wheels.Index, out):
        self.workdir, self.registry, self.index, self.out = workdir, registry, index, out
        self.auth_config = registry.docker_config(workdir / "secrets" / "registry-auth.json")
        #: {base image as the Dockerfiles pin it: its stand-in's digest here} (bases.pin_stand_ins).
        self.stand_ins: dict[str, str] = {}

    @classmethod
    def start(cls, workdir: Path, port: int | None = None, storage: Path | None = None, gpu: bool = True,
              index_port: int = 0, out=sys.stdout) -> "BuildStage":
        """Start the registry (storage kept where given), serve the wheels, push the stand-ins where missing.

        The index's URL is a build argument, so it is part of BuildKit's cache key for the pip steps: a
        stable index_port keeps them cached from run to run (taken only if free; 0: any free port).
        """
        workdir.mkdir(parents=True, exist_ok=True)
        started = time.monotonic()
        files = [REPO / "requirements" / name for name in REQUIREMENTS if gpu or name != "gpu.txt"]
        index = wheels.Index(wheels.download(files), index_port)
        try:
            registry = Registry.start(workdir / "registry", port or free_port(), storage)
        except BaseException:
            index.stop()
            raise
        stage = cls(workdir, registry, index, out)
        try:
            bases.push_stand_ins(registry, stage.build_in, out=out)
            stage.stand_ins = bases.stand_in_digests(registry)
        except BaseException:
            stage.stop()
            raise
        print(f"registry {registry.host} (htpasswd), wheel index {index.url}, stand-in bases ready "
              f"in {time.monotonic() - started:.0f}s", file=out, flush=True)
        return stage

    def stop(self) -> None:
        """Stop the registry and the index; delete every copy of the credentials (the jobs' homes hold one each)."""
        self.registry.stop()
        self.index.stop()
        for folder in ("secrets", "homes", "jobs"):
            shutil.rmtree(self.workdir / folder, ignore_errors=True)

    def __enter__(self) -> "BuildStage":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    # --- what a job sees -----------------------------------------------------------------------

    def predefined(self, checkout: Path, commit: str = ci_jobs.PREDEFINED["CI_COMMIT_SHORT_SHA"]) -> dict[str, str]:
        """GitLab's predefined variables for a pipeline of `checkout` whose project registry is the local one."""
        return {**ci_jobs.PREDEFINED, "CI_PROJECT_DIR": str(checkout), "CI_COMMIT_SHORT_SHA": commit,
                "CI_REGISTRY": self.registry.host, "CI_REGISTRY_IMAGE": f"{self.registry.host}/{PROJECT_PATH}"}

    def job_env(self, name: str, checkout: Path, commit: str = ci_jobs.PREDEFINED["CI_COMMIT_SHORT_SHA"],
                extra: dict[str, str] | None = None) -> dict:
        """The environment job `name` runs with: its variables, CI/CD variables (`extra`: more of them, a predefined
        one overridden), a HOME of its own."""
        job = ci_jobs.resolved(name)
        home = self.workdir / "homes" / f"{name}-{time.monotonic_ns()}"
        home.mkdir(parents=True)
        cicd = {"REGISTRY_AUTH_CONFIG": str(self.auth_config), "REGISTRY_AUTH_CONFIG_PROTECTED": str(self.auth_config),
                "PIP_INDEX_URL": self.index.url, **(extra or {})}
        return {"PATH": f"{Path(sys.executable).parent}:/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin",
                "HOME": str(home), "LANG": "C.UTF-8",
                **ci_jobs.variables(job, {**self.predefined(checkout, commit), **cicd}), **cicd}

    def run_job(self, name: str, checkout: Path, commit: str = ci_jobs.PREDEFINED["CI_COMMIT_SHORT_SHA"],
                timeout: float = BUILD_TIMEOUT, extra: dict[str, str] | None = None) -> subprocess.CompletedProcess:
        """Run job `name`'s script lines as written, in checkout; return what happened (stdout, stderr, code).
        `extra`: CI/CD variables the job sees besides the registry's (KUBECONFIG_PREVIEW_HK, ...)."""
        job = ci_jobs.resolved(name)
        lines, env = ci_jobs.script_lines(job), self.job_env(name, checkout, commit, extra)
        started = time.monotonic()
        image = job.get("image") or ""
        if "buildkit" in (image.get("name", "") if isinstance(image, dict) else image):
            done = runner.run_job(lines, env, checkout, self.workdir / "jobs", self.registry.host, timeout)
        else:  # in the tooling image: its interpreter, laid out from the checkout
            python = tooling.lay_out(checkout, self.workdir / "tooling" / checkout.name)
            done = subprocess.run(["bash", "-eo", "pipefail", "-c", "\n".join(tooling.job_lines(lines, python))],
                                  cwd=checkout, env=env, capture_output=True, text=True, timeout=timeout)
        print(f"job {name}: exit {done.returncode} in {time.monotonic() - started:.0f}s", file=self.out, flush=True)
        return done

    def build_in(self, context: Path, lines: list[str]) -> subprocess.CompletedProcess:
        """Run BuildKit lines in `context` with this stage's credentials (for the stand-in bases)."""
        home = self.workdir / "homes" / f"bases-{time.monotonic_ns()}"
        (home / ".docker").mkdir(parents=True)
        shutil.copyfile(self.auth_config, home / ".docker" / "config.json")
        env = {"PATH": "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin", "HOME": str(home)}
        return runner.run_job(lines, env, context, self.workdir / "jobs", self.registry.host, BUILD_TIMEOUT)

    # --- the checkout --------------------------------------------------------------------------

    def checkout(self, dest: Path, value_text: str | None = None, model: Path = REPO / "model",
                 as_committed: bool = False) -> Path:
        """Copy the working tree (what git does not ignore) and model/ to dest; regions' registries -> local; the
        Dockerfiles' base digests -> their stand-ins' (unless `as_committed`: then BuildKit asks for the real ones)."""
        listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                                capture_output=True, check=True, timeout=60).stdout.decode().split("\0")
        for relative in filter(None, listed):
            source = REPO / relative
            if source.is_file() and not relative.startswith("model/"):
                (dest / relative).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(source, dest / relative, follow_symlinks=False)
        shutil.copytree(model, dest / "model", dirs_exist_ok=True,
                        ignore=shutil.ignore_patterns("*.partial", ".*"))
        if value_text is not None:
            (dest / "value.py").write_text(value_text)
        regions_file = dest / "conf" / "regions.yaml"
        regions = yaml.safe_load(regions_file.read_text())
        for region, body in regions.items():
            body["registry"] = f"{self.registry.host}/{region}"
        regions_file.write_text("# The regions' registries are the local one (podserve.testbed.image.pipeline).\n"
                                + yaml.safe_dump(regions, sort_keys=False))
        for dockerfile in ("Dockerfile", "Dockerfile.tooling"):
            if not as_committed and (dest / dockerfile).is_file():
                (dest / dockerfile).write_text(bases.pin_stand_ins((dest / dockerfile).read_text(), self.stand_ins))
        os.chmod(dest, 0o755)
        return dest


def flavored_value(text: str, flavor: str) -> str:
    """value.py's text with gpu_num (and, for the CPU, gpu_memory) set for `flavor` ("cpu" or "gpu")."""
    settings = {"gpu_num": "1"} if flavor == "gpu" else {"gpu_num": "0", "gpu_memory": "0"}
    for name, value in settings.items():
        text, count = re.subn(rf"^{name}\s*=\s*[^#\n]*?(\s*(#.*)?)$", rf"{name} = {value}\1", text, flags=re.MULTILINE)
        if count != 1:
            raise ValueError(f"value.py sets {name} {count} times at the start of a line; expected once")
    return text


#: A Dockerfile step in BuildKit's plain progress output: "#7 [build 2/3] RUN ...".
STEP = re.compile(r"^#(\d+) \[(?:[\w-]+ )?\d+/\d+\] (.*)$", re.MULTILINE)


def built_steps(build_log: str) -> dict[str, bool]:
    """{instruction: taken from the cache} for each Dockerfile step of a BuildKit plain-progress log (FROM left out)."""
    cached = set(re.findall(r"^#(\d+) CACHED$", build_log, re.MULTILINE))
    return {text: number in cached for number, text in STEP.findall(build_log) if not text.startswith("FROM ")}


def cache_use(build_log: str) -> tuple[int, int]:
    """(cached, total) Dockerfile steps of a BuildKit plain-progress log (FROM lines are not steps)."""
    steps = built_steps(build_log)
    return sum(steps.values()), len(steps)
