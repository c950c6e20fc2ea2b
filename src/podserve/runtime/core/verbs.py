"""Call one of the service handler's verbs the same way for the HTTP server and the offline worker."""

from __future__ import annotations

import logging
import threading
import time
from typing import Any, Callable

from podserve.errors import HandlerFailed, ServingError

log = logging.getLogger("podserve")

#: Called with (verb name, CPU seconds the calling thread spent in it) after every verb call; the server points it
#: at its metrics (`podserve_verb_cpu_seconds_total`), so the CPU a pod spends splits into the service's and its own.
on_verb_cpu: Callable[[str, float], None] | None = None

#: The verbs that read a caller's input. A plain exception there (what most code raises on bad input) is still a 500,
#: as it may be the handler's bug, but the answer and the log say how a handler answers bad input with a 400.
INPUT_VERBS = frozenset({"decode", "decode_frame"})
#: What that answer and that log line say.
INVALID_INPUT_HINT = "for bad input, raise InvalidInput(message, field=...) (from podserve) to answer 400 instead"

_hinted: set[tuple[str, str, str]] = set()  # (handler class, verb, exception type) whose log line gave the hint
_hinted_lock = threading.Lock()


def call_verb(method: Callable[..., Any], *arguments: Any) -> Any:
    """Call a handler verb; its ServingError passes through, anything else is logged and becomes HandlerFailed.

    The HandlerFailed's message is short (callers see it); its `detail` adds the exception's own text,
    for places that only the platform reads (the server log, a dead-letter record). From `decode` and
    `decode_frame` both also say how to answer bad input with a 400 (`InvalidInput`); the log says it
    once per handler, verb and exception type in each process, the traceback every time.
    """
    began = time.thread_time()
    try:
        return method(*arguments)
    except ServingError:
        raise
    except Exception as exc:
        raise _handler_failed(method, exc) from None
    finally:
        observe = on_verb_cpu
        if observe is not None:
            observe(method.__name__, time.thread_time() - began)


def batch_key_of(handler: Any, model_input: Any) -> Any:
    """The handler's `batch_key` of `model_input`; anything but a ServingError it raises, or a key that cannot
    group inputs (not hashable), is the handler's bug: a HandlerFailed (500) as a verb's would be, never a fault of
    the runtime's own. Not timed: it costs nothing."""
    try:
        key = handler.batch_key(model_input)
    except ServingError:
        raise
    except Exception as exc:
        raise _handler_failed(handler.batch_key, exc) from None
    problem = unhashable_key(type(handler).__name__, key)
    if problem:
        raise HandlerFailed(problem)
    return key


def unhashable_key(owner: str, key: Any) -> str | None:
    """What is wrong with a batch_key's key that is not hashable, and the fix (None when it is hashable)."""
    try:
        hash(key)
    except TypeError:
        return (f"{owner}.batch_key returned {type(key).__name__}, which is not hashable: inputs are grouped by it; "
                f"return a tuple, a string or a number")
    return None


def _handler_failed(method: Callable[..., Any], exc: Exception) -> HandlerFailed:
    """Log what `method`, a handler's, raised; the HandlerFailed a caller is answered with."""
    owner = type(getattr(method, "__self__", None)).__name__
    verb, kind = method.__name__, type(exc).__name__
    message = f"{owner}.{verb} failed: {kind}; see the server log"
    if verb in INPUT_VERBS:
        message += f"; {INVALID_INPUT_HINT}"
    if verb in INPUT_VERBS and _first_time((owner, verb, kind)):
        log.error("%s.%s raised %s, which answers 500: %s (said once per exception type)", owner, verb, kind,
                  INVALID_INPUT_HINT, exc_info=exc)
    else:
        log.error("%s.%s raised", owner, verb, exc_info=exc)
    failed = HandlerFailed(message)
    failed.detail = f"{owner}.{verb} failed: {kind}: {exc}"
    return failed


def _first_time(key: tuple[str, str, str]) -> bool:
    """Whether `key` is seen here for the first time (and remember it)."""
    with _hinted_lock:
        if key in _hinted:
            return False
        _hinted.add(key)
        return True
