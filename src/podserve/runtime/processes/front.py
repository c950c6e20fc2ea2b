"""The pod's front, the same code in both layouts: HTTP, admission, the probes, /metrics, the drain.

One process (processes/one_process.py) hands what it admits to its own service route and model instances; the split
layout's front process (processes/front_process.py) forwards it to a decoder process. Everything else a caller meets
is this module's, built once here: the HTTP server and its routes (runtime/protocols/router.py), admission with the
pod's places, body budget, paced 503s and the backstop that answers every admitted request by its deadline and
grace (runtime/http/admission.py), the probes over the model's state, the Open Inference Protocol's health and
metadata, the control thread, and the SIGTERM drain, whose bound podserve.stop_bounds states.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Callable

import uvloop

from podserve import errors
from podserve.routes import service_path
from podserve.runtime.core.lifecycle import GracefulShutdown, Lifecycle
from podserve.runtime.core.metrics import Metrics
from podserve.runtime.http.admission import Admission
from podserve.runtime.http.deadlines import Budgets
from podserve.runtime.http.messages import Exchange
from podserve.runtime.http.server import raise_open_file_limit
from podserve.runtime.processes.layout import pod_memory_plan
from podserve.runtime.protocols.control import ControlThread
from podserve.runtime.protocols.probes import Probes
from podserve.runtime.protocols.router import http_server
from podserve.runtime.protocols.service_route import error_answer
from podserve.runtime.protocols.v2_route import V2Route
from podserve.settings import ServingSettings
from podserve.stop_bounds import answer_bound_seconds

log = logging.getLogger("podserve")


class Front:
    """The pod's HTTP side over `model` (what the probes read: an InstancePool, or the split layout's PodView)."""

    def __init__(self, settings: ServingSettings, metrics: Metrics, model, holding_limit: Callable[[], int],
                 steps_cpu: Callable[[], float] = lambda: 0.0):
        raise_open_file_limit()
        self.settings, self.metrics = settings, metrics
        self.route = service_path(settings.service_name)
        self.lifecycle = Lifecycle()
        self.budgets = Budgets(settings)
        refusal = error_answer(errors.Overloaded(f"this pod is full: it already holds {holding_limit()} requests "
                                                 f"(queue_size per instance); retry shortly, or elsewhere"))
        self.memory = pod_memory_plan(settings)
        self.admission = Admission(self.route, holding_limit, self.lifecycle, metrics, refusal, error_answer,
                                   steps_cpu=steps_cpu, body_budget=self.memory.bodies)
        self.probes = Probes(model, self.lifecycle)
        self.server = None

    def serve(self, start: Callable, describe: Callable[[], dict | None], control: ControlThread,
              on_started: Callable[[asyncio.AbstractEventLoop], None], sock=None) -> int:
        """Serve until SIGTERM has drained the pod: each admitted request goes to `start(exchange, deadline, wire,
        invalid)` (its wire format, None for /api/<service>'s; the error its headers hold, or None)."""
        admission, budgets = self.admission, self.budgets

        def accept(exchange: Exchange, wire=None) -> None:
            budget, invalid = budgets.of_request(exchange.headers, len(exchange.body or b""))
            if admission.admit(exchange, budget):
                start(exchange, exchange.received_at + budget, wire, invalid)

        open_inference = V2Route(self.route, self.settings.service_name, accept, self.probes, describe=describe)
        self.server = server = http_server(
            self.settings, self.route, self.metrics, open_inference, self.probes, control, accept, sock=sock,
            uploads=self.memory.uploads,
            admit_head=lambda exchange: admission.admit_head(exchange, budgets.of_headers(exchange.headers)))
        shutdown = GracefulShutdown(server, self.lifecycle, self.settings.drain_seconds,
                                    answer_bound_seconds(self.settings))

        def started() -> None:
            loop = asyncio.get_running_loop()
            shutdown.install(loop)
            admission.start(loop)
            control.start()
            on_started(loop)

        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            runner.run(server.serve(on_started=started))
        admission.stop()
        control.stop()
        return 0
