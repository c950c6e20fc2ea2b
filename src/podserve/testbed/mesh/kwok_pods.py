"""Server processes that play the containers of kwok's pods, so that a control plane without a real node serves.

    player = PodPlayer(api_client, namespace, "service=x", work, env_for).start()
    SliceFeed(api_client, config, eds, address_of=player.address_of)     # Envoy reaches the processes
    PodTargetFeed(api_client, path, [namespace], address_of=player.address_of)   # Prometheus scrapes them

kwok (simulated: the kubelet) marks a pod Running and Ready and gives it an address from its CIDR that nothing
listens on. For every such pod the player starts our server (`python -m podserve.runtime`) on a free loopback port,
with the pod's own container environment (as rendered and applied) and what `env_for(pod)` adds (the model file
here, a test's switches for the pod's image); the pod's address then stands for that process (`address_of`), once
it answers its readiness path, until the pod is deleted or terminating, when the process is stopped. Polled.
"""

from __future__ import annotations

import sys
import threading
import urllib.request
from pathlib import Path
from typing import Callable

from podserve.testbed.polling import Poller
from podserve.testbed.processes import Program, free_port

#: The container port a pod serves on (render's): the address an EndpointSlice names is the pod's IP and this port.
READY_PATH = "/api/ping"


class Played:
    """One pod's process: its name, uid, labels, loopback port and whether it answers ready."""

    def __init__(self, pod: dict, env: dict[str, str], log_dir: Path, repo: Path):
        meta = pod["metadata"]
        self.name, self.uid, self.labels = meta["name"], meta["uid"], dict(meta.get("labels") or {})
        self.address = (pod.get("status") or {}).get("podIP")
        self.port = free_port()
        self.ready = False
        self.program = Program(self.name, [sys.executable, "-m", "podserve.runtime"], log_dir / f"{self.name}.log",
                               env=dict(env, PODSERVE_HOST="127.0.0.1", PODSERVE_PORT=str(self.port)), cwd=repo)

    def probe(self) -> bool:
        if not self.ready:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{READY_PATH}", timeout=1) as reply:
                    self.ready = reply.status == 200
            except OSError:
                self.ready = False
        return self.ready


class PodPlayer(Poller):
    """Keeps one server process per Running, Ready, non-terminating kwok pod of `selector` in `namespace`."""

    def __init__(self, api_client, namespace: str, selector: str, work: Path,
                 env_for: Callable[[dict], dict[str, str]], repo: Path, every: float = 0.3):
        from kubernetes import client

        self.core, self.api_client = client.CoreV1Api(api_client), api_client
        self.namespace, self.selector, self.work, self.env_for, self.repo = namespace, selector, Path(work), env_for, \
            Path(repo)
        super().__init__(every, "pod-player")
        self.playing: dict[str, Played] = {}  # by pod uid
        self._lock = threading.Lock()

    def address_of(self, address: str) -> tuple[str, int] | None:
        """The loopback (host, port) of the ready process that plays the pod at `address` (None: none yet)."""
        with self._lock:
            played = next((p for p in self.playing.values() if p.address == address), None)
        return ("127.0.0.1", played.port) if played is not None and played.probe() else None

    def by_port(self) -> dict[int, Played]:
        with self._lock:
            return {p.port: p for p in self.playing.values()}

    def sync(self) -> None:
        pods = [self.api_client.sanitize_for_serialization(p)
                for p in self.core.list_namespaced_pod(self.namespace, label_selector=self.selector).items]
        wanted = {p["metadata"]["uid"]: p for p in pods if _serving(p)}
        with self._lock:
            gone = [uid for uid in self.playing if uid not in wanted]
            stopped = [self.playing.pop(uid) for uid in gone]
        for played in stopped:
            played.program.stop(timeout=5)
        for uid, pod in wanted.items():
            if uid not in self.playing:
                container = pod["spec"]["containers"][0]
                env = {e["name"]: e["value"] for e in container.get("env") or [] if "value" in e}
                played = Played(pod, dict(env, **self.env_for(pod)), self.work, self.repo)
                with self._lock:
                    self.playing[uid] = played

    def prepare(self) -> None:
        self.work.mkdir(parents=True, exist_ok=True)

    def stop(self) -> None:
        super().stop()
        with self._lock:
            playing, self.playing = list(self.playing.values()), {}
        for played in playing:
            played.program.stop(timeout=5)


def _serving(pod: dict) -> bool:
    status = pod.get("status") or {}
    ready = any(c.get("type") == "Ready" and c.get("status") == "True" for c in status.get("conditions") or [])
    return status.get("phase") == "Running" and bool(status.get("podIP")) and ready and \
        not pod["metadata"].get("deletionTimestamp")
