"""The Flask app of the pod: metrics, and the answers for routes that do not exist.

`POST /api/<service_name>`, the one hot path, does not go through Flask: the HTTP server
hands it to runtime/service_route.py; the probes are answered by the event loop itself
(runtime/probes.py). Everything else the pod answers comes from here, on the control thread
(runtime/wsgi.py).
"""

from __future__ import annotations

import json
import logging
from typing import Callable

from flask import Flask, Response
from flask import request as flask_request
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest
from werkzeug.exceptions import HTTPException
from werkzeug.http import HTTP_STATUS_CODES
from werkzeug.wrappers import Request

from podserve import errors
from podserve.errors import InvalidInput, ServingError
from podserve.handler import Payload
from podserve.routes import LIVE_PATH, METRICS_PATH, PING_PATH, service_path
from podserve.runtime import api
from podserve.runtime.lifecycle import Lifecycle
from podserve.runtime.metrics import Metrics
from podserve.runtime.pool import InstancePool
from podserve.settings import ServingSettings

log = logging.getLogger(__name__)

_HTTP_ERRORS = {404: errors.NotFound, 405: errors.MethodNotAllowed, 413: errors.PayloadTooLarge,
                415: errors.UnsupportedMediaType}


def create_app(settings: ServingSettings, pool: InstancePool, lifecycle: Lifecycle, metrics: Metrics) -> Flask:
    """Return the WSGI app serving one service from `pool`."""
    app = Flask("podserve")
    app.config["MAX_CONTENT_LENGTH"] = settings.max_body_bytes
    route = service_path(settings.service_name)
    metrics.in_flight.set_function(lambda: lifecycle.in_flight)

    def respond(status: int, body: dict, headers: dict[str, str] | None = None) -> JsonAnswer:
        return JsonAnswer(status, json.dumps(body, allow_nan=False).encode(), headers)

    def error_response(error: ServingError, payload: Payload | None = None) -> JsonAnswer:
        return respond(error.status, api.error_body(error, payload), error.headers)

    @app.get(METRICS_PATH)
    def metrics_page() -> Response:
        return Response(generate_latest(REGISTRY), mimetype=CONTENT_TYPE_LATEST)

    def http_error(request: Request, exc: HTTPException) -> JsonAnswer:
        kind = _HTTP_ERRORS.get(exc.code or 500)
        if kind is errors.NotFound:
            error = kind(f"no route {request.path!r}; this server answers POST {route}, GET {PING_PATH}, "
                         f"GET {LIVE_PATH}, GET {METRICS_PATH}")
        elif kind is errors.MethodNotAllowed:
            error = kind(f"{request.method} is not allowed on {request.path}; allowed: "
                         f"{', '.join(sorted(exc.valid_methods or []))}")
        elif kind is not None:
            error = kind(exc.description or kind.__name__)
        else:
            error = InvalidInput(exc.description or "bad request") if 400 <= (exc.code or 500) < 500 else \
                ServingError(exc.description or "internal error")
            error.status = exc.code or 500
        metrics.observe_request("other", error.status, 0.0)
        return error_response(error)

    def unexpected(request: Request, exc: Exception) -> JsonAnswer:
        log.exception("unexpected error on %s %s", request.method, request.path)
        return error_response(ServingError(f"internal error: {type(exc).__name__}; see the server log"))

    def served_elsewhere() -> JsonAnswer:
        # POST <route> never reaches Flask: the HTTP server hands it to runtime/service_route.py. The rule is
        # here so that other methods on the route get 405 naming POST.
        return error_response(ServingError(f"POST {route} is served by the pod's HTTP server, not this app"))

    app.add_url_rule(route, "infer", served_elsewhere, methods=["POST"])
    app.register_error_handler(HTTPException, lambda exc: http_error(flask_request, exc))
    app.register_error_handler(Exception, lambda exc: unexpected(flask_request, exc))
    return app


class JsonAnswer:
    """A JSON response as a bare WSGI app: what the views return instead of a Werkzeug Response, which costs more
    to build (Flask takes it too, as a WSGI callable)."""

    __slots__ = ("status_code", "body", "headers")

    def __init__(self, status: int, body: bytes, headers: dict[str, str] | None = None):
        self.status_code, self.body, self.headers = status, body, headers

    def __call__(self, environ: dict, start_response: Callable) -> list[bytes]:
        headers = [("Content-Type", "application/json"), ("Content-Length", str(len(self.body)))]
        if self.headers:
            headers += self.headers.items()
        start_response(_STATUS_LINES.get(self.status_code) or f"{self.status_code} Error", headers)
        return [self.body]


_STATUS_LINES = {code: f"{code} {reason.upper()}" for code, reason in HTTP_STATUS_CODES.items()}
