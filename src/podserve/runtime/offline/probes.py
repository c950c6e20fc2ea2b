"""The worker's small HTTP server: /api/ping, /api/live and /metrics, with the server's meanings.

- `GET /api/ping`: 200 once every instance is loaded and warmed up and the worker consumes;
  503 with the reason while loading, after a load failure, and from the first moment of a
  shutdown (readiness and startup probe).
- `GET /api/live`: 200 unless the process is wedged (a batch thread dead or stuck, or the
  consume loop not turning for stuck_batch_seconds); never fails while loading (liveness).
- `GET /metrics`: Prometheus text format.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

from podserve.errors import NotReady, ServingError, Wedged
from podserve.routes import LIVE_PATH, METRICS_PATH, PING_PATH
from podserve.runtime.offline.worker import OfflineWorker
from podserve.runtime.protocols import api


class ProbeServer:
    """Serve the probes and metrics of `worker` on host:port from a daemon thread."""

    def __init__(self, worker: OfflineWorker, host: str, port: int):
        self.worker = worker
        self.httpd = ThreadingHTTPServer((host, port), _handler_class(worker))
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self._thread = threading.Thread(target=self.httpd.serve_forever, name="probes", daemon=True)

    def start(self) -> "ProbeServer":
        self._thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def ping_answer(worker: OfflineWorker) -> tuple[int, dict]:
    pool = worker.pool
    if worker.stopping.is_set():
        return _error(NotReady("shutting down: this worker fetches no more messages"))
    if not pool.ready:
        return _error(NotReady(f"not ready: {pool.status()}"))
    if not worker.subscribed:
        return _error(NotReady(f"not ready: not yet subscribed to {worker.topic}"))
    return 200, {"results": {"ready": True, "instances": len(pool.workers)}, "msg": pool.status()}


def live_answer(worker: OfflineWorker) -> tuple[int, dict]:
    problem = worker.liveness_problem()
    if problem:
        return _error(Wedged(f"wedged: {problem}"))
    return 200, {"results": {"alive": True}, "msg": "ok"}


def _error(error: ServingError) -> tuple[int, dict]:
    return error.status, api.error_body(error)


def _handler_class(worker: OfflineWorker) -> type[BaseHTTPRequestHandler]:
    class Probes(BaseHTTPRequestHandler):
        server_version = "podserve-offline"

        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            path = self.path.split("?", 1)[0]
            if path == METRICS_PATH:
                self._send(200, generate_latest(REGISTRY), CONTENT_TYPE_LATEST)
                return
            answers = {PING_PATH: ping_answer, LIVE_PATH: live_answer}
            if path in answers:
                status, body = answers[path](worker)
            else:
                status, body = 404, {"results": None, "msg": f"no route {path!r}; this worker answers GET "
                                     f"{PING_PATH}, {LIVE_PATH}, {METRICS_PATH}", "error": "not_found",
                                     "field": None}
            self._send(status, json.dumps(body).encode(), "application/json")

        def _send(self, status: int, body: bytes, content_type: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *_args) -> None:  # probes every few seconds: no access log
            pass

    return Probes
