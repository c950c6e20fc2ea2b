"""Real servers started as `make serve` starts them, labelled as their pods would be, and traffic to watch.

`start_pods` renders value.py's manifests for the chosen stages, starts one real server process
(`python -m podserve.runtime` with the Deployment's PODSERVE_* settings) per "pod" on a free
loopback port, and gives each the scrape labels its PodMonitor would (see `prometheus`).
What is simulated: the pods themselves (local processes, CPU only, no mesh) and the cluster
label (each region's Prometheus adds it as an external label; here it is a target label).
`send_traffic` sends a bounded mix of good, bad (400), overloading (503) and deadline-missing
(504) requests.
"""

from __future__ import annotations

import collections
import dataclasses
import itertools
import os
import sys
import threading
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import requests

from podserve.testbed.processes import Program, free_port
from podserve.testbed.prometheus import ScrapeTarget, pod_monitor_labels
from podserve.tooling.conf import load_observability
from podserve.tooling.render import render
from podserve.tooling.rollout import workload_of

REPO = Path(__file__).resolve().parents[3]
IMAGE = REPO / "examples" / "text-line.png"
#: Small queues and batches, so that a burst from a few dozen clients overflows them (503).
BUSY_SETTINGS = {"max_batch_size": 4, "queue_size": 4, "max_batch_delay_ms": 5, "drain_seconds": 0}


@dataclass
class Pod:
    """One server process standing in for a pod."""

    name: str
    stage: str
    port: int
    program: Program
    target: ScrapeTarget
    route: str

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"


def _document(docs: list[dict], kind: str) -> dict:
    return next(d for d in docs if d["kind"] == kind)


def start_pods(workdir: Path, layout: dict[str, int], values_path: Path = REPO / "value.py",
               settings: dict | None = None, timeout: float = 120.0) -> list[Pod]:
    """Start `layout[stage]` servers per stage; wait until every one answers /api/ping with 200."""
    rendered = render(values_path, list(layout))
    cluster_label = load_observability().cluster_label
    pods: list[Pod] = []
    try:
        for stage, count in layout.items():
            docs = rendered.stages[stage]
            podmonitor, deployment = _document(docs, "PodMonitor"), workload_of(docs)
            # on this machine's CPU, as make serve runs a GPU service (its pod would require the GPU)
            base = dataclasses.replace(rendered.values.serving_settings(), host="127.0.0.1", require_gpu=0,
                                       **(settings or BUSY_SETTINGS))
            for i in range(count):
                port = free_port()
                name = f"{deployment['metadata']['name']}-{stage}-{i}"
                env = {**os.environ, **dataclasses.replace(base, port=port).to_env(),
                       "PYTHONPATH": str(REPO / "src")}
                program = Program(name, [sys.executable, "-m", "podserve.runtime"], workdir / f"{name}.log",
                                  env=env, cwd=REPO)
                labels = pod_monitor_labels(podmonitor, deployment, name)
                labels[cluster_label] = rendered.conf.stages[stage].region
                target = ScrapeTarget(f"127.0.0.1:{port}", labels, podmonitor["spec"]["podMetricsEndpoints"][0]["path"])
                pods.append(Pod(name, stage, port, program, target, f"/api/{base.service_name}"))
        for pod in pods:
            pod.program.wait_until(lambda pod=pod: _ping(pod), timeout, "ready on /api/ping")
    except BaseException:
        stop_pods(pods)
        raise
    return pods


def _ping(pod: Pod) -> bool:
    with urllib.request.urlopen(pod.url("/api/ping"), timeout=2) as reply:
        return reply.status == 200


def stop_pods(pods: list[Pod]) -> None:
    for pod in pods:
        pod.program.stop()


def send_traffic(pods: list[Pod], seconds: float, clients: int, max_requests: int = 20_000) -> collections.Counter:
    """Send requests from `clients` threads for `seconds` (at most `max_requests`); return the count per status.

    Every tenth request is malformed (400) and every eighth asks for a 5 ms deadline (504 when it
    has to wait); the first pod gets twice the share of the others, so uneven load shows. Enough
    clients overflow the small queues of BUSY_SETTINGS (503).
    """
    image = IMAGE.read_bytes()
    weighted = [pods[0]] + list(pods) if len(pods) > 1 else list(pods)
    counts: collections.Counter = collections.Counter()
    numbers = itertools.count()
    lock = threading.Lock()
    stop_at = time.monotonic() + seconds

    def client() -> None:
        with requests.Session() as session:
            while time.monotonic() < stop_at:
                n = next(numbers)
                if n >= max_requests:
                    return
                pod = weighted[n % len(weighted)]
                url = pod.url(pod.route) + f"?postid={n}"
                headers = {"Content-Type": "application/octet-stream"}
                body = image
                kind = n // len(weighted)  # what to send, independent of which pod gets it
                if kind % 10 == 9:
                    headers, body = {"Content-Type": "application/json"}, b"{not json"
                elif kind % 8 == 7:
                    headers["X-Request-Timeout-Ms"] = "5"
                try:
                    status = session.post(url, data=body, headers=headers, timeout=30).status_code
                except requests.RequestException:
                    status = 0
                with lock:
                    counts[status] += 1

    threads = [threading.Thread(target=client, daemon=True) for _ in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(seconds + 60)
    return counts
