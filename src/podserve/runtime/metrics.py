"""The server's Prometheus collectors, built from the names in `podserve.metric_names`."""

from __future__ import annotations

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram

from podserve import metric_names as names

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
BATCH_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 128, 256)


class Metrics:
    """Every collector the server updates, with the service label already bound."""

    def __init__(self, service: str, registry: CollectorRegistry = REGISTRY):
        self.service = service
        self.requests = Counter(names.REQUESTS_TOTAL, "Requests answered, by route and HTTP status.",
                                names.REQUEST_LABELS, registry=registry)
        self.request_seconds = Histogram(names.REQUEST_SECONDS, "Seconds from request read to response, in process.",
                                         names.REQUEST_LABELS, buckets=LATENCY_BUCKETS, registry=registry)
        self.queue_wait = Histogram(names.QUEUE_WAIT_SECONDS, "Seconds a request waited in its instance's queue.",
                                    names.STAGE_LABELS, buckets=LATENCY_BUCKETS, registry=registry)
        self.inference = Histogram(names.INFERENCE_SECONDS, "Seconds one predict call took.",
                                   names.STAGE_LABELS, buckets=LATENCY_BUCKETS, registry=registry)
        self.batch_size = Histogram(names.BATCH_SIZE, "Inputs per predict call.",
                                    names.STAGE_LABELS, buckets=BATCH_BUCKETS, registry=registry)
        self.queue_depth = Gauge(names.QUEUE_DEPTH, "Requests waiting in an instance's queue.",
                                 names.STAGE_LABELS, registry=registry)
        self.in_flight = Gauge(names.IN_FLIGHT, "Requests accepted and not yet answered.",
                               ("service",), registry=registry).labels(service)
        self.instance_ready = Gauge(names.INSTANCE_READY, "1 when the instance is loaded and warmed up.",
                                    names.STAGE_LABELS, registry=registry)
        self.model_load = Gauge(names.MODEL_LOAD_SECONDS, "Seconds the instance took to load its model.",
                                names.STAGE_LABELS, registry=registry)
        self.warmup = Gauge(names.WARMUP_SECONDS, "Seconds the instance's warm-up batches took.",
                            names.STAGE_LABELS, registry=registry)
        self.http_backlog = Gauge(names.HTTP_BACKLOG, "Requests read but waiting for a free HTTP thread.",
                                  ("service",), registry=registry).labels(service)

    def observe_request(self, route: str, status: int, seconds: float) -> None:
        labels = (self.service, route, str(status))
        self.requests.labels(*labels).inc()
        self.request_seconds.labels(*labels).observe(seconds)

    def observe_batch(self, instance: str, size: int, seconds: float, queue_waits: list[float]) -> None:
        self.batch_size.labels(self.service, instance).observe(size)
        self.inference.labels(self.service, instance).observe(seconds)
        wait = self.queue_wait.labels(self.service, instance)
        for seconds_waited in queue_waits:
            wait.observe(seconds_waited)
