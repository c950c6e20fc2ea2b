"""Run a CI build job's script lines as GitLab's runner does in CI's `moby/buildkit:<v>-rootless` image.

    done = run_job(lines, env, cwd, workdir, registry_host, timeout=900)

The lines run with `bash -eo pipefail` (as the runner runs a job) in namespaces of their own, made
here as rootlesskit makes them for the rootless image: a user namespace (uids 0-65535 mapped,
so buildkitd runs as the mapped root in rootless mode), a mount namespace (buildkitd's state,
socket and config are private to the job) and a PID namespace (when the job ends or its caller
dies, every process it started dies with it) with a fresh, unmasked /proc: what a runner tagged
podserve-buildkit gives the job, so that rootless runc can give each RUN step a PID namespace and
/proc of its own (BuildKit's process sandbox; CI passes no --oci-worker-no-process-sandbox). The
network is the host's: the registry and the wheel index are on its loopback.

`buildctl-daemonless.sh` (upstream's script) then starts buildkitd for the job's one build as it does
in CI; buildkitd reads /etc/buildkit/buildkitd.toml, written here: docker.io's mirror is the local
registry (where the stand-in base images are), reached over plain HTTP on loopback.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

from podserve.testbed.image import versions

#: uids and gids 0-65535 of the namespace are the host's same ids (files keep their owners on disk).
ID_MAP = "0 0 65536\n"
#: Inside the namespaces, before the job's lines: private /run, /etc/buildkit and /var/lib/buildkit.
SETUP = r"""
read _; exec </dev/null
set -e
mount -t proc proc /proc
mount -t tmpfs tmpfs /run
mount -t overlay overlay -o "lowerdir=/etc,upperdir=$RUNNER_DIR/etc,workdir=$RUNNER_DIR/etc-work" /etc
mkdir -p /etc/buildkit && cp "$RUNNER_DIR/buildkitd.toml" /etc/buildkit/buildkitd.toml
mount -t overlay overlay -o "lowerdir=/var/lib,upperdir=$RUNNER_DIR/var-lib,workdir=$RUNNER_DIR/var-lib-work" /var/lib
mkdir -p /var/lib/buildkit && mount --bind "$RUNNER_DIR/buildkit" /var/lib/buildkit
cd "$CI_PROJECT_DIR"
script=$RUNNER_SCRIPT; unset RUNNER_SCRIPT RUNNER_DIR
exec bash -eo pipefail -c "$script"
"""


class RunnerError(RuntimeError):
    """The job's namespaces could not be made; the message says what is missing."""


def buildkitd_toml(registry_host: str) -> str:
    """buildkitd's config for a job: the OCI worker (runc), docker.io mirrored by the local registry over HTTP."""
    return (f'# Written for one CI job by podserve.testbed.image.runner.\n'
            f'[worker.oci]\n  enabled = true\n[worker.containerd]\n  enabled = false\n'
            f'[registry."docker.io"]\n  mirrors = ["{registry_host}"]\n'
            f'[registry."{registry_host}"]\n  http = true\n')


def _die_with_parent() -> None:
    """In the child before exec: SIGKILL when the process that started the job dies (PR_SET_PDEATHSIG)."""
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)


def run_job(lines: list[str], env: dict[str, str], cwd: Path, workdir: Path, registry_host: str,
            timeout: float) -> subprocess.CompletedProcess:
    """Run `lines` in cwd with exactly `env` (plus BuildKit on PATH) in the job's namespaces; return what it did."""
    kit = versions.buildkit_dir()
    if not (kit / versions.DAEMONLESS_SCRIPT).is_file():
        raise RunnerError(f"{kit} lacks BuildKit: run `make image-tools` (make test and make image do it)")
    runner = workdir / f"job-{time.monotonic_ns()}"
    for name in ("etc", "etc-work", "var-lib", "var-lib-work", "buildkit"):
        (runner / name).mkdir(parents=True)
    (runner / "buildkitd.toml").write_text(buildkitd_toml(registry_host))
    job_env = {**env, "PATH": f"{kit}:{env.get('PATH', '/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin')}",
               "CI_PROJECT_DIR": str(cwd), "RUNNER_DIR": str(runner), "RUNNER_SCRIPT": "\n".join(lines)}
    read_end, write_end = os.pipe()
    process = subprocess.Popen(["unshare", "--user", "--mount", "--pid", "--fork", "--kill-child", "sh", "-c", SETUP],
                               env=job_env, cwd=cwd, stdin=read_end,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               preexec_fn=_die_with_parent, start_new_session=True)
    os.close(read_end)
    try:
        _map_ids(process.pid)
        os.write(write_end, b"go\n")
        os.close(write_end)
        write_end = -1
        stdout, stderr = process.communicate(timeout=timeout)
    except BaseException:
        # The whole job, not only unshare: a job killed at its timeout once left buildkitd and buildctl running for
        # half an hour (unshare's --kill-child did not reach them); they keep the job's session.
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        process.communicate(timeout=30)
        raise
    finally:
        if write_end >= 0:
            os.close(write_end)
        shutil.rmtree(runner, ignore_errors=True)
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)


def _map_ids(pid: int, timeout: float = 10) -> None:
    """Once `pid` is in its new user namespace, map uids and gids 0-65535 to the host's (as root may)."""
    mine = os.readlink("/proc/self/ns/user")
    deadline = time.monotonic() + timeout
    while os.readlink(f"/proc/{pid}/ns/user") == mine:
        if time.monotonic() > deadline:
            raise RunnerError(f"unshare (pid {pid}) made no user namespace within {timeout:.0f}s")
        time.sleep(0.01)
    for name in ("uid_map", "gid_map"):
        Path(f"/proc/{pid}/{name}").write_text(ID_MAP)
