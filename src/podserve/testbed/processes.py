"""Start, wait for and stop the local programs a stand-in is made of (loopback only)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path


class StartError(RuntimeError):
    """A local program did not start; the message names it and quotes the end of its log."""


def built(path: Path, what: str, make_target: str) -> Path:
    """`path`, a file `make <make_target>` puts there; StartError naming `what`, the path and the target if absent."""
    if not path.is_file():
        raise StartError(f"{what}: {path} is missing; build it with `make {make_target}` (make test does it first)")
    return path


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    """True when something accepts TCP connections on host:port."""
    with socket.socket() as sock:
        sock.settimeout(0.2)
        return sock.connect_ex((host, port)) == 0


def poll_until(check: Callable[[], object], what: str, timeout: float, every: float = 0.1):
    """Call `check` until it returns something truthy and return that; raise TimeoutError naming `what`.

    The last call is made once the deadline has passed: a caller starved of the CPU through its sleep still looks
    once more before it gives up.
    """
    deadline = time.monotonic() + timeout
    while True:
        last = check()
        if last:
            return last
        if time.monotonic() >= deadline:
            raise TimeoutError(f"{what}: not within {timeout:.0f}s (last seen: {last!r})")
        time.sleep(every)


class Program:
    """One child process with its log in a file; `stop()` sends SIGTERM, then SIGKILL."""

    def __init__(self, name: str, argv: Sequence[str], log_path: Path, *, env: dict[str, str] | None = None,
                 cwd: Path | None = None):
        self.name = name
        self.argv = [str(a) for a in argv]
        self.log_path = Path(log_path)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(self.log_path, "ab")
        self.process = subprocess.Popen(self.argv, stdout=self._log, stderr=subprocess.STDOUT, env=env, cwd=cwd,
                                        start_new_session=True)

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.poll() is None

    def log_tail(self, lines: int = 20) -> str:
        self._log.flush()
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return ""

    def check_alive(self) -> None:
        """Raise StartError naming this program, its exit code and its log's end, if it has exited."""
        if not self.alive():
            raise StartError(f"{self.name} exited with {self.process.returncode}; its log ({self.log_path}) ends:\n"
                             f"{self.log_tail()}")

    def wait_until(self, ready: Callable[[], bool], timeout: float, what: str) -> None:
        """Poll `ready` until it is true; raise StartError naming this program if it dies or times out."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.alive():
                raise StartError(f"{self.name} exited with {self.process.returncode} before {what}; "
                                 f"its log ({self.log_path}) ends:\n{self.log_tail()}")
            try:
                if ready():
                    return
            except Exception:  # noqa: BLE001 - not ready yet, whatever the reason
                pass
            time.sleep(0.1)
        raise StartError(f"{self.name} did not reach '{what}' within {timeout:.0f}s; "
                         f"its log ({self.log_path}) ends:\n{self.log_tail()}")

    def signal(self, signum: int) -> None:
        if self.alive():
            os.killpg(self.process.pid, signum)

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM the program's process group, SIGKILL it after `timeout`; return its exit code."""
        if self.alive():
            self.signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.signal(signal.SIGKILL)
                self.process.wait(5)
        self._log.close()
        return self.process.returncode
