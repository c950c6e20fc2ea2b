"""The one-process layout: the split layout's parts in one process (docs/processes.md).

The front (processes/front.py: HTTP, admission and its backstop, probes, /metrics, the drain) is the split layout's;
what it admits goes to this process's own service route (a decoder's, runtime/protocols/service_route.py) over its
own model instances (the model process's, runtime/batching/pool.py) instead of across processes.
"""

from __future__ import annotations

import logging
import time

import prometheus_client

from podserve.runtime.batching.inline_policy import LoopRelief
from podserve.runtime.batching.pool import InstancePool
from podserve.runtime.batching.step_runner import BEGIN_TURN_SECONDS, request_threads
from podserve.runtime.core.devices import cpu_share, plan_devices
from podserve.runtime.core.metrics import Metrics
from podserve.runtime.processes.front import Front
from podserve.runtime.processes.layout import pod_memory_plan
from podserve.runtime.protocols import api
from podserve.runtime.protocols.control import ControlThread
from podserve.runtime.protocols.service_route import ServiceRoute
from podserve.runtime.protocols.v2_route import describe_model
from podserve.runtime.protocols.video_route import VideoWork, video_threads
from podserve.settings import ServingSettings
from podserve.stop_bounds import STOP_SECONDS

log = logging.getLogger("podserve")


class OneProcessModel(InstancePool):
    """The model instances, as the probes read them: liveness also fails when a request thread is stuck in a step
    (here no supervisor can replace the process that holds it: Kubernetes restarts the pod)."""

    service: ServiceRoute | None = None

    def liveness_problem(self) -> str | None:
        problem = super().liveness_problem()
        if problem is None and self.service is not None:
            problem = self.service.stuck_problem()
        return problem


def serve_in_one_process(settings: ServingSettings, handler_class: type) -> int:
    """The one-process layout: this process reads, decodes, batches and answers every request."""
    prometheus_client.disable_created_metrics()
    metrics = Metrics(settings.service_name)
    metrics.count_runtime_faults()
    devices = plan_devices(settings)
    pool = OneProcessModel(handler_class, devices, settings, metrics)
    metrics.set_limits(settings, pool.names)
    memory = pod_memory_plan(settings)
    front = Front(settings, metrics, pool, pool.holding_limit, steps_cpu=lambda: service.runner.steps_cpu)
    metrics.create_series(front.route, pool.names)
    workers, ffmpeg_threads = video_threads(settings)
    lifecycle, admission = front.lifecycle, front.admission
    relief = LoopRelief(cpu_share(settings), lambda: lifecycle.in_flight, pool.lanes_take)
    service = pool.service = ServiceRoute(
        front.route, settings, pool, admission, request_threads(settings), relief, VideoWork(workers),
        api.InputLimits.from_settings(settings, pool.holding_limit(), ffmpeg_threads, memory.per_parse),
        begin_turn_seconds=BEGIN_TURN_SECONDS)  # its loop also serves HTTP: finished batches answered between turns
    metrics.in_flight.set_function(lambda: lifecycle.in_flight)
    metrics.http_backlog.set_function(lambda: service.backlog)
    metrics.loop_relief.set_function(lambda: float(service.loop_relieved))
    metrics.admission_limit.set_function(pool.holding_limit)
    metrics.refusals_held.set_function(lambda: admission.refusals_held)
    metrics.refusal_rate.set_function(lambda: admission.refusal_rate)

    def started(loop) -> None:
        service.start(loop)
        log.info("serving %s with %s on http://%s:%s: %d instance(s) on %s", settings.service_name,
                 settings.handler, settings.host, front.server.effective_port, len(devices),
                 ", ".join(map(str, devices)),
                 extra={"fields": {"settings": settings.to_env(), "memory_plan": memory.describe()}})
        pool.load_in_background()

    code = front.serve(service.start_call, lambda: describe_model(pool.workers[0].handler) if pool.ready else None,
                       ControlThread(front.route, metrics, settings.control_queue_size), started)
    until = time.monotonic() + STOP_SECONDS  # every request is answered: a step or batch still running has nobody
    pool.stop(timeout=STOP_SECONDS)
    service.stop(until)
    log.info("exited cleanly")
    return code
