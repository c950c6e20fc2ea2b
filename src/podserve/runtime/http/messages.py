"""What the HTTP server hands on and takes back: a request as read (`Exchange`), its answer (`Answer`) as bytes on
the wire, and the limits one client may make the server hold (`HttpLimits`)."""

from __future__ import annotations

import asyncio
import json
import math
import re
from dataclasses import dataclass
from http import HTTPStatus
from typing import TYPE_CHECKING, Any, Callable, Iterable

from podserve import memory_plan
from podserve.runtime.http.lingering import LINGER_BYTES

if TYPE_CHECKING:
    from podserve.runtime.http.connection import Connection

#: A body declared larger than LARGE_BODY_BYTES, or chunked, may use only LARGE_BODY_SHARE of the pod-wide budget for
#: bodies still being sent (podserve/memory_plan.py says why).
LARGE_BODY_BYTES, LARGE_BODY_SHARE = memory_plan.LARGE_BODY_BYTES, memory_plan.LARGE_BODY_SHARE
SERVER_NAME = "podserve"
JSON_TYPE = [("Content-Type", "application/json")]

_STATUS_LINES = {status.value: f"HTTP/1.1 {status.value} {status.phrase}\r\n".encode("latin-1")
                 for status in HTTPStatus}
#: A header name is an RFC 9110 token; a value any latin-1 text without CR, LF or NUL.
_HEADER_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+\Z")
_HEADER_VALUE_FORBIDDEN = re.compile(r"[\r\n\x00]")


def status_line(status: int) -> bytes:
    return _STATUS_LINES.get(status) or f"HTTP/1.1 {status} Unknown\r\n".encode()


def render(answer: "Answer", date_and_server: bytes, head_only: bool, close: bool, http_1_0: bool = False) -> bytes:
    """`answer` as bytes on the wire (raises UnicodeEncodeError, TypeError, ... for a header that cannot be sent)."""
    length = answer.length if head_only and answer.length is not None else len(answer.body)
    head = [status_line(answer.status), b"Content-Length: ", str(length).encode(), b"\r\n"]
    for name, value in answer.headers:
        head.append(f"{name}: {value}\r\n".encode("latin-1"))
    head.append(date_and_server)
    if close:
        head.append(b"Connection: close\r\n")
    elif http_1_0:
        head.append(b"Connection: keep-alive\r\n")
    head.append(b"\r\n")
    if not head_only:
        head.append(answer.body)
    return b"".join(head)


#: A body this far over the limit is read and dropped, so the 413 reaches a caller still sending it;
#: further over, the connection is closed after the 413.
BODY_SLACK_BYTES = 1024 * 1024


def linger_bytes(largest_body: int) -> int:
    """The lingering close's byte bound for a pod whose largest body is `largest_body`: a caller refused while it
    uploads any body the pod takes (503 at its headers: the pod's budget for uploads is full) reads its refusal, not
    a reset; at least LINGER_BYTES."""
    return max(LINGER_BYTES, largest_body + BODY_SLACK_BYTES)


@dataclass(frozen=True)
class HttpLimits:
    """What one client may make the server hold, and for how long (the defaults are ServingSettings')."""

    max_body_bytes: int
    max_head_bytes: int
    header_timeout_seconds: float
    write_timeout_seconds: float
    idle_timeout_seconds: float
    max_connections: int
    max_pending_body_bytes: int
    #: A chunked body's deadline grows by its bytes at this rate once it is over max_body_bytes (0: never grows).
    min_upload_bytes_per_second: float = 0.0
    #: The most bytes a refused caller may send on, read and dropped, before its connection is reset (lingering.py).
    linger_bytes: int = LINGER_BYTES

    @classmethod
    def from_settings(cls, settings, pending_body_bytes: int) -> "HttpLimits":
        """The limits a ServingSettings carries, and the pod's budget for bodies still being sent (its memory plan's
        `uploads`), which holds at least one largest body."""
        return cls(max_body_bytes=settings.max_body_bytes, max_head_bytes=settings.max_head_bytes,
                   header_timeout_seconds=settings.header_timeout_seconds,
                   write_timeout_seconds=settings.write_timeout_seconds,
                   idle_timeout_seconds=settings.idle_timeout_seconds, max_connections=settings.max_connections,
                   max_pending_body_bytes=max(pending_body_bytes,
                                              math.ceil(settings.max_body_bytes / LARGE_BODY_SHARE)),
                   min_upload_bytes_per_second=settings.min_upload_bytes_per_second,
                   linger_bytes=linger_bytes(settings.largest_body_bytes()))

    @property
    def tick_seconds(self) -> float:
        """How often the clocks are read: a timeout fires at most this late."""
        return min(1.0, self.header_timeout_seconds / 4, self.write_timeout_seconds / 4)


def header_problem(name: str, value: str) -> str | None:
    """Say what makes `name: value` unsendable as an HTTP/1.1 header (None when it is fine)."""
    if not isinstance(name, str) or not _HEADER_NAME.match(name):
        return f"header name {name!r} is not an HTTP token (letters, digits and !#$%&'*+-.^_`|~ only)"
    if not isinstance(value, str) or _HEADER_VALUE_FORBIDDEN.search(value):
        return f"header {name}: value {value!r} contains CR, LF or NUL (or is not a string)"
    try:
        value.encode("latin-1")
    except UnicodeEncodeError:
        return f"header {name}: value {value!r} is not latin-1 text; percent-encode it"
    return None


class Answer:
    """A complete HTTP answer: status, headers (name, value) and body.

    `length` is the Content-Length a HEAD answer announces when `body` is left empty (a GET's length).
    """

    __slots__ = ("status", "headers", "body", "close", "length")

    def __init__(self, status: int, body: bytes, headers: Iterable[tuple[str, str]] = (), close: bool = False,
                 length: int | None = None):
        self.status, self.body, self.headers, self.close, self.length = status, body, headers, close, length

    @classmethod
    def json(cls, status: int, body: Any, headers: Iterable[tuple[str, str]] = (), close: bool = False) -> "Answer":
        """An answer whose body is `body` as JSON (NaN and infinities refused: JSON has no such numbers)."""
        return cls(status, json.dumps(body, allow_nan=False).encode(), JSON_TYPE + list(headers), close)


class Exchange:
    """One request as read off the wire, and the slot its answer goes into.

    `headers` maps lower-cased names to values (repeated headers joined with ", ").
    `received_at` is time.monotonic() when its first bytes were read: deadlines count from it.
    `on_gone`, when set by whoever holds the request, is called (loop thread) if the caller hangs up first.
    """

    __slots__ = ("method", "target", "path", "query", "headers", "body", "version", "keep_alive", "received_at",
                 "answer_", "connection", "oversize", "timer", "refused_early", "on_gone", "held_bytes", "places",
                 "settled", "backstop")

    def __init__(self, connection: "Connection", received_at: float):
        self.connection = connection
        self.received_at = received_at
        self.method = ""
        self.target = b""
        self.path = ""
        self.query = ""
        self.headers: dict[str, str] = {}
        self.body = b""
        self.version = "1.1"
        self.keep_alive = True
        self.answer_: Answer | None = None
        self.oversize = False
        self.timer: asyncio.TimerHandle | None = None  # cancelled when the answer is written
        self.refused_early = False  # answered at its headers: its body is read and dropped, never dispatched
        self.on_gone: Callable[[], None] | None = None
        self.held_bytes = 0  # of the pod's budget for admitted bodies (http/admission.py), given back with the answer
        self.places = 0  # of the pod's places (http/admission.py), given back with the answer
        self.settled = False  # answered through admission: exactly once
        self.backstop = 0  # the tick at which admission answers it if nobody has (http/admission.py)

    def answer(self, answer: Answer) -> None:
        """Send `answer` (from any thread); the first answer wins, later ones are dropped."""
        self.connection.server.answer_soon(self, answer)

    @property
    def peer(self) -> str:
        return self.connection.peer

    @property
    def abandoned(self) -> bool:
        """The caller has closed its connection: no answer can reach it."""
        return self.connection.transport is None
