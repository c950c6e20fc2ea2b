"""Start the pod's server: read the settings, load the instances, serve until SIGTERM, exit 0."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import prometheus_client
import waitress

from podserve.runtime.app import create_app
from podserve.runtime.devices import plan_devices
from podserve.runtime.lifecycle import GracefulShutdown, Lifecycle
from podserve.runtime.logs import configure_logging
from podserve.runtime.metrics import Metrics
from podserve.runtime.pool import HandlerImportError, InstancePool, import_handler
from podserve.settings import ServingSettings, SettingsError

log = logging.getLogger("podserve")

#: Waitress itself refuses bodies this far over the app's limit, so huge uploads are never buffered.
BODY_SLACK_BYTES = 1024 * 1024


def main() -> int:
    """Run the server in the foreground; return the process exit code."""
    configure_logging()
    try:
        settings = ServingSettings.from_env()
        handler_class = import_handler(settings.handler)
    except (SettingsError, HandlerImportError) as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return 2
    if not Path(settings.model_path).exists():
        print(f"Error: the model is not at {settings.model_path!r} (PODSERVE_MODEL_PATH); fetch it (make model) or "
              f"fix `model_path` in value.py", file=sys.stderr)
        return 2

    prometheus_client.disable_created_metrics()
    metrics = Metrics(settings.service_name)
    devices = plan_devices(settings)
    pool = InstancePool(handler_class, devices, settings, metrics)
    lifecycle = Lifecycle()
    app = create_app(settings, pool, lifecycle, metrics)
    server = waitress.create_server(
        app, host=settings.host, port=settings.port, threads=settings.http_threads,
        max_request_body_size=settings.max_body_bytes + BODY_SLACK_BYTES,
        connection_limit=max(100, 4 * settings.http_threads), ident="podserve",
        clear_untrusted_proxy_headers=True)
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
