"""Call one of the service handler's verbs the same way for the HTTP server and the offline worker."""

from __future__ import annotations

import logging
from typing import Any, Callable

from podserve.errors import HandlerFailed, ServingError

log = logging.getLogger("podserve")


def call_verb(method: Callable[..., Any], *arguments: Any) -> Any:
    """Call a handler verb; its ServingError passes through, anything else is logged and becomes HandlerFailed.

    The HandlerFailed's message is short (callers see it); its `detail` adds the exception's own text,
    for places that only the platform reads (the server log, a dead-letter record).
    """
    try:
        return method(*arguments)
    except ServingError:
        raise
    except Exception as exc:
        owner = type(getattr(method, "__self__", None)).__name__
        log.exception("%s.%s raised", owner, method.__name__)
        failed = HandlerFailed(f"{owner}.{method.__name__} failed: {type(exc).__name__}; see the server log")
        failed.detail = f"{owner}.{method.__name__} failed: {type(exc).__name__}: {exc}"
        raise failed from None
