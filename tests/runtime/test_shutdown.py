"""SIGTERM drains: ping turns 503 at once, accepted requests all get answers, the process exits 0."""

from __future__ import annotations

import threading
import time

import pytest
import requests

DRAIN = 1.5


def test_sigterm_while_32_clients_send_loses_no_accepted_request(start_server, affine_model):
    server = start_server(model_path=str(affine_model), handler="fixture_handlers:SlowAffine", ins_num_per_gpu=1,
                          max_batch_size=4, TEST_PREDICT_SLEEP=0.05, drain_seconds=DRAIN, queue_size=64)
    outcomes: list[tuple[float, int | str]] = []
    lock = threading.Lock()
    stop_sending = threading.Event()

    def client(number: int) -> None:
        with requests.Session() as session:
            sent = 0
            while not stop_sending.is_set():
                try:
                    reply = session.post(server.api, json={"postid": f"{number}-{sent}", "data": [number]}, timeout=30)
                    ok = reply.status_code == 200 and reply.json()["results"] == [2.0 * number + 1]
                    outcome = 200 if ok else f"{reply.status_code}: {reply.text[:200]}"
                except requests.RequestException as exc:
                    outcome = f"{type(exc).__name__}: {exc}"
                with lock:
                    outcomes.append((time.monotonic(), outcome))
                sent += 1

    clients = [threading.Thread(target=client, args=(n,)) for n in range(32)]
    for thread in clients:
        thread.start()
    time.sleep(1.0)
    sigterm_at = time.monotonic()
    server.terminate()
    time.sleep(0.1)
    ping = requests.get(server.url("/api/ping"), timeout=5)
    assert ping.status_code == 503 and "shutting down" in ping.json()["msg"]
    # The mesh stops routing here within the drain window; clients stop starting new requests
    # shortly before the listener closes, while many of theirs are still queued.
    time.sleep(DRAIN - 0.3)
    stop_sending.set()
    for thread in clients:
        thread.join()
    assert server.process.wait(30) == 0, server.log()

    after = [o for t, o in outcomes if t > sigterm_at]
    print(f"{len(outcomes)} requests answered, {len(after)} of them after SIGTERM; exit code 0")
    assert len(after) > 32, "requests sent during the drain window were not served"
    assert [o for _, o in outcomes if o != 200] == []
    assert "closed: every accepted request was answered" in server.log()
    with pytest.raises(requests.ConnectionError):
        requests.get(server.url("/api/ping"), timeout=2)
