"""Deadlines through the real Envoy fed by istiod: a caller's X-Request-Timeout-Ms reaches the pod, and a request queued
past it never runs; Envoy's own caller header does not reach it.

The grey pod is slowed so that every batch holds its only batch thread for 2.5 s; two requests queued behind a
blocker carry a 1 s deadline, one as Envoy's caller header x-envoy-upstream-rq-timeout-ms and one as the server's
X-Request-Timeout-Ms (the route's timeout stays 11 s). istiod configures no internal_address_config on the gateway
(only with ENABLE_HCM_INTERNAL_NETWORKS and mesh networks): Envoy 1.40 then takes every caller for an external one
and drops its x-envoy-* headers, as production's gateway does. Until issue 65 the translation marked loopback callers
internal, and this test asserted that Envoy's header shortened the deadline: production never did.
"""

from __future__ import annotations

import json
import threading
import time

from mesh_setup import VALUES
from podserve.testbed.processes import poll_until
from traffic import marker, post, predicted, switch_dir

PATH = "/grey/like/test"
BLOCK_SECONDS = 2.5


def test_a_caller_s_deadline_reaches_the_pod_by_its_own_header_not_envoy_s_and_a_request_queued_past_it_is_not_run(
        mesh):
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
          f"{envoy_seconds:.2f} s and the pod logged {logged.get(f'envoy-{via_envoy}')} with a deadline of "
          f"{deadlines.get(f'envoy-{via_envoy}')} ms; with X-Request-Timeout-Ms: "
          f"1000 the caller got the pod's {replies['server'].status_code} after {server_seconds:.2f} s "
          f"({replies['server'].json().get('msg')!r}); the blocker: {replies['blocker'].status_code}")
    assert replies["blocker"].status_code == 200
    # Envoy's header was dropped at the gateway: the pod's deadline for that request is value.py's request_timeout_ms,
    # and it ran after the blocker (its own batch took the pod's 2.5 s more); the route's timeout (11 s) is longer.
    assert replies["envoy"].status_code == 200 and envoy_seconds > BLOCK_SECONDS
    assert logged.get(f"envoy-{via_envoy}") == 200
    assert deadlines.get(f"envoy-{via_envoy}") == VALUES["request_timeout_ms"]
    # The server's own header reached the pod: its 1 s deadline passed in the queue, 504, and it never ran.
    assert deadlines.get(f"server-{via_server}") == 1000
    assert replies["server"].status_code == 504 and replies["server"].json()["postid"] == f"server-{via_server}"
    assert server_seconds < BLOCK_SECONDS - 0.5
    assert "deadline" in replies["server"].json()["msg"]
    assert blocker in ran and via_envoy in ran and via_server not in ran
