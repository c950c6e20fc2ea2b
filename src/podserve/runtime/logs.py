"""Structured logs: one JSON object per line on stderr, configured once by the entry point."""

from __future__ import annotations

import json
import logging
import sys
import time

ACCESS_LOGGER = "podserve.access"


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
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)


def log_request(fields: dict) -> None:
    """Write the one access-log line of a request."""
    logging.getLogger(ACCESS_LOGGER).info("request", extra={"fields": fields})
