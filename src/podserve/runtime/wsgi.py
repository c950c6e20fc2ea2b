"""Run the Flask app (metrics, every route but the service's and the probes') for requests the HTTP server read.

One control thread calls the WSGI app, so a scrape never waits behind the request threads'
decoding, and the app's views never run in the event loop. Its queue is bounded: beyond
`control_queue_size` waiting requests, a flood of `/metrics` or 404s gets 503 at once.
"""

from __future__ import annotations

import io
import logging
import queue
import sys
import threading
from typing import Callable

from podserve.errors import Overloaded, ServingError
from podserve.runtime.httpserver import Answer, Exchange
from podserve.runtime.service_route import error_answer

log = logging.getLogger(__name__)


class WsgiThread:
    """Serve exchanges through `app` (a WSGI callable) on one thread of its own."""

    def __init__(self, app: Callable, server_name: str, port: int, queue_size: int):
        self.app = app
        self.server_name, self.port = server_name, str(port)
        self.queue_size = queue_size
        self._work: queue.SimpleQueue = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._serve, name="control", daemon=True)
        self._refusal = error_answer(Overloaded(f"the pod's control thread already has {queue_size} requests waiting "
                                                f"(metrics, unknown routes); retry shortly"))

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._work.put(None)
        self._thread.join(timeout=5)

    def submit(self, exchange: Exchange) -> bool:
        """Queue `exchange` for the app; answer 503 at once and return False when the queue is full."""
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
            if exchange.abandoned:  # its caller has gone: nothing to run it for
                continue
            try:
                exchange.answer(self.call(exchange))
            except Exception as exc:  # the app's own error handlers answer errors; this is a last resort
                log.exception("the WSGI app failed on %s %s", exchange.method, exchange.path)
                exchange.answer(error_answer(ServingError(f"internal error: {type(exc).__name__}; see the server log")))

    def call(self, exchange: Exchange) -> Answer:
        """Run the app for `exchange` and return its complete answer."""
        captured: dict = {}

        def start_response(status: str, headers: list[tuple[str, str]], exc_info=None):
            captured["status"], captured["headers"] = status, headers
            return lambda data: chunks.append(data)

        chunks: list[bytes] = []
        result = self.app(environ(exchange, self.server_name, self.port), start_response)
        try:
            chunks.extend(result)
        finally:
            close = getattr(result, "close", None)
            if close is not None:
                close()
        headers, length = [], None
        for name, value in captured["headers"]:
            lowered = name.lower()
            if lowered == "content-length":
                length = int(value)
            elif lowered not in ("connection", "date", "server"):
                headers.append((name, value))
        body = b"".join(chunks)
        # A HEAD answer announces the GET's length: the app's own Content-Length, its body being left out.
        return Answer(int(captured["status"].split(" ", 1)[0]), body, headers,
                      length=length if exchange.method == "HEAD" and length is not None else None)


def environ(exchange: Exchange, server_name: str, port: str) -> dict:
    """The WSGI environ (PEP 3333) of `exchange`."""
    env = {
        "REQUEST_METHOD": exchange.method, "SCRIPT_NAME": "", "PATH_INFO": exchange.path,
        "QUERY_STRING": exchange.query, "SERVER_NAME": server_name, "SERVER_PORT": port,
        "SERVER_PROTOCOL": f"HTTP/{exchange.version}", "REMOTE_ADDR": exchange.peer,
        "REQUEST_URI": exchange.target.decode("latin-1"), "RAW_URI": exchange.target.decode("latin-1"),
        "CONTENT_LENGTH": str(len(exchange.body)),
        "wsgi.version": (1, 0), "wsgi.url_scheme": "http", "wsgi.input": io.BytesIO(exchange.body),
        "wsgi.errors": sys.stderr, "wsgi.multithread": True, "wsgi.multiprocess": False, "wsgi.run_once": False,
    }
    for name, value in exchange.headers.items():
        if name == "content-type":
            env["CONTENT_TYPE"] = value
        elif name != "content-length":
            env["HTTP_" + name.upper().replace("-", "_")] = value
    return env
