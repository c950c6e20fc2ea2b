"""Call one of the service handler's verbs the same way for the HTTP server and the offline worker."""

from __future__ import annotations

import logging
import time
from typing import Any, Callable

from podserve.errors import HandlerFailed, ServingError

log = logging.getLogger("podserve")

#: Called with (verb name, CPU seconds the calling thread spent in it) after every verb call; the server points it
#: at its metrics (`podserve_verb_cpu_seconds_total`), so the CPU a pod spends splits into the service's and its own.
on_verb_cpu: Callable[[str, float], None] | None = None


def call_verb(method: Callable[..., Any], *arguments: Any) -> Any:
    """Call a handler verb; its ServingError passes through, anything else is logged and becomes HandlerFailed.

    The HandlerFailed's message is short (callers see it); its `detail` adds the exception's own text,
    for places that only the platform reads (the server log, a dead-letter record).
    """
    began = time.thread_time()
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
    finally:
        observe = on_verb_cpu
        if observe is not None:
            observe(method.__name__, time.thread_time() - began)
