"""Deadlines through the real Envoy: a caller's shorter timeout reaches the pod; one queued past it never runs.

The grey pod is slowed so that one request holds its only batch thread for 2.5 s; two
requests queued behind it carry a 1 s deadline, one as Envoy's own caller header
(x-envoy-upstream-rq-timeout-ms, which Envoy passes on as X-Envoy-Expected-Rq-Timeout-Ms)
and one as the server's X-Request-Timeout-Ms (Envoy's route timeout stays 11 s).
"""

from __future__ import annotations

import json
import threading
import time

from podserve.testbed.processes import poll_until
from traffic import marker, post, predicted, switch_dir

PATH = "/grey/like/test"
BLOCK_SECONDS = 2.5


def test_a_shorter_deadline_reaches_the_pod_and_a_request_queued_past_it_is_not_run(mesh):
    slow = switch_dir(mesh, "test", "grey", 0) / "slow"
    slow.write_text(str(BLOCK_SECONDS))
    blocker, via_envoy, via_server = marker(), marker(), marker()
    replies = {}
    try:
        first = threading.Thread(target=lambda: replies.setdefault("blocker", post(mesh, PATH, blocker)))
        first.start()
        # Wait until the blocker holds the batch thread: the handler records an input before its slow sleep.
        poll_until(lambda: blocker in predicted(mesh, "test", "grey", 0), "the blocker running on grey-0", timeout=30,
                   every=0.02)
        timed = {}

        def send(name: str, first: float, headers: dict) -> None:
            started = time.monotonic()
            replies[name] = post(mesh, PATH, first, headers, postid=f"{name}-{first}")
            timed[name] = time.monotonic() - started

        queued = [threading.Thread(target=send, args=("envoy", via_envoy, {"x-envoy-upstream-rq-timeout-ms": "1000"})),
                  threading.Thread(target=send, args=("server", via_server, {"X-Request-Timeout-Ms": "1000"}))]
        for thread in queued:
            thread.start()
        for thread in queued:
            thread.join(30)
        envoy_seconds, server_seconds = timed["envoy"], timed["server"]
        first.join(30)
    finally:
        slow.unlink()
    pod = mesh.workload("grey", "test").pods[0]
    records = [json.loads(line) for line in pod.program.log_tail(400).splitlines() if line.startswith("{")]
    logged = {r.get("postid"): r.get("status") for r in records if r.get("msg") == "request"}
    deadlines = {r.get("postid"): r.get("deadline_ms") for r in records if r.get("msg") == "request"}
    ran = predicted(mesh, "test", "grey", 0)
    print(f"\ndeadlines: with x-envoy-upstream-rq-timeout-ms: 1000 the caller got {replies['envoy'].status_code} after "
          f"{envoy_seconds:.2f} s and the pod logged {logged.get(f'envoy-{via_envoy}')}; with X-Request-Timeout-Ms: "
          f"1000 the caller got the pod's {replies['server'].status_code} after {server_seconds:.2f} s "
          f"({replies['server'].json().get('msg')!r}); the blocker: {replies['blocker'].status_code}")
    assert replies["blocker"].status_code == 200
    # Envoy's timer and the pod's deadline are the same 1 s: whichever answers, the caller gets 504, and the pod
    # never ran it: it logs 504 when its own deadline fired first, 499 when Envoy's reset reached it first (Envoy's
    # clock started a moment earlier). Its logged deadline of 1000 ms shows that Envoy passed the caller's timeout
    # on as X-Envoy-Expected-Rq-Timeout-Ms (without it the pod's deadline is value.py's 10 s).
    assert replies["envoy"].status_code == 504 and envoy_seconds < BLOCK_SECONDS - 0.5
    assert logged.get(f"envoy-{via_envoy}") in (504, 499)
    assert deadlines.get(f"envoy-{via_envoy}") == 1000 and deadlines.get(f"server-{via_server}") == 1000
    assert replies["server"].status_code == 504 and replies["server"].json()["postid"] == f"server-{via_server}"
    assert server_seconds < BLOCK_SECONDS - 0.5
    assert "deadline" in replies["server"].json()["msg"]
    assert blocker in ran and via_envoy not in ran and via_server not in ran
