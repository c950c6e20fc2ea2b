"""Start the offline worker: read the settings, load the instances, consume until SIGTERM, exit 0."""

from __future__ import annotations

import logging
import signal
import sys
import threading
import time

import prometheus_client
from confluent_kafka import Consumer, KafkaException, Producer

from podserve.kafka_access import KafkaRefused
from podserve.offline_settings import OfflineSettings
from podserve.runtime.batching.pool import InstancePool
from podserve.runtime.core.devices import plan_devices
from podserve.runtime.core.logs import configure_logging
from podserve.runtime.core.metrics import Metrics
from podserve.runtime.core.startup import StartupError, prepare_service
from podserve.runtime.offline.metrics import MessageMetrics
from podserve.runtime.offline.probes import ProbeServer
from podserve.runtime.offline.sinks import FileSink, KafkaSink, ensure_topics, max_message_bytes, producer_config
from podserve.runtime.offline.worker import OfflineWorker, consumer_config
from podserve.settings import SettingsError

log = logging.getLogger("podserve")


def main() -> int:
    """Run the worker in the foreground; return the process exit code."""
    configure_logging()
    try:
        offline = OfflineSettings.from_env()
        settings, handler_class = prepare_service()
    except (StartupError, SettingsError) as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return 2

    prometheus_client.disable_created_metrics()
    metrics = Metrics(settings.service_name)
    metrics.count_runtime_faults()
    message_metrics = MessageMetrics(settings.service_name, offline.source_topic)
    devices = plan_devices(settings)
    pool = InstancePool(handler_class, devices, settings, metrics)
    loader = pool.load_in_background()
    topics = [offline.source_topic, offline.dead_letter_topic] + ([offline.sink_topic] if offline.sink_topic else [])
    stop_requested: list[str] = []
    signal.signal(signal.SIGTERM, lambda *_: stop_requested.append("SIGTERM"))
    signal.signal(signal.SIGINT, lambda *_: stop_requested.append("SIGINT"))
    message_bytes = max_message_bytes(settings)
    connection = offline.client_config()
    try:
        if not _create_topics(connection, topics, stop_requested, message_bytes):
            return 0
    except KafkaRefused as exc:
        print(f"Error: {exc}", file=sys.stderr, flush=True)
        loader.join()  # an interpreter leaving while onnxruntime loads on another thread aborts
        pool.stop()
        return 2

    dead_letters = KafkaSink(connection, offline.dead_letter_topic, Producer(producer_config(connection, message_bytes)))
    sink = (KafkaSink(connection, offline.sink_topic, dead_letters.producer) if offline.sink_topic
            else FileSink(offline.sink_file))
    consumer_settings = consumer_config(connection, offline.consumer_group)
    worker = OfflineWorker(settings, offline.source_topic, pool, Consumer(consumer_settings), sink, dead_letters,
                           message_metrics, offline.sink_retry_max_seconds, consumer_settings)
    signal.signal(signal.SIGTERM, lambda *_: worker.request_stop("SIGTERM"))
    signal.signal(signal.SIGINT, lambda *_: worker.request_stop("SIGINT"))
    if stop_requested:
        worker.request_stop(stop_requested[0])
    probes = ProbeServer(worker, settings.host, settings.port).start()
    log.info("offline worker %s with %s: %s (group %s) -> %s, poison -> %s; probes on http://%s:%s",
             settings.service_name, settings.handler, offline.source_topic, offline.consumer_group,
             offline.sink_topic or offline.sink_file, offline.dead_letter_topic, settings.host, probes.port,
             extra={"fields": {"settings": {**settings.to_env(), **offline.to_env()}}})
    code = _run_beside_signals(worker)
    dead_letters.close()
    pool.stop()
    probes.stop()
    return code


def _run_beside_signals(worker: OfflineWorker) -> int:
    """Run the consume loop in its own thread, so that the main thread handles SIGTERM at once (ping turns 503)."""
    result: list[int] = []

    def consume() -> None:
        try:
            result.append(worker.run())
        except KafkaRefused as exc:  # the platform's ACLs: a restart changes nothing, the message says what would
            log.error("%s", exc)
            print(f"Error: {exc}", file=sys.stderr)
            result.append(2)
        except Exception:  # exit non-zero (the pod restarts); nothing uncommitted was lost, only not yet written
            log.exception("the consume loop failed")

    loop = threading.Thread(target=consume, name="consume", daemon=True)
    loop.start()
    while loop.is_alive():
        loop.join(0.2)
    return result[0] if result else 1


def _create_topics(connection: dict, topics: list[str], stop_requested: list[str], message_bytes: int) -> bool:
    """Create the missing topics, retrying while the brokers are unreachable; False if stopped meanwhile; KafkaRefused
    (never retried) where the brokers refuse this principal (every topic a principal may read it may create: grey's
    stream is its own, kafka_access)."""
    bootstrap = connection["bootstrap.servers"]
    backoff = 1.0
    while not stop_requested:
        try:
            created = ensure_topics(connection, topics, message_bytes=message_bytes)
            if created:
                log.info("created missing topic(s): %s", ", ".join(created))
            return True
        except KafkaException as exc:
            log.warning("cannot reach Kafka at %s to check the topics (%s); retrying in %.0fs", bootstrap, exc, backoff)
            time.sleep(backoff)
            backoff = min(backoff * 2, 30.0)
    return False
