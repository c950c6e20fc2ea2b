"""`/api/ping` and `/api/live`, answered in the event loop's thread from state it reads.

Kubernetes restarts a pod whose probes time out, so they never wait behind anything a client
can flood (the control thread's queue, the request threads): each answer is built from a few
flags and counters, in microseconds, by the loop itself.
"""

from __future__ import annotations

from podserve import errors
from podserve.errors import NotReady, ServingError
from podserve.routes import LIVE_PATH, PING_PATH, READ_METHODS
from podserve.runtime.core.lifecycle import Lifecycle
from podserve.runtime.http.messages import Answer, Exchange
from podserve.runtime.protocols import api

PATHS = frozenset({PING_PATH, LIVE_PATH})


class Probes:
    """Answer the probes of one pod from its pool's and lifecycle's state (in the split layout, `pool` is the
    model process's published state: runtime/processes/front_process.py's PodView)."""

    def __init__(self, pool, lifecycle: Lifecycle):
        self.pool, self.lifecycle = pool, lifecycle
        self._ready: tuple[int, Answer] | None = None  # the ready answer, built once per instance count

    def answer(self, exchange: Exchange) -> Answer:
        """The answer to a request for one of `PATHS`."""
        return self.answer_request(exchange.path, exchange.method)

    def answer_request(self, path: str, method: str) -> Answer | None:
        """The answer to `method path` if it asks for one of `PATHS`, else None: what the server's lane for
        connections over its limit calls (`HttpServer.answer_probe`), with nothing but the request line."""
        if path not in PATHS:
            return None
        if method not in READ_METHODS:
            return _error(errors.MethodNotAllowed.on(method, path, READ_METHODS))
        return self.ping() if path == PING_PATH else self.live()

    def readiness_problem(self) -> NotReady | None:
        """Why this pod takes no traffic now (loading or draining), or None when it is ready."""
        if self.lifecycle.draining:
            return NotReady("shutting down: this pod no longer takes new traffic")
        if not self.pool.ready:
            return NotReady(f"not ready: {self.pool.status()}")
        return None

    def is_live(self) -> bool:
        """False only when a batch thread is dead or stuck (the pod must be restarted)."""
        return self.pool.liveness_problem() is None

    def ping(self) -> Answer:
        """Readiness: 200 once every instance is loaded and warmed up, 503 while loading or draining."""
        problem = self.readiness_problem()
        if problem is not None:
            return _error(problem)
        instances = self.pool.instance_count
        if self._ready is None or self._ready[0] != instances:
            self._ready = instances, Answer.json(200, {"results": {"ready": True, "instances": instances},
                                                       "msg": self.pool.status()})
        return self._ready[1]

    def live(self) -> Answer:
        """Liveness: 503 only when a batch thread is dead or stuck (the pod must be restarted)."""
        problem = self.pool.liveness_problem()
        if problem:
            return _error(errors.Wedged(f"wedged: {problem}"))
        return Answer.json(200, {"results": {"alive": True}, "msg": "ok"})


def _error(error: ServingError) -> Answer:
    return Answer.json(error.status, api.error_body(error), error.headers.items())
