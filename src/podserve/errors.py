"""Errors a request can end in, each named by its condition and mapped to one HTTP status.

A handler raises `InvalidInput` to reject a request; the runtime raises the others. The
HTTP layer turns every one of them into the same JSON body (see `runtime.api`).
"""

from __future__ import annotations

#: Seconds a caller answered 503 is asked to wait (`Retry-After`) before it tries again.
RETRY_AFTER_SECONDS = 1
_RETRY_LATER = {"Retry-After": str(RETRY_AFTER_SECONDS)}


class ServingError(Exception):
    """Base of every error that ends a request with a known status."""

    status = 500
    code = "internal_error"
    default_headers: dict[str, str] = {}

    def __init__(self, message: str, *, field: str | None = None, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.message = message
        self.field = field
        self.headers = headers or dict(self.default_headers)


class InvalidInput(ServingError):
    """The request is malformed or a field is invalid; the message names the field and the fix."""

    status = 400
    code = "invalid_input"


class NotFound(ServingError):
    """No route matches the path."""

    status = 404
    code = "not_found"


class MethodNotAllowed(ServingError):
    """The route exists but not for this HTTP method."""

    status = 405
    code = "method_not_allowed"

    @classmethod
    def on(cls, method: str, path: str, allowed: tuple[str, ...]) -> "MethodNotAllowed":
        """`method` refused on `path`, naming the methods it takes in the message and in `Allow` (RFC 9110)."""
        methods = ", ".join(allowed)
        return cls(f"{method} is not allowed on {path}; allowed: {methods}", headers={"Allow": methods})


class RequestTimeout(ServingError):
    """The request's head or body did not arrive in time; the connection is closed."""

    status = 408
    code = "request_timeout"


class HeadTooLarge(ServingError):
    """The request line and headers are over the platform's limit."""

    status = 431
    code = "head_too_large"


class ClientGone(ServingError):
    """The caller hung up before its request ran; it was not run, and no answer is sent (counted as 499)."""

    status = 499
    code = "client_closed_request"


class PayloadTooLarge(ServingError):
    """The request body is over the configured limit."""

    status = 413
    code = "payload_too_large"


class UnsupportedMediaType(ServingError):
    """The request's Content-Type is not one the route reads."""

    status = 415
    code = "unsupported_media_type"


class HandlerFailed(ServingError):
    """The service's handler raised or broke its contract; details are in the log."""

    status = 500
    code = "handler_error"


class Overloaded(ServingError):
    """Every instance's queue is full; the caller should retry after a moment."""

    status = 503
    code = "overloaded"
    default_headers = _RETRY_LATER


class NotReady(ServingError):
    """The model instances are not loaded yet, or the server is shutting down."""

    status = 503
    code = "not_ready"
    default_headers = _RETRY_LATER


class DeadlineExceeded(ServingError):
    """The request's deadline passed before it could run; it was not run."""

    status = 504
    code = "deadline_exceeded"


class DecoderEnded(ServingError):
    """The decoder process holding the request ended (a crash in a decoding library or the handler's native code,
    or a hang it was replaced for) before answering it; the pod started another (docs/processes.md)."""

    status = 502
    code = "decoder_ended"


class Wedged(ServingError):
    """A batch thread died or is stuck: the liveness probe fails so that Kubernetes restarts the pod."""

    status = 503
    code = "wedged"
