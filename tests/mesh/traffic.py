"""Callers of the mesh under test: single requests and bounded steady load through Envoy, and pod switches."""

from __future__ import annotations

import itertools
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import requests

from mesh_setup import HOST
from podserve.testbed.mesh.mesh import Mesh

_markers = itertools.count(1000)


def marker() -> float:
    """Return a number no other request of the suite sends first (the handler records what it ran)."""
    return float(next(_markers))


def body(first: float = 1.0, postid: str = "p") -> dict:
    return {"postid": postid, "uid": "u", "seqid": "s", "data": [first, 0.0, 0.0, 0.0]}


def post(mesh: Mesh, path: str, first: float = 1.0, headers: dict | None = None, timeout: float = 30,
         session: requests.Session | None = None, postid: str = "p") -> requests.Response:
    """POST the affine body to `path` through the gateway (its HTTPS server's routes), as a caller of
    infer-hk.example.com."""
    return (session or requests).post(f"{mesh.url}{path}", json=body(first, postid),
                                      headers={"Host": HOST, **(headers or {})}, timeout=timeout)


def switch_dir(mesh: Mesh, service: str, stage: str, index: int) -> Path:
    return Path(mesh.pod_env[(service, stage, index)]["SWITCH_DIR"])


def predicted(mesh: Mesh, service: str, stage: str, index: int) -> list[float]:
    """Return the first numbers of every input that pod's predict ran."""
    record = switch_dir(mesh, service, stage, index) / "predicted"
    return [float(line) for line in record.read_text().split()] if record.exists() else []


@dataclass
class Outcome:
    status: int  # 0: no HTTP answer (connection error or client timeout)
    seconds: float
    overloaded: bool = False  # Envoy's own 503 from a circuit breaker (x-envoy-overloaded)
    detail: str = ""  # the start of the body of an answer other than 200
    started: float = 0.0  # time.monotonic() when it was sent
    answer: object = None  # the JSON `results` of a 200


def steady_load(mesh: Mesh, path: str, clients: int, seconds: float, timeout: float = 30,
                pause_after_503: float = 0.0, stop: threading.Thread | None = None) -> list[Outcome]:
    """`clients` threads, each sending one request after another for `seconds`; return every outcome.

    A client that gets a 503 waits `pause_after_503` before its next request (a caller backing off).
    With `stop`, the load also ends once that thread has started and finished (at most `seconds`).
    """
    stop_at = time.monotonic() + seconds

    def going() -> bool:
        finished = stop is not None and stop.ident is not None and not stop.is_alive()
        return time.monotonic() < stop_at and not finished

    outcomes: list[Outcome] = []
    lock = threading.Lock()

    def client() -> None:
        with requests.Session() as session:
            while going():
                started = time.monotonic()
                try:
                    reply = post(mesh, path, session=session, timeout=timeout)
                    outcome = Outcome(reply.status_code, time.monotonic() - started,
                                      reply.headers.get("x-envoy-overloaded") == "true",
                                      "" if reply.status_code == 200 else reply.text[:120], started)
                except requests.RequestException:
                    outcome = Outcome(0, time.monotonic() - started, started=started)
                with lock:
                    outcomes.append(outcome)
                if outcome.status == 503 and pause_after_503:
                    time.sleep(pause_after_503)

    threads = [threading.Thread(target=client) for _ in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(seconds + timeout + 5)
    return outcomes


def paced_load(mesh: Mesh, path: str, rate: float, count: int, clients: int = 8, timeout: float = 30,
               headers: dict | None = None, stop: threading.Event | None = None) -> list[Outcome]:
    """Send `count` requests at `rate` a second, each at its own time (t0 + i / rate) from one of `clients` threads,
    whatever the answers take (a late one never delays the next); return every outcome, each with its answer.
    With `stop`, no request is sent once it is set (those under way are answered)."""
    start = time.monotonic() + 0.2
    numbers = iter(range(count))
    taken = threading.Lock()
    outcomes: list[Outcome] = []

    def client() -> None:
        with requests.Session() as session:
            while True:
                with taken:
                    index = next(numbers, None)
                if index is None:
                    return
                if stop is None:
                    time.sleep(max(0.0, start + index / rate - time.monotonic()))
                elif stop.wait(max(0.0, start + index / rate - time.monotonic())):
                    return
                sent = time.monotonic()
                try:
                    reply = post(mesh, path, session=session, timeout=timeout, headers=headers)
                    ok = reply.status_code == 200
                    outcome = Outcome(reply.status_code, time.monotonic() - sent,
                                      reply.headers.get("x-envoy-overloaded") == "true",
                                      "" if ok else reply.text[:120], sent, reply.json()["results"] if ok else None)
                except requests.RequestException as exc:
                    outcome = Outcome(0, time.monotonic() - sent, detail=repr(exc)[:120], started=sent)
                with taken:
                    outcomes.append(outcome)

    threads = [threading.Thread(target=client) for _ in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(count / rate + timeout + 10)
    return outcomes


def counts(outcomes: list[Outcome]) -> dict[int, int]:
    result: dict[int, int] = {}
    for outcome in outcomes:
        result[outcome.status] = result.get(outcome.status, 0) + 1
    return dict(sorted(result.items()))


def requests_per_pod(mesh: Mesh, stage: str, service: str = "test") -> dict[str, int]:
    """Return {pod name: requests Envoy sent it} for one stage (Envoy's per-host rq_total)."""
    workload = mesh.workload(stage, service)
    hosts = mesh.envoy.hosts(workload.cluster)
    return {pod.name: hosts.get(pod.address, {}).get("rq_total", 0) for pod in workload.pods}


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))] if ordered else 0.0
