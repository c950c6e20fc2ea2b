"""The split layout's failure domains: a decoder process that crashes or hangs costs only the requests it held.

The handler is the example (real image decoding) with a decode that fails in native code for a marked request
(fixture_handlers.FailsInNativeCode): it aborts the process, or blocks in C with or without the GIL. Ordinary
requests from 32 clients go on meanwhile; the pod's own counts are compared with what the clients saw.
"""

from __future__ import annotations

import base64
import threading
import time

import pytest
import requests

from podserve.testbed.processes import poll_until

from hostile import metric_value

IMAGE = None
CLIENTS = 32


@pytest.fixture(scope="module")
def image(repo) -> str:
    return base64.b64encode((repo / "examples" / "text-line.png").read_bytes()).decode()


def split_server(start_server, example_model, **settings):
    settings = {"model_path": str(example_model), "handler": "fixture_handlers:FailsInNativeCode",
                "decode_processes": 2, "max_batch_size": 8, "queue_size": 64, **settings}
    return start_server(**settings)


class Clients:
    """`CLIENTS` closed-loop callers of ordinary requests; what each answer was."""

    def __init__(self, server, image: str):
        self.server, self.image = server, image
        self.outcomes: list[tuple[int | str, str | None]] = []  # (status or exception, error code)
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self._run, args=(n,)) for n in range(CLIENTS)]

    def __enter__(self) -> "Clients":
        for thread in self.threads:
            thread.start()
        poll_until(lambda: self.served() >= CLIENTS, "the clients being served", timeout=60, every=0.01)
        return self

    def __exit__(self, *_exc) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(60)

    def _run(self, number: int) -> None:
        with requests.Session() as session:
            while not self.stop.is_set():
                try:
                    reply = session.post(self.server.api, json={"postid": str(number), "image": self.image},
                                         timeout=30)
                    outcome = (reply.status_code, reply.json().get("error") if reply.status_code != 200 else None)
                    if reply.status_code == 200:
                        assert reply.json()["results"]["angle"] == 0, reply.text
                except requests.RequestException as exc:
                    outcome = (type(exc).__name__, None)
                with self.lock:
                    self.outcomes.append(outcome)

    def served(self) -> int:
        with self.lock:
            return sum(1 for status, _ in self.outcomes if status == 200)

    def failures(self) -> list:
        with self.lock:
            return [outcome for outcome in self.outcomes if outcome[0] != 200]


class Prober:
    """/api/ping every 50 ms, as a readiness probe would: the longest run of failures in a row."""

    def __init__(self, server):
        self.server, self.stop = server, threading.Event()
        self.worst_run = self.run = self.probes = 0
        self.thread = threading.Thread(target=self._probe)

    def __enter__(self) -> "Prober":
        self.thread.start()
        return self

    def __exit__(self, *_exc) -> None:
        self.stop.set()
        self.thread.join(10)

    def _probe(self) -> None:
        while not self.stop.wait(0.05):
            try:
                ok = requests.get(self.server.url("/api/ping"), timeout=1).status_code == 200
            except requests.RequestException:
                ok = False
            self.probes += 1
            self.run = 0 if ok else self.run + 1
            self.worst_run = max(self.worst_run, self.run)


def decoders_up(server) -> int:
    metrics = server.metrics()
    return sum(int(value) for key, value in metrics.items()
               if key.startswith("podserve_process_up{") and 'role="decoder"' in key)


def decoder_restarts(server) -> float:
    return metric_value(server, "podserve_process_restarts_total", role="decoder")


def test_a_decoder_that_crashes_costs_only_the_requests_it_held(start_server, example_model, image):
    server = split_server(start_server, example_model)
    marked: list = []
    replaced_in: list[float] = []
    with Prober(server) as prober, Clients(server, image) as clients:
        for crash in range(10):
            restarts = decoder_restarts(server)
            try:
                reply = requests.post(server.api, json={"postid": f"crash-{crash}", "image": image, "crash": True},
                                      timeout=30)
                marked.append((reply.status_code, reply.json().get("error")))
            except requests.RequestException as exc:
                marked.append((type(exc).__name__, None))
            ended = time.monotonic()
            # The supervisor's replacement: the restart counted, and two decoders up again.
            poll_until(lambda: decoder_restarts(server) == restarts + 1 and decoders_up(server) == 2,
                       f"decoder replaced after crash {crash}", timeout=60, every=0.02)
            replaced_in.append(time.monotonic() - ended)
            poll_until(lambda: clients.served() >= CLIENTS * (crash + 2), "ordinary requests served again",
                       timeout=60, every=0.01)
    failures = clients.failures()
    lost = metric_value(server, "podserve_requests_lost_total", reason="decoder_ended")
    print(f"{len(clients.outcomes)} ordinary requests, {len(failures)} failed with their decoder; marked: {marked}; "
          f"replacement ready in {', '.join(f'{s:.2f}' for s in replaced_in)} s; {prober.probes} probes, worst run "
          f"of failures {prober.worst_run}; pod counted {lost:g} lost")
    # Each marked request gets a 5xx (its decoder ended under it: 502), never an answer from its decode.
    assert all(status == 502 and code == "decoder_ended" for status, code in marked), marked
    # Ordinary requests fail only as the dead process's: 502 decoder_ended, and the pod counted each of them.
    assert all(outcome == (502, "decoder_ended") for outcome in failures), failures
    assert lost == len(failures) + len(marked)
    assert prober.worst_run < 2, "readiness failed twice in a row"
    assert "ended (signal SIGABRT); starting another" in server.log()


def test_a_decode_stuck_without_the_gil_gets_504_at_its_deadline_and_its_places_back(start_server, example_model,
                                                                                     image):
    # The service's own timeout (2 s, not the caller's 1 s) is what makes its thread count as stuck.
    server = split_server(start_server, example_model, request_timeout_ms=2000, video_decode_timeout_seconds=2)
    began = time.monotonic()
    reply = requests.post(server.api, json={"postid": "stuck", "image": image, "hang": "release"},
                          headers={"X-Request-Timeout-Ms": "1000"}, timeout=30)
    took = time.monotonic() - began
    assert reply.status_code == 504, reply.text
    assert 1.0 <= took < 2.0, took
    poll_until(lambda: metric_value(server, "podserve_in_flight_requests") == 0, "its place given back", timeout=10)
    # The stuck decoder is replaced (the thread it decodes on is stuck past the service's timeout); the pod serves on.
    poll_until(lambda: decoder_restarts(server) >= 1 and decoders_up(server) == 2, "the stuck decoder replaced",
               timeout=60, every=0.05)
    for number in range(8):
        assert requests.post(server.api, json={"postid": f"after-{number}", "image": image},
                             timeout=30).status_code == 200


def test_decodes_stuck_holding_the_gil_get_their_process_replaced_and_the_pod_serves_images(start_server,
                                                                                           example_model, image):
    server = split_server(start_server, example_model)
    probe_period = 5.0  # conf/platform.yaml's probe_period_seconds
    deadline = 1.0
    outcomes: list = []

    def stuck(number: int) -> None:
        began = time.monotonic()
        try:
            reply = requests.post(server.api, json={"postid": f"hold-{number}", "image": image, "hang": "hold"},
                                  headers={"X-Request-Timeout-Ms": str(int(deadline * 1000))}, timeout=30)
            outcomes.append((reply.status_code, time.monotonic() - began))
        except requests.RequestException as exc:
            outcomes.append((type(exc).__name__, time.monotonic() - began))

    senders = [threading.Thread(target=stuck, args=(n,)) for n in range(4)]
    for sender in senders:
        sender.start()
    for sender in senders:
        sender.join(60)
    print(f"4 decodes stuck holding the GIL: {outcomes}")
    assert len(outcomes) == 4
    assert all(status in (502, 504) and seconds < deadline + probe_period for status, seconds in outcomes), outcomes
    poll_until(lambda: metric_value(server, "podserve_in_flight_requests") == 0, "every place given back", timeout=10)
    poll_until(lambda: decoder_restarts(server) >= 2 and decoders_up(server) == 2, "both stuck decoders replaced",
               timeout=60, every=0.05)
    for number in range(8):
        reply = requests.post(server.api, json={"postid": f"after-{number}", "image": image}, timeout=30)
        assert reply.status_code == 200 and reply.json()["results"]["angle"] == 0, reply.text
    assert "has not stamped its heartbeat" in server.log()


def test_the_metrics_page_leaves_out_a_metric_file_its_process_has_only_just_created(tmp_path):
    """A replacement process creates its metric file empty before it sizes it; /metrics read in between answered 500
    (prometheus_client's collector fails the page on it: struct.error). The front's collector leaves the empty file
    out and keeps every sample of the others."""
    import os
    import struct
    import subprocess
    import sys

    from prometheus_client.multiprocess import MultiProcessCollector

    from podserve.runtime.processes.pod_metrics import ProcessFiles

    counted = ("from prometheus_client import Counter; "
               "Counter('podserve_test_answers', 'answers', ('service',)).labels('s').inc(3)")
    subprocess.run([sys.executable, "-c", counted], check=True, timeout=60,
                   env=dict(os.environ, PROMETHEUS_MULTIPROC_DIR=str(tmp_path)))
    (tmp_path / "counter_4242.db").write_bytes(b"")  # a starting process's file, not yet sized
    with pytest.raises(struct.error):
        list(MultiProcessCollector(None, path=str(tmp_path)).collect())
    samples = {(s.name, s.labels.get("service")): s.value
               for metric in ProcessFiles(None, path=str(tmp_path)).collect() for s in metric.samples}
    assert samples == {("podserve_test_answers_total", "s"): 3.0}
