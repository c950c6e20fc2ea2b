"""The pod's control thread: the metrics page, and the 404/405 answers for every path the pod does not serve.

`POST /api/<service_name>` goes to runtime/protocols/service_route.py and the probes are answered by the
event loop (runtime/protocols/probes.py); what is left is answered here, on one thread of its own, so that
a scrape never waits behind the request threads' decoding and nothing slow runs in the loop.
Its queue is bounded: beyond `control_queue_size` waiting requests, a flood of `/metrics` or
404s gets 503 at once. No web framework: these few answers do not need one, and Flask with
Werkzeug cost every pod 8.6 MB of memory (bench/optimisations.json).
"""

from __future__ import annotations

import logging
import queue
import threading

from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

from podserve import errors
from podserve import metric_names as names
from podserve.errors import ServingError
from podserve.routes import LIVE_PATH, METRICS_PATH, PING_PATH, READ_METHODS
from podserve.runtime.core.logs import RUNTIME_FAULT
from podserve.runtime.core.metrics import Metrics
from podserve.runtime.http.messages import Answer, Exchange
from podserve.runtime.protocols.service_route import error_answer

log = logging.getLogger(__name__)

OTHER_ROUTE = names.OTHER_ROUTE


class ControlThread:
    """Answer every request the HTTP server hands over that is neither the service's nor a probe."""

    def __init__(self, service_route: str, metrics: Metrics, queue_size: int, registry=REGISTRY):
        self.service_route = service_route
        self.registry = registry  # what /metrics exports (the split layout's front: every process's, summed)
        self.metrics = metrics
        self.queue_size = queue_size
        self._work: queue.SimpleQueue = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._serve, name="control", daemon=True)
        self._refusal = error_answer(errors.Overloaded(f"the pod's control thread already has {queue_size} requests "
                                                       f"waiting (metrics, unknown routes); retry shortly"))

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._work.put(None)
        self._thread.join(timeout=5)

    def submit(self, exchange: Exchange) -> bool:
        """Queue `exchange`; answer 503 at once and return False when the queue is full."""
        if self._work.qsize() >= self.queue_size:
            exchange.answer(self._refusal)
            return False
        self._work.put(exchange)
        return True

    def _serve(self) -> None:
        while True:
            exchange = self._work.get()
            if exchange is None:
                return
            if exchange.abandoned:  # its caller has gone: nothing to answer
                continue
            try:
                answer = self.answer(exchange)
            except Exception as exc:  # never leave a caller without an answer
                log.exception("unexpected error on %s %s", exchange.method, exchange.path, extra=RUNTIME_FAULT)
                answer = self._error(ServingError(f"internal error: {type(exc).__name__}; see the server log"))
            exchange.answer(answer)

    def answer(self, exchange: Exchange) -> Answer:
        """The answer to `exchange` (the HTTP server leaves a HEAD answer's body out and announces its length)."""
        path, method = exchange.path, exchange.method
        if path == METRICS_PATH:
            if method in READ_METHODS:
                self.metrics.flush()  # what the event loop's turn in progress observed (Metrics.defer_per_turn)
                return Answer(200, generate_latest(self.registry), [("Content-Type", CONTENT_TYPE_LATEST)])
            return self._error(errors.MethodNotAllowed.on(method, path, READ_METHODS))
        if path == self.service_route:  # its POSTs never come here
            return self._error(errors.MethodNotAllowed.on(method, path, ("POST",)))
        return self._error(errors.NotFound(f"no route {path!r}; this server answers POST {self.service_route}, "
                                           f"GET {PING_PATH}, GET {LIVE_PATH}, GET {METRICS_PATH}"))

    def _error(self, error: ServingError) -> Answer:
        self.metrics.observe_request(OTHER_ROUTE, error.status, 0.0)
        return error_answer(error)
