"""Every admitted request is answered by its deadline plus the pod's grace, whatever process ends or hangs, and none
twice (docs/processes.md: Failures): each process of the split layout killed (SIGKILL) or stopped (SIGSTOP) at each
step of a request, and a request thread stuck in `encode` with and without the GIL.

The handler is fixture_handlers.FaultPoints over the affine model: a request's first number holds it where the test
says (its decode at a gate, its batch at a gate, its encode blocked in C), so each fault lands at a known step; no
test waits on a clock for an event. After each fault the pod must have counted exactly the requests sent (none twice),
given back every place, replaced what it killed, and serve again.
"""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest
import requests

from podserve.runtime.processes.supervisor import HANG_SECONDS
from podserve.settings import ServingSettings
from podserve.stop_bounds import ANSWER_GRACE_SECONDS, drain_bound_seconds
from podserve.testbed.processes import poll_until

from fixture_handlers import (AT_DECODE, AT_PREDICT, ENCODE_HOLDS_GIL, ENCODE_RELEASES_GIL, decoded_by,
                              held_batches)
from hostile import metric_value
from test_split_layout import _children as children

#: The deadline every request here asks for (X-Request-Timeout-Ms), in seconds.
DEADLINE = 1.0
#: What a caller's clock adds to the pod's: its send and the HTTP round trip on a loaded 2-core machine.
SLACK = 1.0


class Sent:
    """One request sent on a thread of its own: its status (or the exception it raised) and how long it took."""

    def __init__(self, server, mark: int, number: int, deadline: float = DEADLINE):
        self.server, self.mark, self.number, self.deadline = server, mark, number, deadline
        self.status: int | str | None = None
        self.error: str | None = None
        self.seconds = 0.0
        self.thread = threading.Thread(target=self._send)
        self.thread.start()

    def _send(self) -> None:
        began = time.monotonic()
        try:
            reply = requests.post(self.server.api, json={"postid": str(self.number), "data": [self.mark, self.number]},
                                  headers={"X-Request-Timeout-Ms": str(int(self.deadline * 1000))}, timeout=60)
            self.status, self.error = reply.status_code, reply.json().get("error")
        except requests.RequestException as exc:
            self.status = type(exc).__name__
        self.seconds = time.monotonic() - began

    def answer(self) -> tuple:
        self.thread.join(60)
        assert not self.thread.is_alive(), f"request {self.number} never answered"
        return self.status, self.error

    def within_grace(self) -> bool:
        return self.seconds <= self.deadline + ANSWER_GRACE_SECONDS + SLACK


@pytest.fixture
def gates(tmp_path):
    """The gates FaultPoints waits at, and the file naming who decoded what; every gate opened at the end."""
    paths = {"decode": tmp_path / "decode-gate", "predict": tmp_path / "predict-gate", "load": tmp_path / "load-gate",
             "decoded_by": tmp_path / "decoded-by"}
    yield paths
    for name in ("decode", "predict", "load"):
        paths[name].unlink(missing_ok=True)


def fault_pod(start_server, affine_model, gates, **settings):
    """The split layout, two decoders, one model instance with one lane taking batches of one (a second input waits in
    its queue), FaultPoints' gates wired."""
    settings = {"decode_processes": 2, **settings}
    return start_server(handler="fixture_handlers:FaultPoints", model_path=str(affine_model), cpu=1,
                        max_batch_size=1, queue_size=8,
                        TEST_PREDICT_GATE=str(gates["predict"]), TEST_DECODE_GATE=str(gates["decode"]),
                        TEST_LOAD_GATE=str(gates["load"]), TEST_DECODED_BY=str(gates["decoded_by"]), **settings)


class Pod:
    """What a test checks of the pod around each fault."""

    def __init__(self, server, gates):
        self.server, self.gates = server, gates
        self.numbers = iter(range(1000, 100000))

    def counted(self) -> float:
        return metric_value(self.server, "podserve_requests_total", route=f"/api/{self.server.service}")

    def restarts(self, role: str) -> float:
        return metric_value(self.server, "podserve_process_restarts_total", role=role)

    def decoders_up(self) -> int:
        metrics = self.server.metrics()
        return sum(int(value) for key, value in metrics.items()
                   if key.startswith("podserve_process_up{") and 'role="decoder"' in key)

    def send(self, mark: int, deadline: float = DEADLINE) -> Sent:
        return Sent(self.server, mark, next(self.numbers), deadline)

    def decoder_of(self, sent: Sent) -> int:
        return poll_until(lambda: decoded_by(self.gates["decoded_by"]).get(sent.number), f"request {sent.number} "
                          f"decoded", timeout=30, every=0.01)

    def recovered(self, role: str, restarts_before: float) -> None:
        """The process the fault ended is replaced, every place is given back, and the pod serves again."""
        poll_until(lambda: self.restarts(role) > restarts_before, f"the {role} replaced", timeout=60, every=0.05)
        self.server.wait_ready(60)
        poll_until(lambda: self.decoders_up() == 2, "both decoders up", timeout=60, every=0.05)
        poll_until(lambda: metric_value(self.server, "podserve_in_flight_requests") == 0, "every place given back",
                   timeout=10, every=0.02)
        ordinary = self.send(0)
        assert ordinary.answer() == (200, None), ordinary.status


def kill_or_stop(pid: int, signum: int) -> None:
    os.kill(pid, signum)


@pytest.mark.parametrize("signum", [signal.SIGKILL, signal.SIGSTOP], ids=["killed", "stopped"])
def test_a_decoder_killed_or_stopped_before_and_after_it_submits(start_server, affine_model, gates, signum):
    server = fault_pod(start_server, affine_model, gates)
    pod = Pod(server, gates)
    outcomes = []
    for step, mark, gate in (("before submit", AT_DECODE, "decode"), ("after submit", AT_PREDICT, "predict")):
        gates[gate].touch()
        counted, restarts = pod.counted(), pod.restarts("decoder")
        sent = pod.send(mark)
        pid = pod.decoder_of(sent)
        if step == "after submit":
            poll_until(lambda: held_batches(gates["predict"]), "its batch at the gate", timeout=30, every=0.01)
        kill_or_stop(pid, signum)
        status, error = sent.answer()
        gates[gate].unlink()
        outcomes.append((step, status, error, round(sent.seconds, 2)))
        # Killed: the front answers what the decoder held 502 at once. Stopped: nothing of it answers; the front's
        # backstop does at the deadline and grace (or, if the supervisor kills it first, its end: 502).
        expected = {(502, "decoder_ended")} if signum == signal.SIGKILL else {(504, "deadline_exceeded"),
                                                                             (502, "decoder_ended")}
        assert (status, error) in expected, outcomes
        assert sent.within_grace(), outcomes
        pod.recovered("decoder", restarts)
        assert pod.counted() - counted == 2, "the faulted request and the ordinary one after it, each counted once"
    print(f"decoder {signal.Signals(signum).name}: {outcomes}")
    if signum == signal.SIGSTOP:
        assert "has not stamped its heartbeat" in server.log()


@pytest.mark.parametrize("signum", [signal.SIGKILL, signal.SIGSTOP], ids=["killed", "stopped"])
def test_the_model_process_killed_or_stopped_mid_batch_with_another_queued(start_server, affine_model, gates, signum):
    """One input mid-batch (at the predict gate), one submitted and queued behind it: both answered 503 (the model
    process ended under them) or 504 (the backstop, if it comes first), within the deadline and grace; the pod is not
    ready while the replacement loads (held at the load gate), and the dead process's last batch does not fail
    liveness meanwhile."""
    deadline = 2 * HANG_SECONDS  # the supervisor finds a stopped model process before the backstop answers for it
    server = fault_pod(start_server, affine_model, gates, stuck_batch_seconds=1)
    pod = Pod(server, gates)
    gates["predict"].touch()
    counted, restarts = pod.counted(), pod.restarts("model")
    running = pod.send(AT_PREDICT, deadline)
    poll_until(lambda: held_batches(gates["predict"]), "a batch at the gate", timeout=30, every=0.01)
    queued = pod.send(0, deadline)
    poll_until(lambda: metric_value(server, "podserve_queue_depth") == 1, "the second input queued in the model "
               "process", timeout=30, every=0.01)
    [model] = children(server)["model"]
    gates["load"].touch()  # its replacement waits to load until the test says
    stopped_at = time.monotonic()
    kill_or_stop(model, signum)
    answers = [running.answer(), queued.answer()]
    assert all(answer in {(503, "not_ready"), (504, "deadline_exceeded")} for answer in answers), answers
    assert running.within_grace() and queued.within_grace(), (running.seconds, queued.seconds)
    # The replacement is loading (at the gate): the pod is not ready, and says why.
    poll_until(lambda: held_batches(gates["load"]), "the replacement loading", timeout=60, every=0.02)
    ping = requests.get(server.url("/api/ping"), timeout=5)
    assert ping.status_code == 503, ping.text
    meanwhile = pod.send(0)
    assert meanwhile.answer() == (503, "not_ready"), "a request while the model process loads: 503, never lost"
    # Its predecessor died mid-batch: that batch's start, older than stuck_batch_seconds by now, says nothing.
    poll_until(lambda: time.monotonic() - stopped_at > 1.5, "past stuck_batch_seconds since the batch began",
               timeout=10, every=0.05)
    live = requests.get(server.url("/api/live"), timeout=5)
    assert live.status_code == 200, live.text
    assert requests.get(server.url("/api/ping"), timeout=5).status_code == 503
    gates["load"].unlink()
    gates["predict"].unlink()
    pod.recovered("model", restarts)
    assert pod.counted() - counted == 4  # the two faulted, the one while loading, the ordinary one after
    print(f"model process {signal.Signals(signum).name}: {answers}, in {running.seconds:.2f} s and "
          f"{queued.seconds:.2f} s")


@pytest.mark.parametrize("mark", [ENCODE_RELEASES_GIL, ENCODE_HOLDS_GIL], ids=["without-the-gil", "holding-the-gil"])
def test_a_request_thread_stuck_in_encode(start_server, affine_model, gates, mark):
    """Its request is answered 504 at its deadline and grace (its inputs were with the model: only the backstop
    covers it). Without the GIL, the thread is stuck past the service's own timeout and its decoder asks to be
    replaced; holding it, the decoder's heartbeat stops and the supervisor kills it."""
    server = fault_pod(start_server, affine_model, gates, request_timeout_ms=2000, video_decode_timeout_seconds=2)
    pod = Pod(server, gates)
    counted, restarts = pod.counted(), pod.restarts("decoder")
    stuck = pod.send(mark)
    assert stuck.answer() == (504, "deadline_exceeded"), stuck.status
    assert stuck.within_grace(), stuck.seconds
    ordinary = pod.send(0)  # the other decoder serves meanwhile
    assert ordinary.answer() == (200, None)
    pod.recovered("decoder", restarts)
    assert pod.counted() - counted == 3
    assert ("asking to be replaced" if mark == ENCODE_RELEASES_GIL else "has not stamped its heartbeat") in server.log()


@pytest.mark.parametrize("signum", [signal.SIGKILL, signal.SIGSTOP], ids=["killed", "stopped"])
def test_the_front_killed_or_stopped_with_a_request_mid_batch(start_server, affine_model, gates, signum):
    """The front holds the callers' connections: a caller whose front ended gets its connection reset (no process can
    answer on it). Its decoder drops the request, the new front serves, and nothing is left held anywhere."""
    server = fault_pod(start_server, affine_model, gates)
    pod = Pod(server, gates)
    gates["predict"].touch()
    restarts = pod.restarts("front")
    sent = pod.send(AT_PREDICT)
    poll_until(lambda: held_batches(gates["predict"]), "its batch at the gate", timeout=30, every=0.01)
    [front] = children(server)["front"]
    kill_or_stop(front, signum)
    status, _ = sent.answer()
    assert status == "ConnectionError", status
    gates["predict"].unlink()
    pod.recovered("front", restarts)
    poll_until(lambda: metric_value(server, "podserve_process_requests_held") == 0, "the decoders holding nothing",
               timeout=30, every=0.05)
    assert pod.counted() == 1  # the new front's own count: the ordinary request after it


@pytest.mark.parametrize("decoders", [0, 2], ids=["one-process", "split"])
def test_a_sigterm_drain_ends_within_its_stated_bound_with_a_batch_and_an_encode_stuck(start_server, affine_model,
                                                                                      gates, decoders):
    """A batch that never ends (at the gate until the test's end) and a request thread that never comes back from
    `encode` (in C, without the GIL) do not hold the drain: the backstop answers their requests at their deadline and
    grace, and the pod exits 0 within drain_bound_seconds (the threads still busy get STOP_SECONDS in all, or the
    supervisor's END_SECONDS for the other processes)."""
    # No body larger than an image's: no upload allowance in the longest deadline, so the bound is tight. Two request
    # threads: one stays in its encode, the other decodes the request whose batch then stays at the gate.
    settings = {"drain_seconds": 0.5, "request_timeout_ms": 2000, "max_video_bytes": 1 << 20, "http_threads": 2}
    server = fault_pod(start_server, affine_model, gates, **{**settings, "decode_processes": decoders})
    bound = drain_bound_seconds(ServingSettings(**settings), split=decoders > 0)
    encoding = Sent(server, ENCODE_RELEASES_GIL, 1, deadline=2.0)
    poll_until(lambda: (gates["decoded_by"].parent / "decoded-by.encoding").exists(), "a request thread stuck in "
               "its encode", timeout=30, every=0.01)
    gates["predict"].touch()
    stuck = Sent(server, AT_PREDICT, 2, deadline=2.0)
    poll_until(lambda: held_batches(gates["predict"]), "its batch at the gate", timeout=30, every=0.01)
    began = time.monotonic()
    server.terminate()
    assert stuck.answer() == (504, "deadline_exceeded") and encoding.answer() == (504, "deadline_exceeded")
    code = server.process.wait(bound + 5)
    took = time.monotonic() - began
    print(f"{'split' if decoders else 'one process'}: drained and exited {code} in {took:.1f} s (bound {bound:.1f} s)")
    assert code == 0 and took <= bound, (code, took, bound)
