"""The pod's HTTP routes: `POST /api/<service>`, the Open Inference Protocol, the probes (answered in the loop) and
the rest (the control thread), and the answers to what the HTTP server itself refuses (both layouts' front)."""

from __future__ import annotations

from podserve import errors
from podserve.runtime.core.metrics import Metrics
from podserve.runtime.http.deadlines import Budgets
from podserve.runtime.http.messages import Exchange, HttpLimits
from podserve.runtime.http.server import HttpServer
from podserve.runtime.protocols import api
from podserve.runtime.protocols.control import OTHER_ROUTE, ControlThread
from podserve.runtime.protocols.probes import PATHS as PROBE_PATHS
from podserve.runtime.protocols.service_route import error_answer
from podserve.runtime.protocols.v2_route import V2Route
from podserve.settings import ServingSettings

#: What the HTTP server itself refuses, by status.
_REFUSALS = {408: errors.RequestTimeout, 413: errors.PayloadTooLarge, 414: errors.InvalidInput,
             431: errors.HeadTooLarge, 503: errors.Overloaded}


def http_server(settings: ServingSettings, route: str, metrics: Metrics, open_inference: V2Route, probes,
                control: ControlThread, accept, admit_head, uploads: int, sock=None) -> HttpServer:
    """The pod's HTTP server, routing `POST <route>` to `accept`, the Open Inference Protocol, the probes (answered
    in the loop) and the rest (the control thread); reading bodies within `uploads` bytes at once (the pod's memory
    plan's); listening on `sock` when given (the split layout's front)."""

    def dispatch(exchange: Exchange) -> None:
        if exchange.path == route and exchange.method == "POST":
            accept(exchange)
        elif open_inference.serves(exchange.path):
            open_inference.dispatch(exchange)
        elif exchange.path in PROBE_PATHS:
            exchange.answer(probes.answer(exchange))
        elif not control.submit(exchange):
            metrics.observe_request(OTHER_ROUTE, errors.Overloaded.status, 0.0)

    def admits_head(exchange: Exchange) -> bool:
        if exchange.path == route and exchange.method == "POST" or open_inference.is_infer(exchange):
            return admit_head(exchange)
        return True

    def body_limit(exchange: Exchange) -> int:
        if exchange.path == route and exchange.method == "POST":
            return api.body_limit(settings, exchange.headers.get("content-type"))
        return settings.max_body_bytes

    def refuse(exchange: Exchange, status: int, message: str, field: str | None) -> None:
        error = _REFUSALS.get(status, errors.InvalidInput)(message, field=field)
        error.status = status
        metrics.observe_request(route if exchange.path == route else OTHER_ROUTE, status, 0.0)
        exchange.answer(error_answer(error, close=True))

    budgets = Budgets(settings)
    return HttpServer(settings.host, settings.port, dispatch=dispatch, refuse=refuse,
                      limits=HttpLimits.from_settings(settings, uploads), admit_head=admits_head,
                      body_seconds=budgets.of_headers, body_limit=body_limit, sock=sock,
                      answer_probe=probes.answer_request, on_over_limit=metrics.observe_over_limit,
                      on_linger_end=metrics.observe_linger_end, on_write_timeout=metrics.write_timeouts.inc)
