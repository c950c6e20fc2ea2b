"""Structured logs: one JSON object per line on stderr, configured once by the entry point."""

from __future__ import annotations

import json
import logging
import sys
import threading
import time
from typing import Callable

ACCESS_LOGGER = "podserve.access"
#: Marks a record as a fault of the runtime's own, a bug of the platform's (not the handler's, not the caller's),
#: however well the request it hit was answered: `log.exception(..., extra=RUNTIME_FAULT)` writes `"fault": "runtime"`
#: into its line, for an alert or a test to find (podserve/testbed/server_logs.py).
FAULT_FIELD, FAULT_VALUE = "fault", "runtime"
RUNTIME_FAULT = {"fields": {FAULT_FIELD: FAULT_VALUE}}
#: Called for each record logged with RUNTIME_FAULT once logging is configured (Metrics.count_runtime_faults sets it).
on_runtime_fault: Callable[[], None] | None = None


class RuntimeFaultCounter(logging.Filter):
    """Counts the records marked RUNTIME_FAULT on their way out (podserve_runtime_faults_total); drops none."""

    def filter(self, record: logging.LogRecord) -> bool:
        count, fields = on_runtime_fault, getattr(record, "fields", None)
        if count is not None and isinstance(fields, dict) and fields.get(FAULT_FIELD) == FAULT_VALUE:
            count()
        return True


class JsonFormatter(logging.Formatter):
    """Format a record as one JSON line; fields passed as `extra={"fields": {...}}` are merged in."""

    def format(self, record: logging.LogRecord) -> str:
        line = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        line.update(getattr(record, "fields", {}))
        if record.exc_info:
            line["traceback"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str)


def configure_logging(level: str = "INFO") -> None:
    """Send every log record to stderr as JSON lines. Call once, from the entry point only."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    handler.addFilter(RuntimeFaultCounter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    _access.stream = handler.stream


class _AccessLog:
    """The access log's fast path: the same JSON line JsonFormatter writes, without a LogRecord, a formatter
    call or a strftime per line (a cached second): ~20 µs of GIL time per request instead of ~65
    (bench/optimisations.json). Used once `configure_logging` has run; before that, plain logging."""

    def __init__(self) -> None:
        self.stream = None
        self.lock = threading.Lock()  # a text stream is not safe to write from several threads at once
        self.logger = logging.getLogger(ACCESS_LOGGER)
        self._second, self._stamp = -1, ""

    def write(self, fields: dict) -> None:
        if self.stream is None:
            self.logger.info("request", extra={"fields": fields})
            return
        if not self.logger.isEnabledFor(logging.INFO):
            return
        now = time.time()
        second = int(now)
        if second != self._second:
            self._second, self._stamp = second, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        line = json.dumps({"ts": f"{self._stamp}.{int((now - second) * 1000):03d}Z", "level": "info",
                           "logger": ACCESS_LOGGER, "msg": "request", **fields}, default=str)
        with self.lock:
            self.stream.write(line + "\n")
            self.stream.flush()


_access = _AccessLog()


def log_request(fields: dict) -> None:
    """Write the one access-log line of a request."""
    _access.write(fields)
