"""Add a service's own Prometheus metrics; they appear on the pod's /metrics beside the platform's.

    from podserve import service_metrics

    CHARS = service_metrics.counter("chars_read", "Characters the OCR model read.")
    CHARS.inc(len(text))

Names get the prefix `service_`, so they never collide with the platform's `podserve_`
metrics; every metric carries the `service` label, already set.
"""

from __future__ import annotations

import os
import re

from prometheus_client import Counter, Gauge, Histogram

from podserve.settings import ServingSettings

PREFIX = "service_"
_NAME = re.compile(r"[a-z_][a-z0-9_]*")


def _service() -> str:
    return os.environ.get(ServingSettings.env_name("service_name"), ServingSettings.service_name)


def _name(name: str) -> str:
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise ValueError(f"metric name {name!r} must match [a-z_][a-z0-9_]* (e.g. 'chars_read')")
    return PREFIX + name


def counter(name: str, documentation: str, labelnames: tuple[str, ...] = ()):
    """Return a Counter named service_<name>; call .inc() (or .labels(...).inc() with labelnames)."""
    metric = Counter(_name(name), documentation, ("service", *labelnames))
    return metric.labels(_service()) if not labelnames else _Bound(metric)


def gauge(name: str, documentation: str, labelnames: tuple[str, ...] = ()):
    """Return a Gauge named service_<name>; call .set(value)."""
    metric = Gauge(_name(name), documentation, ("service", *labelnames))
    return metric.labels(_service()) if not labelnames else _Bound(metric)


def histogram(name: str, documentation: str, buckets: tuple[float, ...] = Histogram.DEFAULT_BUCKETS,
              labelnames: tuple[str, ...] = ()):
    """Return a Histogram named service_<name>; call .observe(value)."""
    metric = Histogram(_name(name), documentation, ("service", *labelnames), buckets=buckets)
    return metric.labels(_service()) if not labelnames else _Bound(metric)


class _Bound:
    """A labelled metric whose `service` label is filled in: `.labels(other labels...)`."""

    def __init__(self, metric):
        self._metric = metric

    def labels(self, *values: str):
        return self._metric.labels(_service(), *values)
