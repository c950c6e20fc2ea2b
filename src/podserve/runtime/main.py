"""Start the pod's server: read the settings, then serve in one process, or supervise the split layout.

`python -m podserve.runtime` is the pod's entry point (PID 1). With `decode_processes` 0 (a CPU pod
by default) one process reads, decodes, batches and answers (`serve_in_one_process`); otherwise it
becomes the supervisor of the split layout (runtime/processes/supervisor.py, docs/processes.md).
"""

from __future__ import annotations

import asyncio
import logging
import resource
import sys

import prometheus_client
import uvloop

from podserve import errors
from podserve.routes import service_path
from podserve.runtime.batching.inline_policy import LoopRelief
from podserve.runtime.batching.pool import InstancePool
from podserve.runtime.batching.step_runner import request_threads
from podserve.runtime.core.devices import cpu_share, plan_devices
from podserve.runtime.core.lifecycle import GracefulShutdown, Lifecycle
from podserve.runtime.core.logs import configure_logging
from podserve.runtime.core.metrics import Metrics
from podserve.runtime.core.startup import StartupError, prepare_service
from podserve.runtime.http.admission import Door
from podserve.runtime.http.deadlines import Budgets
from podserve.runtime.http.server import Exchange, HttpLimits, HttpServer
from podserve.runtime.processes.layout import decoder_processes, pod_memory_plan
from podserve.runtime.protocols import api
from podserve.runtime.protocols.control import OTHER_ROUTE, ControlThread
from podserve.runtime.protocols.probes import PATHS as PROBE_PATHS
from podserve.runtime.protocols.probes import Probes
from podserve.runtime.protocols.service_route import ServiceRoute, error_answer
from podserve.runtime.protocols.v2_route import V2Route, describe_model
from podserve.runtime.protocols.video_route import VideoWork, video_threads
from podserve.settings import ServingSettings, SettingsError

log = logging.getLogger("podserve")

#: What the HTTP server itself refuses, by status.
_REFUSALS = {408: errors.RequestTimeout, 413: errors.PayloadTooLarge, 414: errors.InvalidInput,
             431: errors.HeadTooLarge, 503: errors.Overloaded}


def main() -> int:
    """Run the pod's server in the foreground; return the process exit code."""
    configure_logging()
    try:
        settings = ServingSettings.from_env()
    except SettingsError as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return 2
    if decoder_processes(settings) > 0:
        from podserve.runtime.processes.supervisor import supervise
        return supervise(settings)
    try:
        settings, handler_class = prepare_service()
    except StartupError as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return 2
    return serve_in_one_process(settings, handler_class)


def serve_in_one_process(settings: ServingSettings, handler_class: type) -> int:
    """The one-process layout: this process reads, decodes, batches and answers every request."""
    raise_open_file_limit()
    prometheus_client.disable_created_metrics()
    metrics = Metrics(settings.service_name)
    devices = plan_devices(settings)
    pool = InstancePool(handler_class, devices, settings, metrics)
    metrics.set_limits(settings, pool.names)
    route = service_path(settings.service_name)
    metrics.create_series(route, pool.names)
    lifecycle = Lifecycle()
    budgets = Budgets(settings)
    refusal = error_answer(errors.Overloaded(
        f"this pod is full: it already holds {pool.holding_limit()} requests (queue_size per instance); retry "
        f"shortly, or elsewhere"))
    memory = pod_memory_plan(settings)
    door = Door(route, pool.holding_limit, lifecycle, metrics, refusal, steps_cpu=lambda: service.runner.steps_cpu,
                body_budget=memory.bodies)
    workers, ffmpeg_threads = video_threads(settings)
    relief = LoopRelief(cpu_share(settings), lambda: lifecycle.in_flight, pool.lanes_take)
    service = ServiceRoute(route, settings, pool, door, request_threads(settings), relief, VideoWork(workers),
                           api.InputLimits.from_settings(settings, pool.holding_limit(), ffmpeg_threads,
                                                         memory.per_parse))
    control = ControlThread(route, metrics, settings.control_queue_size)
    probes = Probes(pool, lifecycle)

    def accept(exchange: Exchange, wire=None) -> None:
        budget, invalid = budgets.of_request(exchange.headers, len(exchange.body or b""))
        if door.admit(exchange, budget):
            service.start_call(exchange, exchange.received_at + budget, wire, invalid)

    open_inference = V2Route(route, settings.service_name, accept, probes,
                             describe=lambda: describe_model(pool.workers[0].handler) if pool.ready else None)
    server = http_server(settings, route, metrics, open_inference, probes, control, accept,
                         admit_head=lambda exchange: door.admit_head(exchange, budgets.of_headers(exchange.headers)))
    metrics.in_flight.set_function(lambda: lifecycle.in_flight)
    metrics.http_backlog.set_function(lambda: service.backlog)
    metrics.loop_relief.set_function(lambda: float(service.loop_relieved))
    metrics.admission_limit.set_function(pool.holding_limit)
    metrics.refusals_held.set_function(lambda: door.refusals_held)
    metrics.refusal_rate.set_function(lambda: door.refusal_rate)
    finish_timeout = settings.request_timeout_ms / 1000.0 + settings.stuck_batch_seconds
    shutdown = GracefulShutdown(server, lifecycle, pool.is_idle, settings.drain_seconds, finish_timeout)

    def started() -> None:
        loop = asyncio.get_running_loop()
        shutdown.install(loop)
        door.start(loop)
        service.start(loop)
        control.start()
        log.info("serving %s with %s on http://%s:%s: %d instance(s) on %s", settings.service_name,
                 settings.handler, settings.host, server.effective_port, len(devices), ", ".join(map(str, devices)),
                 extra={"fields": {"settings": settings.to_env(), "memory_plan": memory.__dict__}})
        pool.load_in_background()

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(server.serve(on_started=started))
    pool.stop()
    door.stop()
    service.stop()
    control.stop()
    log.info("exited cleanly")
    return 0


def http_server(settings: ServingSettings, route: str, metrics: Metrics, open_inference: V2Route, probes,
                control: ControlThread, accept, admit_head, sock=None) -> HttpServer:
    """The pod's HTTP server, routing `POST <route>` to `accept`, the Open Inference Protocol, the probes (answered
    in the loop) and the rest (the control thread); listening on `sock` when given (the split layout's front)."""

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
                      limits=HttpLimits.from_settings(settings), admit_head=admits_head,
                      body_seconds=budgets.of_headers, body_limit=body_limit, sock=sock,
                      answer_probe=probes.answer_request, on_over_limit=metrics.observe_over_limit,
                      on_linger_end=metrics.observe_linger_end, on_write_timeout=metrics.write_timeouts.inc)


def raise_open_file_limit() -> None:
    """Let the process open as many connections as the hard limit allows: a connection the loop cannot accept
    (EMFILE) would wait unseen in the kernel's accept queue."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError):
            log.warning("could not raise the open-file limit from %d to %d", soft, hard)
