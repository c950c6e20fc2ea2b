"""The Flask app of the pod: probes, metrics, and the service's `/api/<service_name>` route.

`POST /api/<service_name>` is the one hot path: a thin WSGI layer in front of Flask sends it
straight to the view with the WSGI environ, skipping Flask's per-request machinery (contexts,
URL matching, hooks: ~0.1 ms of CPU per request) and Werkzeug's request and response objects;
views answer with `JsonAnswer`, a bare WSGI callable (bench/optimisations.json). Everything
else goes through Flask; both ways run the same view and the same error handlers.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Callable
from urllib.parse import parse_qsl

from flask import Flask, Response
from flask import request as flask_request
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest
from werkzeug.exceptions import HTTPException
from werkzeug.http import HTTP_STATUS_CODES
from werkzeug.wrappers import Request

from podserve import errors
from podserve.errors import DeadlineExceeded, HandlerFailed, InvalidInput, NotReady, ServingError
from podserve.handler import Payload
from podserve.routes import LIVE_PATH, METRICS_PATH, PING_PATH, service_path
from podserve.runtime import api
from podserve.runtime.admission import RECEIVED_AT
from podserve.runtime.verbs import call_verb
from podserve.runtime.lifecycle import Lifecycle
from podserve.runtime.logs import log_request
from podserve.runtime.metrics import Metrics
from podserve.runtime.pool import InstancePool
from podserve.settings import ServingSettings

log = logging.getLogger(__name__)

#: Headers by which a caller (or Envoy, from the route's timeout) may shorten the deadline.
DEADLINE_HEADERS = ("X-Request-Timeout-Ms", "X-Envoy-Expected-Rq-Timeout-Ms")
_DEADLINE_KEYS = [(header, "HTTP_" + header.upper().replace("-", "_")) for header in DEADLINE_HEADERS]

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

    @app.get(PING_PATH)
    def ping() -> JsonAnswer:
        if lifecycle.draining:
            return error_response(NotReady("shutting down: this pod no longer takes new traffic"))
        if not pool.ready:
            return error_response(NotReady(f"not ready: {pool.status()}"))
        return respond(200, {"results": {"ready": True, "instances": len(pool.workers)}, "msg": pool.status()})

    @app.get(LIVE_PATH)
    def live() -> JsonAnswer:
        problem = pool.liveness_problem()
        if problem:
            return error_response(errors.Wedged(f"wedged: {problem}"))
        return respond(200, {"results": {"alive": True}, "msg": "ok"})

    @app.get(METRICS_PATH)
    def metrics_page() -> Response:
        return Response(generate_latest(REGISTRY), mimetype=CONTENT_TYPE_LATEST)

    def infer(environ: dict) -> JsonAnswer:
        # The clock starts when waitress began reading the request: time spent waiting for a thread counts.
        started = environ.get(RECEIVED_AT) or time.monotonic()
        lifecycle.request_started()
        payload: Payload | None = None
        item = None
        failure = None
        try:
            deadline = started + _timeout_seconds(environ, settings)
            if time.monotonic() >= deadline:
                raise DeadlineExceeded(f"the request's deadline passed after {_ms(time.monotonic() - started)} ms "
                                       f"waiting for a request thread; it was not run")
            handler = pool.decoder()
            pool.ensure_room()
            with pool.admit() as admission:
                payload = api.parse_request(environ.get("CONTENT_TYPE"), _read_body(environ, settings.max_body_bytes),
                                            QueryArgs(environ.get("QUERY_STRING", "")), settings.max_image_pixels)
                model_input = call_verb(handler.decode, payload)
                item = pool.submit(model_input, handler.batch_key(model_input), deadline, admission)
            output = item.wait()
            results = call_verb(item.worker.handler.encode, output)
            try:
                response = respond(200, api.success_body(payload, results))
            except (TypeError, ValueError) as exc:
                raise HandlerFailed(f"{type(handler).__name__}.encode returned something JSON cannot hold "
                                    f"({exc}); return lists, numbers, strings, dicts") from None
        except ServingError as exc:
            failure = exc.message
            response = error_response(exc, payload)
        finally:
            lifecycle.request_finished()
        seconds = time.monotonic() - started
        metrics.observe_request(route, response.status_code, seconds)
        log_request({"route": route, "status": response.status_code, **api.ids_of(payload),
                     "total_ms": round(seconds * 1000, 2),
                     "queue_ms": round(item.queue_seconds * 1000, 2) if item else None,
                     "infer_ms": round(item.inference_seconds * 1000, 2) if item else None,
                     "batch": item.batch_size if item else None,
                     "instance": item.worker.name if item and item.worker else None,
                     "error": failure})
        return response

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

    app.add_url_rule(route, "infer", lambda: infer(flask_request.environ), methods=["POST"])
    app.register_error_handler(HTTPException, lambda exc: http_error(flask_request, exc))
    app.register_error_handler(Exception, lambda exc: unexpected(flask_request, exc))
    app.wsgi_app = ServiceRouteFirst(app.wsgi_app, route, settings.max_body_bytes, infer, http_error, unexpected)
    return app


class ServiceRouteFirst:
    """WSGI: `POST <route>` straight to `view` (errors to the same handlers Flask uses); the rest to Flask."""

    def __init__(self, flask_wsgi_app: Callable, route: str, max_body_bytes: int, view: Callable,
                 on_http_error: Callable, on_unexpected: Callable):
        self.flask_wsgi_app = flask_wsgi_app
        self.route = route
        self.view, self.on_http_error, self.on_unexpected = view, on_http_error, on_unexpected
        # Flask reads the limit from the app's config; a plain request carries it on its class.
        self.request_class = type("ServiceRequest", (Request,), {"max_content_length": max_body_bytes})

    def __call__(self, environ: dict, start_response: Callable):
        if environ.get("REQUEST_METHOD") != "POST" or environ.get("PATH_INFO") != self.route:
            return self.flask_wsgi_app(environ, start_response)
        try:
            response = self.view(environ)
        except HTTPException as exc:
            response = self.on_http_error(self.request_class(environ), exc)
        except Exception as exc:
            response = self.on_unexpected(self.request_class(environ), exc)
        return response(environ, start_response)


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


class QueryArgs:
    """The query string's parameters (the first value of each), parsed only when one is asked for."""

    def __init__(self, query: str):
        self.query, self._parsed = query, None

    def get(self, name: str, default=None):
        if self._parsed is None:
            self._parsed = {}
            for key, value in parse_qsl(self.query, keep_blank_values=True):
                self._parsed.setdefault(key, value)
        return self._parsed.get(name, default)


def _ms(seconds: float) -> float:
    return round(seconds * 1000, 1)


def _read_body(environ: dict, limit: int) -> bytes:
    """The body as bytes, or PayloadTooLarge over `limit` (waitress always sets Content-Length, de-chunked too)."""
    try:
        length = int(environ.get("CONTENT_LENGTH") or 0)
    except ValueError:
        raise InvalidInput("Content-Length is not a number of bytes", field="Content-Length") from None
    if length > limit:
        raise errors.PayloadTooLarge(f"the body is {length} bytes, over the limit of {limit}; send a smaller image",
                                     field="body")
    return environ["wsgi.input"].read(length) if length > 0 else b""


def _timeout_seconds(environ: dict, settings: ServingSettings) -> float:
    """Return the request's time budget: the server's default, lowered (never raised) by a header."""
    budget = settings.request_timeout_ms
    for header, key in _DEADLINE_KEYS:
        raw = environ.get(key)
        if raw is None:
            continue
        try:
            asked = float(raw)
        except ValueError:
            raise InvalidInput(f"header {header}: {raw!r} is not a number of milliseconds", field=header) from None
        if not asked > 0:
            raise InvalidInput(f"header {header}: {raw!r} must be a positive number of milliseconds", field=header)
        budget = min(budget, asked)
    return budget / 1000.0


