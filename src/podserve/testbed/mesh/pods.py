"""Our server processes as a stage's pods, and the kubelet's part for them (simulated kubelet).

A `Pod` is `python -m podserve.runtime` with the rendered Deployment's environment, in the mesh's pod network
(podnetwork.py) on its own address and the container's port (8080), as in production. A `Prober` probes its readiness
path with the rendered probe's period, timeout and failure threshold (success threshold 1), as the kubelet does, and
reports each change (the mesh writes it to the Pod's status: pod_status); a pod whose process died is restarted on
the same address, as the kubelet restarts a container (without its back-off). `pod_object` is the Pod the mesh
creates in the control plane for each: the Deployment's pod template, which the scheduler places.
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

from podserve.testbed.processes import Program

#: On each Pod the mesh runs as a process: kwok's stages leave such a pod to the mesh (cluster/kwok-stages.yaml).
PROCESS_ANNOTATION = "podserve.io/process"


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
    """One server process of one stage of one service, at its own address in the pod network."""

    def __init__(self, name: str, cluster: str, env: dict[str, str], log_dir: Path, repo: Path, address: str,
                 port: int, inside: Callable[[list], list] = lambda argv: argv):
        self.name, self.cluster = name, cluster
        self.address, self.port, self.inside = address, port, inside
        self.env = dict(env, PODSERVE_HOST=address, PODSERVE_PORT=str(port), PODSERVE_REQUIRE_GPU="0")
        self.log_dir, self.repo = Path(log_dir), Path(repo)
        self.ready = False
        self.terminating = False
        self.restarts = 0
        self.started_at = time.time()
        self.program = self._start()

    def _start(self) -> Program:
        return Program(self.name, self.inside([sys.executable, "-m", "podserve.runtime"]),
                       self.log_dir / f"{self.name}.{self.restarts}.log", env=self.env, cwd=self.repo)

    @property
    def pid(self) -> int:
        return self.program.pid

    def url(self, path: str) -> str:
        return f"http://{self.address}:{self.port}{path}"

    def restart(self) -> None:
        """Start the process again on the same address (the kubelet restarting a dead container)."""
        self.restarts += 1
        self.started_at = time.time()
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


#: What a mesh pod's containers request of a node: almost nothing. Their processes run on this machine, not in the
#: node's capacity, and the session's other tests schedule on the same kwok nodes (a service asking a whole node
#: must still fit there). Limits stay as rendered (the platform's admission policies require them).
TOKEN_REQUESTS = {"cpu": "1m", "memory": "1Mi"}


def pod_object(pod: Pod, template: dict, namespace: str, labels: dict) -> dict:
    """The Pod object of `pod`: the Deployment's (Rollout's) pod template (spec: the scheduler places it) with the
    pod's `labels` (a Rollout's stable pods also carry what Argo stamps: rollout.stable_pod_labels), marked as a
    process, its containers requesting TOKEN_REQUESTS."""
    spec = dict(template["spec"], containers=[
        dict(c, resources=dict(c.get("resources") or {}, requests=dict(TOKEN_REQUESTS)))
        for c in template["spec"]["containers"]])
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": pod.name, "namespace": namespace, "labels": dict(labels),
                         "annotations": {PROCESS_ANNOTATION: "true"}},
            "spec": spec}


def _timestamp(seconds: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds))


def pod_status(pod: Pod, container: str) -> dict:
    """The status a kubelet reports for `pod` now: Running at its address, Ready as its probe last said."""
    started = _timestamp(pod.started_at)
    ready = "True" if pod.ready else "False"
    return {"status": {
        "phase": "Running", "podIP": pod.address, "podIPs": [{"ip": pod.address}], "startTime": started,
        "conditions": [{"type": kind, "status": status, "lastTransitionTime": started}
                       for kind, status in (("PodScheduled", "True"), ("Initialized", "True"),
                                            ("ContainersReady", ready), ("Ready", ready))],
        "containerStatuses": [{"name": container, "image": "local", "imageID": "", "ready": pod.ready,
                               "restartCount": pod.restarts, "started": True,
                               "state": {"running": {"startedAt": started}}}]}}
