"""The front process of the split layout: the pod's front (processes/front.py) over decoder processes.

It runs platform code only, so what a caller or a team's code does never stops it answering probes: it reads every
request, admits or refuses it (the pod-wide limits live in this one process: places, the paced 503s, pending bodies,
connections, and the backstop that answers every admitted request by its deadline and grace), answers the probes,
the Open Inference Protocol's health and metadata and /metrics from the pod's shared state (processes/pod_view.py,
processes/pod_metrics.py), and forwards each admitted request whole to a decoder process (processes/decoders.py),
whose answer comes back here to be counted and written.

    python -m podserve.runtime.processes.front_process   (spawned by the supervisor, never by hand)
"""

from __future__ import annotations

import logging
import os
import socket
import sys

import prometheus_client
from prometheus_client import CollectorRegistry, Counter, ProcessCollector

from podserve import metric_names as names
from podserve.runtime.batching.pool import set_aside_start_up_objects
from podserve.runtime.core.logs import configure_logging
from podserve.runtime.core.metrics import Metrics
from podserve.runtime.processes import layout
from podserve.runtime.processes.child import Slot, die_with_parent
from podserve.runtime.processes.decoders import Decoders
from podserve.runtime.processes.front import Front
from podserve.runtime.processes.pod_metrics import PodMetrics, ProcessFiles
from podserve.runtime.processes.pod_view import PodView
from podserve.runtime.protocols.control import ControlThread
from podserve.settings import ServingSettings

log = logging.getLogger("podserve.front")


def main() -> int:
    die_with_parent()
    configure_logging()
    settings = ServingSettings.from_env()
    slot = Slot()
    state = slot.state
    prometheus_client.disable_created_metrics()
    metrics = Metrics(settings.service_name, live_gauges=False)
    metrics.count_runtime_faults()
    lost = Counter(names.REQUESTS_LOST, "Requests answered 502 because the decoder process holding them ended.",
                   ("service", "reason")).labels(settings.service_name, "decoder_ended")
    limit = layout.holding_limit(settings)
    view = PodView(state, None, settings)
    front = Front(settings, metrics, view, lambda: limit)
    metrics.create_series(front.route, [])  # the model process creates its instances' series
    decoders = view.decoders = Decoders(settings, state, front.admission, front.route, lost)
    registry = CollectorRegistry()
    ProcessFiles(registry)
    registry.register(PodMetrics(settings, state, front.lifecycle, front.admission, limit))
    ProcessCollector(pid=lambda: int(os.environ[layout.SUPERVISOR_PID]), registry=registry)  # the pod's PID 1
    listener = socket.socket(fileno=int(os.environ[layout.FRONT_FD]))

    def started(loop) -> None:
        metrics.defer_per_turn(loop)
        decoders.start(loop, listener)
        slot.keep_beating(loop)
        slot.ready()
        log.info("front: %d objects from start-up set aside from garbage collection", set_aside_start_up_objects())
        log.info("front of %s on http://%s:%s", settings.service_name, settings.host, front.server.effective_port)

    code = front.serve(decoders.forward, lambda: state.info().get("v2") if state.model["ready"] else None,
                       ControlThread(front.route, metrics, settings.control_queue_size, registry),
                       started, sock=socket.socket(fileno=int(os.environ[layout.HTTP_FD])))
    listener.close()
    metrics.flush()
    log.info("front exited cleanly")
    return code


if __name__ == "__main__":
    sys.exit(main())
