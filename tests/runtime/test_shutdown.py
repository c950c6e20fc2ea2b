"""SIGTERM drains: ping turns 503 at once, accepted requests all get answers, the process exits 0."""

from __future__ import annotations

import threading
import time

import pytest
import requests
from urllib3.exceptions import NewConnectionError

from podserve.testbed.processes import poll_until

DRAIN = 2.5


def _refused_at_connect(exc: requests.RequestException) -> bool:
    """Whether the request never reached the server: its TCP connect was refused, as once the listener is closed.
    Anything else (a reset or a close on a connection the request was sent on) may be an accepted request lost."""
    reason = getattr(exc.args[0], "reason", None) if exc.args else None
    return isinstance(reason, NewConnectionError) and isinstance(reason.__cause__ or reason.__context__,
                                                                 ConnectionRefusedError)


@pytest.mark.parametrize("decoders", [0, 2], ids=["one-process", "split"])
def test_sigterm_while_32_clients_send_loses_no_accepted_request(start_server, affine_model, decoders):
    server = start_server(model_path=str(affine_model), handler="fixture_handlers:SlowAffine", ins_num_per_gpu=1,
                          max_batch_size=4, TEST_PREDICT_SLEEP=0.05, drain_seconds=DRAIN, queue_size=64,
                          decode_processes=decoders)
    outcomes: list[tuple[float, float, int | str]] = []  # (sent, answered, 200 or what went wrong)
    refused: list[float] = []  # when a client's connect was refused: that request never reached the server
    lock = threading.Lock()
    stop_sending = threading.Event()

    def client(number: int) -> None:
        with requests.Session() as session:
            sent = 0
            while not stop_sending.is_set():
                began = time.monotonic()
                try:
                    reply = session.post(server.api, json={"postid": f"{number}-{sent}", "data": [number]}, timeout=30)
                    ok = reply.status_code == 200 and reply.json()["results"] == [2.0 * number + 1]
                    outcome = 200 if ok else f"{reply.status_code}: {reply.text[:200]}"
                except requests.RequestException as exc:
                    if _refused_at_connect(exc):
                        with lock:
                            refused.append(time.monotonic())
                        return  # nothing listens any more: this client stops (when that may be is checked below)
                    outcome = f"{type(exc).__name__}: {exc}"
                with lock:
                    outcomes.append((began, time.monotonic(), outcome))
                sent += 1

    def served_since(moment: float) -> int:
        with lock:
            return sum(1 for sent, _, outcome in outcomes if sent > moment and outcome == 200)

    clients = [threading.Thread(target=client, args=(n,)) for n in range(32)]
    for thread in clients:
        thread.start()
    try:
        poll_until(lambda: len(outcomes) >= 64, "the clients being served before SIGTERM", timeout=30, every=0.01)
        sigterm_at = time.monotonic()
        server.terminate()
        message = poll_until(lambda: (reply := requests.get(server.url("/api/ping"), timeout=5)).status_code == 503
                             and reply.json()["msg"], "ping turning 503 (draining)", timeout=10, every=0.01)
        assert "shutting down" in message
        draining_seen = time.monotonic()
        # The mesh stops routing here within the drain window. Clients keep sending while the pod drains, and stop
        # once a round of requests sent during the drain has been served, well before the listener closes, while
        # many of theirs are still queued.
        poll_until(lambda: served_since(draining_seen) >= len(clients) or not any(t.is_alive() for t in clients),
                   "a round of requests sent while draining served", timeout=30, every=0.01)
    finally:
        stop_sending.set()
        for thread in clients:
            thread.join()
    assert server.process.wait(30) == 0, server.log()

    after = [o for _, answered, o in outcomes if answered > sigterm_at]
    print(f"{len(outcomes)} requests answered, {len(after)} of them after SIGTERM, {served_since(draining_seen)} sent "
          f"while draining; {len(refused)} connect(s) refused; exit code 0")
    assert served_since(draining_seen) >= len(clients), "requests sent during the drain window were not served"
    assert [o for *_, o in outcomes if o != 200] == []
    # A refused connect is no accepted request lost (nothing reached the pod), but only once the drain window is
    # over: the listener stays open for DRAIN seconds after SIGTERM.
    assert [at - sigterm_at for at in refused if at < sigterm_at + DRAIN] == [], "refused during the drain window"
    assert "closed: every accepted request was answered" in server.log()
    # an orderly stop warns of nothing: decoders see the front end once it has drained, as they should
    assert [line for line in server.log().splitlines() if '"level": "warning"' in line and "front" in line] == []
    with pytest.raises(requests.ConnectionError):
        requests.get(server.url("/api/ping"), timeout=2)
