"""Build isolation (issue 68, It must show 5), on the real BuildKit daemon of the image testbed.

Real: buildkitd v0.29.0 (rootless, in the runner's user, mount and PID namespaces; its OCI worker with Debian's runc)
started by upstream's buildctl-daemonless.sh with the BUILDKITD_FLAGS of CI's build jobs, the local registry with the
stand-in bases. What it shows: a RUN step runs in BuildKit's process sandbox (its own PID namespace: it sees none of
the job's processes, buildkitd's included, nor the job's registry credential through /proc); and BuildKit pulls a base
by the digest the Dockerfile pins, refusing the stand-in pushed under the same tag (so what the tag points at cannot
replace it). The real images' digests themselves cannot be checked here: no registry is reachable (docs/image.md)."""

from __future__ import annotations

import json
import re
import subprocess
import time

import pytest

from ci_pipeline import REPO
from podserve.testbed.image import bases, ci_jobs, runner
from podserve.testbed.processes import poll_until

#: The step's two findings are the only files exported: BuildKit's local exporter can deadlock sending a whole root
#: filesystem to the client (moby/buildkit#2950, open; a fresh clone's run hung 600 s in it, buildctl and buildkitd
#: both waiting).
PROBE = """FROM {base} AS probe
RUN ls /proc | grep -E '^[0-9]+$' | while read pid; do printf '%s %s\\n' "$pid" "$(tr '\\0' ' ' < /proc/$pid/cmdline)"; \\
    done > /processes.txt; cat /proc/*/environ 2>/dev/null | tr '\\0' '\\n' | grep -c BUILD_AUTH_CONFIG > /seen.txt \\
    || true; cat /processes.txt /seen.txt
FROM scratch
COPY --from=probe /processes.txt /seen.txt /
"""


def _build(build_stage, tmp_path, dockerfile: str, flags: str):
    """Run CI's build job's BuildKit (its BUILDKITD_FLAGS as given) on `dockerfile`, exporting the result locally."""
    context = tmp_path / "context"
    context.mkdir(mode=0o755)
    (context / "Dockerfile").write_text(dockerfile)
    home = tmp_path / "home"
    (home / ".docker").mkdir(parents=True)
    (home / ".docker" / "config.json").write_text(build_stage.auth_config.read_text())
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin", "HOME": str(home), "BUILDKITD_FLAGS": flags,
           "BUILD_AUTH_CONFIG": str(build_stage.auth_config)}
    line = ("buildctl-daemonless.sh build --frontend dockerfile.v0 --local context=. --local dockerfile=. "
            "--progress plain --output type=local,dest=out")
    return runner.run_job([line], env, context, tmp_path / "jobs", build_stage.registry.host, 600), context / "out"


def test_a_run_step_sees_only_its_own_processes_with_ci_s_flags(build_stage, tmp_path):
    flags = ci_jobs.resolved("service-image")["variables"]["BUILDKITD_FLAGS"]
    assert "no-process-sandbox" not in flags
    (python,) = [image for image in bases.base_images() if image.startswith("python:")]
    base = f"{python.split('@')[0]}@{build_stage.stand_ins[python]}"
    done, out = _build(build_stage, tmp_path, PROBE.format(base=base), flags)
    assert done.returncode == 0, done.stderr[-3000:]
    processes = (out / "processes.txt").read_text().splitlines()
    assert processes and all(not re.search(r"buildkitd|buildctl|rootlesskit|containerd", p) for p in processes), \
        processes
    assert min(int(p.split()[0]) for p in processes) == 1  # PID 1 is the step's own shell: a PID namespace of its own
    assert (out / "seen.txt").read_text().strip() == "0"


def test_without_the_sandbox_a_run_step_would_see_the_job_s_processes(build_stage, tmp_path):
    """What the flag CI used to pass (--oci-worker-no-process-sandbox) allowed: the same step sees buildkitd."""
    (python,) = [image for image in bases.base_images() if image.startswith("python:")]
    base = f"{python.split('@')[0]}@{build_stage.stand_ins[python]}"
    done, out = _build(build_stage, tmp_path, PROBE.format(base=base), "--oci-worker-no-process-sandbox")
    assert done.returncode == 0, done.stderr[-3000:]
    assert any("buildkitd" in p for p in (out / "processes.txt").read_text().splitlines())


def test_buildkit_pulls_the_base_by_the_pinned_digest_not_by_the_tag(build_stage, tmp_path):
    """The Dockerfile as committed pins the real image's digest; the registry serves only the stand-in under that tag:
    BuildKit asks for the digest and fails naming it, where a tag-only FROM would have taken whatever the tag holds."""
    (python,) = [image for image in bases.base_images() if image.startswith("python:")]
    assert python in (REPO / "Dockerfile").read_text()
    done, _ = _build(build_stage, tmp_path, f"FROM {python}\nRUN true\n", "")
    assert done.returncode != 0
    assert python.split("@")[1] in done.stderr and re.search(r"not found|failed to resolve", done.stderr), \
        done.stderr[-2000:]
    standin = bases.pin_stand_ins(f"FROM {python}\n", build_stage.stand_ins)
    assert standin == f"FROM {python.split('@')[0]}@{build_stage.stand_ins[python]}\n"
    assert json.dumps(build_stage.stand_ins)  # the testbed's own, the only digests it can vouch for


def test_a_job_killed_at_its_timeout_leaves_none_of_its_processes(tmp_path):
    """A job past its timeout is killed whole, not only its unshare: a hung BuildKit export once left buildkitd and
    buildctl running for half an hour after its test had failed."""
    name = f"hung-job-{time.monotonic_ns()}"  # what the job's processes are called (argv[0]), to find any left
    (tmp_path / "context").mkdir()
    with pytest.raises(subprocess.TimeoutExpired):
        runner.run_job([f"exec -a {name} sleep 300 & exec -a {name} sleep 301"], {"PATH": "/usr/bin:/bin"},
                       tmp_path / "context", tmp_path / "jobs", "127.0.0.1:1", 2)
    poll_until(lambda: not subprocess.run(["pgrep", "-f", name], capture_output=True, text=True).stdout.split(),
               f"every process of the killed job ({name}) gone", 5)
