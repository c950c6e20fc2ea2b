"""The offline worker's own collectors: messages consumed, produced, dead-lettered, sink retries, lag."""

from __future__ import annotations

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge

from podserve import metric_names as names


class MessageMetrics:
    """Counters and the lag gauge of one worker, with its service and source topic bound (all exported from 0)."""

    def __init__(self, service: str, topic: str, registry: CollectorRegistry = REGISTRY):
        self.service = service
        labels = (service, topic)
        self.consumed = Counter(names.MESSAGES_CONSUMED, "Messages fetched from the source topic.",
                                names.MESSAGE_LABELS, registry=registry).labels(*labels)
        self.produced = Counter(names.MESSAGES_PRODUCED, "Results written and acknowledged by the sink.",
                                names.MESSAGE_LABELS, registry=registry).labels(*labels)
        self.dead_lettered = Counter(names.MESSAGES_DEAD_LETTERED, "Poison messages sent to the dead-letter topic.",
                                     names.MESSAGE_LABELS, registry=registry).labels(*labels)
        self.sink_retries = Counter(names.SINK_RETRIES, "Sink writes that failed and were retried (nothing committed).",
                                    names.MESSAGE_LABELS, registry=registry).labels(*labels)
        self.lag = Gauge(names.CONSUMER_LAG, "Messages in the source topic this worker's group has not consumed.",
                         names.MESSAGE_LABELS, registry=registry).labels(*labels)
