"""A fresh copy of the repository, as a newcomer's clone: its tracked files in a new git repository, its own venv.

The copy's `.venv` is a real virtualenv whose site-packages also sees this checkout's `.venv` (a .pth line), so
the Makefile's pip steps run as written, resolve every pinned requirement and download only what this checkout
lacks (a team's new package from requirements/service.txt) into the copy's own venv, never into this one.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

import requests

REPO = Path(__file__).resolve().parent.parent
GIT_USER = ["-c", "user.name=newcomer", "-c", "user.email=newcomer@example.com"]


def fresh_copy(dest: Path) -> Path:
    """Copy the tracked files (as they are in the working tree) to `dest`, commit them there; return `dest`."""
    listed = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True, timeout=60)
    for name in listed.stdout.decode().split("\0"):
        source = REPO / name
        if name and source.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, dest / name)
    for command in (["init", "-q"], ["add", "-A"], [*GIT_USER, "commit", "-q", "-m", "fresh clone"]):
        subprocess.run(["git", *command], cwd=dest, check=True, timeout=60, capture_output=True)
    subprocess.run([sys.executable, "-m", "venv", str(dest / ".venv")], check=True, timeout=120)
    site = Path(sysconfig.get_paths(vars={"base": str(dest / ".venv"), "platbase": str(dest / ".venv")})["purelib"])
    (site / "checkout-venv.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return dest


def changed_paths(copy: Path) -> set[str]:
    """Every path `git status` shows as changed or new in the copy (ignored files are not shown)."""
    done = subprocess.run(["git", "status", "--porcelain", "--untracked-files=all"], cwd=copy, capture_output=True,
                          text=True, check=True, timeout=60)
    return {line[3:] for line in done.stdout.splitlines()}


def copy_env(**extra: str) -> dict[str, str]:
    """The environment a newcomer's shell has: no PYTHONPATH or virtualenv of this checkout's."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "MAKEFLAGS", "MFLAGS")}
    return {**env, **extra}


def run(command: str, copy: Path, timeout: float = 300, **env: str) -> subprocess.CompletedProcess:
    """Run one shell command line in the copy, as typed; fail the test with its output when it fails."""
    done = subprocess.run(["bash", "-c", command], cwd=copy, env=copy_env(**env), capture_output=True, text=True,
                          timeout=timeout)
    assert done.returncode == 0, f"`{command}` exited {done.returncode}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done


class Background:
    """A long-running command line (make serve, make kafka) started in its own process group; `stop` is Ctrl-C."""

    def __init__(self, command: str, copy: Path, log: Path, **env: str):
        self.command, self.log_path = command, log
        self._log = open(log, "wb")
        self.process = subprocess.Popen(["bash", "-c", command], cwd=copy, env=copy_env(**env), stdout=self._log,
                                        stderr=subprocess.STDOUT, start_new_session=True)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_until(self, ready, timeout: float) -> None:
        """Poll `ready()` until it is true; fail naming the command and its log if it exits or times out first."""
        deadline = time.monotonic() + timeout
        while not ready():
            assert self.process.poll() is None, f"`{self.command}` exited {self.process.returncode}:\n{self.log()}"
            assert time.monotonic() < deadline, f"`{self.command}` not ready in {timeout:.0f}s:\n{self.log()[-3000:]}"
            time.sleep(0.2)

    def stop(self, timeout: float = 60) -> int:
        """Ctrl-C the whole group (make and what it started), as a person would; return the exit status."""
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGINT)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(10)
        self._log.close()
        return self.process.returncode


def answers_ping(port: int) -> bool:
    """True once a server on 127.0.0.1:port answers /api/ping with 200 (ready)."""
    try:
        return requests.get(f"http://127.0.0.1:{port}/api/ping", timeout=1).status_code == 200
    except requests.ConnectionError:
        return False
