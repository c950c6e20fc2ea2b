"""The one-process layout: this process reads, decodes, batches and answers every request (docs/processes.md)."""

from __future__ import annotations

import asyncio
import logging

import prometheus_client
import uvloop

from podserve import errors
from podserve.routes import service_path
from podserve.runtime.batching.inline_policy import LoopRelief
from podserve.runtime.batching.pool import InstancePool
from podserve.runtime.batching.step_runner import request_threads
from podserve.runtime.core.devices import cpu_share, plan_devices
from podserve.runtime.core.lifecycle import GracefulShutdown, Lifecycle
from podserve.runtime.core.metrics import Metrics
from podserve.runtime.http.admission import Admission
from podserve.runtime.http.deadlines import Budgets
from podserve.runtime.http.messages import Exchange
from podserve.runtime.http.server import raise_open_file_limit
from podserve.runtime.processes.layout import pod_memory_plan
from podserve.runtime.protocols import api
from podserve.runtime.protocols.control import ControlThread
from podserve.runtime.protocols.probes import Probes
from podserve.runtime.protocols.router import http_server
from podserve.runtime.protocols.service_route import ServiceRoute, error_answer
from podserve.runtime.protocols.v2_route import V2Route, describe_model
from podserve.runtime.protocols.video_route import VideoWork, video_threads
from podserve.settings import ServingSettings

log = logging.getLogger("podserve")


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
    admission = Admission(route, pool.holding_limit, lifecycle, metrics, refusal, error_answer,
                          steps_cpu=lambda: service.runner.steps_cpu, body_budget=memory.bodies)
    workers, ffmpeg_threads = video_threads(settings)
    relief = LoopRelief(cpu_share(settings), lambda: lifecycle.in_flight, pool.lanes_take)
    service = ServiceRoute(route, settings, pool, admission, request_threads(settings), relief, VideoWork(workers),
                           api.InputLimits.from_settings(settings, pool.holding_limit(), ffmpeg_threads,
                                                         memory.per_parse))
    control = ControlThread(route, metrics, settings.control_queue_size)
    probes = Probes(pool, lifecycle)

    def accept(exchange: Exchange, wire=None) -> None:
        budget, invalid = budgets.of_request(exchange.headers, len(exchange.body or b""))
        if admission.admit(exchange, budget):
            service.start_call(exchange, exchange.received_at + budget, wire, invalid)

    open_inference = V2Route(route, settings.service_name, accept, probes,
                             describe=lambda: describe_model(pool.workers[0].handler) if pool.ready else None)
    server = http_server(settings, route, metrics, open_inference, probes, control, accept,
                         admit_head=lambda exchange: admission.admit_head(exchange,
                                                                          budgets.of_headers(exchange.headers)))
    metrics.in_flight.set_function(lambda: lifecycle.in_flight)
    metrics.http_backlog.set_function(lambda: service.backlog)
    metrics.loop_relief.set_function(lambda: float(service.loop_relieved))
    metrics.admission_limit.set_function(pool.holding_limit)
    metrics.refusals_held.set_function(lambda: admission.refusals_held)
    metrics.refusal_rate.set_function(lambda: admission.refusal_rate)
    finish_timeout = settings.request_timeout_ms / 1000.0 + settings.stuck_batch_seconds
    shutdown = GracefulShutdown(server, lifecycle, pool.is_idle, settings.drain_seconds, finish_timeout)

    def started() -> None:
        loop = asyncio.get_running_loop()
        shutdown.install(loop)
        admission.start(loop)
        service.start(loop)
        control.start()
        log.info("serving %s with %s on http://%s:%s: %d instance(s) on %s", settings.service_name,
                 settings.handler, settings.host, server.effective_port, len(devices), ", ".join(map(str, devices)),
                 extra={"fields": {"settings": settings.to_env(), "memory_plan": memory.__dict__}})
        pool.load_in_background()

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(server.serve(on_started=started))
    pool.stop()
    admission.stop()
    service.stop()
    control.stop()
    log.info("exited cleanly")
    return 0
