"""Our server processes as a stage's pods, and the kubelet's readiness probe of each (simulated kubelet).

A `Pod` is `python -m podserve.runtime` with the rendered Deployment's environment, bound
to a free loopback port (what `make serve` runs). A `Prober` probes its readiness path
with the rendered probe's period, timeout and failure threshold (success threshold 1),
as the kubelet does, and reports each change; a pod whose process died is restarted on
the same port, as the kubelet restarts a container (without its back-off).
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from podserve.testbed.processes import Program, free_port


@dataclass(frozen=True)
class Probe:
    """The rendered readiness probe: path, period, timeout, failure threshold."""

    path: str
    period_s: float
    timeout_s: float
    failure_threshold: int

    @classmethod
    def from_container(cls, container: dict) -> "Probe":
        probe = container["readinessProbe"]
        return cls(probe["httpGet"]["path"], probe["periodSeconds"], probe["timeoutSeconds"],
                   probe["failureThreshold"])


class Pod:
    """One server process of one stage of one service."""

    def __init__(self, name: str, cluster: str, env: dict[str, str], log_dir: Path, repo: Path):
        self.name, self.cluster = name, cluster
        self.port = free_port()
        self.env = dict(env, PODSERVE_HOST="127.0.0.1", PODSERVE_PORT=str(self.port), PODSERVE_REQUIRE_GPU="0")
        self.log_dir, self.repo = Path(log_dir), Path(repo)
        self.ready = False
        self.terminating = False
        self.restarts = 0
        self.program = self._start()

    def _start(self) -> Program:
        return Program(self.name, [sys.executable, "-m", "podserve.runtime"],
                       self.log_dir / f"{self.name}.{self.restarts}.log", env=self.env, cwd=self.repo)

    @property
    def pid(self) -> int:
        return self.program.pid

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def restart(self) -> None:
        """Start the process again on the same port (the kubelet restarting a dead container)."""
        self.restarts += 1
        self.program = self._start()

    def kill(self) -> None:
        """SIGKILL the process, as the OOM killer or a node failure would."""
        self.program.signal(signal.SIGKILL)
        self.program.process.wait(10)

    def terminate(self, grace_s: float) -> int | None:
        """SIGTERM, SIGKILL after `grace_s` (terminationGracePeriodSeconds); return the exit code."""
        return self.program.stop(timeout=grace_s)


class Prober:
    """Probe every pod of a mesh with its readiness probe; call `on_change(pod)` when readiness flips."""

    def __init__(self, probe: Probe, on_change: Callable[[Pod], None], restart_dead: bool = True):
        self.probe, self.on_change, self.restart_dead = probe, on_change, restart_dead
        self.pods: list[Pod] = []
        self._failures: dict[str, int] = {}
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()

    def watch(self, pod: Pod) -> None:
        """Start probing `pod` now, each in its own thread, every period."""
        with self._lock:
            self.pods.append(pod)
        thread = threading.Thread(target=self._loop, args=(pod,), name=f"probe-{pod.name}", daemon=True)
        thread.start()
        self._threads.append(thread)

    def forget(self, pod: Pod) -> None:
        with self._lock:
            if pod in self.pods:
                self.pods.remove(pod)

    def _loop(self, pod: Pod) -> None:
        while not self._stop.is_set() and pod in self.pods:
            started = time.monotonic()
            if not pod.program.alive() and self.restart_dead and not pod.terminating:
                pod.restart()
            ok = self._probe_once(pod)
            if ok:
                self._failures[pod.name] = 0
                if not pod.ready:
                    pod.ready = True
                    self.on_change(pod)
            else:
                self._failures[pod.name] = self._failures.get(pod.name, 0) + 1
                if pod.ready and self._failures[pod.name] >= self.probe.failure_threshold:
                    pod.ready = False
                    self.on_change(pod)
            self._stop.wait(max(0.0, self.probe.period_s - (time.monotonic() - started)))

    def _probe_once(self, pod: Pod) -> bool:
        try:
            with urllib.request.urlopen(pod.url(self.probe.path), timeout=self.probe.timeout_s) as reply:
                return 200 <= reply.status < 400
        except Exception:  # noqa: BLE001 - any failure to answer 2xx/3xx in time is a failed probe
            return False

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=self.probe.timeout_s + 1)


def python_path(*extra: Path) -> str:
    """Return PYTHONPATH for a pod: the repository's src/ and any extra folders (test handlers)."""
    parts = [str(p) for p in extra] + [os.environ.get("PYTHONPATH", "")]
    return os.pathsep.join(p for p in parts if p)
