"""The runtime's own faults are marked in its log (RUNTIME_FAULT) and the test bed reads them back: what the runtime
tests, and an alert, rely on to tell a bug of the platform's from a handler's error or a caller's bad input."""

from __future__ import annotations

import io
import logging

from prometheus_client import CollectorRegistry

from podserve import metric_names
from podserve.runtime.core import logs
from podserve.runtime.core.logs import RUNTIME_FAULT, JsonFormatter, RuntimeFaultCounter
from podserve.runtime.core.metrics import Metrics
from podserve.testbed.server_logs import runtime_faults


def _log_text(write) -> str:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    handler.addFilter(RuntimeFaultCounter())  # as configure_logging's handler has
    log = logging.getLogger("podserve.test_runtime_faults")
    log.addHandler(handler)
    log.propagate = False
    try:
        write(log)
    finally:
        log.removeHandler(handler)
    return stream.getvalue()


def test_a_marked_record_is_read_back_with_its_traceback_and_nothing_else_is():
    def write(log: logging.Logger) -> None:
        try:
            raise AttributeError("'NoneType' object has no attribute 'ids_only'")
        except AttributeError:
            log.exception("unexpected error serving %s", "/api/example", extra=RUNTIME_FAULT)
        try:
            raise ValueError("not an image")
        except ValueError:
            log.exception("TextDirection.decode raised")  # the handler's: not the runtime's
        log.error("a decoder did not start within 30s: killed")

    text = _log_text(write)
    assert '"fault": "runtime"' in text
    assert runtime_faults(text) == ["unexpected error serving /api/example: AttributeError: 'NoneType' object has no "
                                    "attribute 'ids_only'"]


def test_a_marked_line_cut_short_is_skipped_and_a_record_without_a_traceback_says_so():
    text = _log_text(lambda log: log.error("writing an answer failed", extra=RUNTIME_FAULT))
    assert runtime_faults(text) == ["writing an answer failed: no traceback"]
    assert runtime_faults(text[:-10]) == []  # a process killed as it wrote


def test_each_marked_record_is_counted_on_the_process_s_metrics_and_nothing_else_is(monkeypatch):
    registry = CollectorRegistry()
    monkeypatch.setattr(logs, "on_runtime_fault", None)
    Metrics("example", registry=registry).count_runtime_faults()
    assert registry.get_sample_value(metric_names.RUNTIME_FAULTS, {"service": "example"}) == 0  # there from the start

    def write(log: logging.Logger) -> None:
        log.error("writing an answer failed", extra=RUNTIME_FAULT)
        log.error("reading a request failed", extra=RUNTIME_FAULT)
        log.error("TextDirection.decode raised")
        log.info("request", extra={"fields": {"status": 500}})

    _log_text(write)
    assert registry.get_sample_value(metric_names.RUNTIME_FAULTS, {"service": "example"}) == 2
