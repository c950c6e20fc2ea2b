"""Start the pod's server: read the settings, load the instances, serve until SIGTERM, exit 0."""

from __future__ import annotations

import logging
import resource
import sys

import prometheus_client
import waitress

from podserve.errors import Overloaded
from podserve.routes import service_path
from podserve.runtime import api
from podserve.runtime.admission import Admission, AdmissionDispatcher
from podserve.runtime.app import create_app
from podserve.runtime.devices import plan_devices
from podserve.runtime.lifecycle import GracefulShutdown, Lifecycle
from podserve.runtime.logs import configure_logging
from podserve.runtime.metrics import Metrics
from podserve.runtime.pool import InstancePool
from podserve.runtime.startup import StartupError, prepare_service

log = logging.getLogger("podserve")

#: Waitress itself refuses bodies this far over the app's limit, so huge uploads are never buffered.
BODY_SLACK_BYTES = 1024 * 1024
#: Connections kept open at most, and file descriptors left for the model, logs and pipes.
MAX_CONNECTIONS, FD_RESERVE = 10_000, 64


def main() -> int:
    """Run the server in the foreground; return the process exit code."""
    configure_logging()
    try:
        settings, handler_class = prepare_service()
    except StartupError as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return 2

    prometheus_client.disable_created_metrics()
    metrics = Metrics(settings.service_name)
    devices = plan_devices(settings)
    pool = InstancePool(handler_class, devices, settings, metrics)
    metrics.set_limits(settings, pool.names)
    lifecycle = Lifecycle()
    app = create_app(settings, pool, lifecycle, metrics)
    route = service_path(settings.service_name)
    admission = Admission(route, lambda: lifecycle.in_flight, pool.holding_limit, api.error_body(Overloaded(
        f"this pod is full: it already holds {pool.holding_limit()} requests (queue_size per instance); retry "
        f"shortly, or elsewhere")), on_refused=lambda: metrics.observe_request(route, Overloaded.status, 0.0))
    dispatcher = AdmissionDispatcher(admission)
    dispatcher.set_thread_count(settings.http_threads)
    server = waitress.create_server(
        app, host=settings.host, port=settings.port, threads=settings.http_threads,
        max_request_body_size=settings.max_body_bytes + BODY_SLACK_BYTES,
        connection_limit=connection_limit(), asyncore_use_poll=True, ident="podserve",
        clear_untrusted_proxy_headers=True, _dispatcher=dispatcher)
    dispatcher.attach(server)
    metrics.http_backlog.set_function(lambda: len(server.task_dispatcher.queue))
    finish_timeout = settings.request_timeout_ms / 1000.0 + settings.stuck_batch_seconds
    GracefulShutdown(server, lifecycle, pool.is_idle, settings.drain_seconds, finish_timeout).install()

    log.info("serving %s with %s on http://%s:%s: %d instance(s) on %s", settings.service_name, settings.handler,
             settings.host, server.effective_port, len(devices), ", ".join(map(str, devices)),
             extra={"fields": {"settings": settings.to_env()}})
    pool.load_in_background()
    server.run()
    pool.stop()
    server.task_dispatcher.shutdown()
    log.info("exited cleanly")
    return 0


def connection_limit() -> int:
    """Open connections waitress keeps: as many as file descriptors allow (up to 10,000; poll(), not select(),
    watches them), so that callers wait in code that sees them and refuses them when full, not in the kernel's
    accept queue."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return max(100, min(MAX_CONNECTIONS, soft - FD_RESERVE))
