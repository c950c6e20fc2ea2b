"""The pod's HTTP/1.1 server: one event-loop thread reads and writes every connection.

The loop (asyncio on uvloop, requests parsed by httptools, both C) does the HTTP work in a
few microseconds per request, and hands each complete request to `dispatch`, which decides
where it runs; whoever answers calls `Exchange.answer` from any thread, and the loop writes
the answer. No thread waits for a request's inference, and nothing is queued where no code
sees it: a request is either read and counted by the dispatcher, or still on the wire.

HTTP/1.1 keep-alive and pipelining (answers go out in request order), HTTP/1.0, chunked
bodies, `Expect: 100-continue` and the parser's own refusals (400, naming what it could not
read) are handled here; routing, admission and the views are not.

Every byte a client sends counts against a limit and every wait has a clock (`HttpLimits`,
from the platform's conf/platform.yaml through the environment):

- a request head is counted as its bytes arrive, however it is split (431 above the limit);
  a head not complete within the header timeout gets 408 and the connection is closed, and so
  does a body not complete within the request's own deadline;
- bodies not yet handed on are held against one pod-wide budget: a body that would go over it
  is refused 503 at its headers, unread, so many slow uploads cannot add up;
- at most `PIPELINE_DEPTH` requests of one connection are dispatched and unanswered: reading
  stops there, and what one read brought beyond it waits, parsed no further than a slice;
- a caller that reads none of its answers for the write timeout is disconnected;
- beyond the connection limit a new connection is read only as far as its request line, in a
  bounded lane (`probe_lane`): the kubelet's probes get their answer from the pod's state
  (`answer_probe`), anything else the prebuilt 503;
- a refusal on a connection the server then closes is followed by a lingering close (`lingering`):
  the caller still sending reads the refusal instead of a reset.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import re
import resource
import socket
import threading
import time
from collections import deque
from dataclasses import dataclass
from email.utils import formatdate
from http import HTTPStatus
from typing import Any, Callable, Iterable
from urllib.parse import unquote_to_bytes

import httptools

from podserve import image_identity, memory_plan
from podserve.errors import RETRY_AFTER_SECONDS
from podserve.runtime.http.lingering import Linger
from podserve.runtime.http.probe_lane import ProbeLane

log = logging.getLogger(__name__)

#: A body this far over the limit is read and dropped, so the 413 reaches a caller still sending it;
#: further over, the connection is closed after the 413.
BODY_SLACK_BYTES = 1024 * 1024
#: Requests one connection may have read and not yet answered before the server stops reading it.
PIPELINE_DEPTH = 16
#: Bytes parsed at a time while a request head (or a chunked body) may end in them: what one connection can make the
#: server parse beyond its pipeline depth. A Content-Length body is parsed to its end in one step.
PARSE_SLICE_BYTES = 4096
#: A body declared larger than LARGE_BODY_BYTES, or chunked, may use only LARGE_BODY_SHARE of the pod-wide budget for
#: bodies still being sent (podserve/memory_plan.py says why).
LARGE_BODY_BYTES, LARGE_BODY_SHARE = memory_plan.LARGE_BODY_BYTES, memory_plan.LARGE_BODY_SHARE
#: Requests one connection may complete in one turn of the loop; the rest of its read waits for the next turn, so
#: a read of thousands of pipelined requests cannot keep every other connection (and the probes) waiting.
MESSAGES_PER_TURN = 32
#: A Content-Length longer than this is refused 400 (20 digits hold every length a server can take).
MAX_CONTENT_LENGTH_DIGITS = 20
#: Each connection's kernel send buffer (Linux doubles it), fixed rather than autotuned, and the most the loop
#: buffers for it before it stops reading that connection: autotuning grows the kernel's to megabytes, so a caller
#: that reads nothing could make the loop write tens of thousands of answers before its write clock even starts (25
#: such callers stalled the loop for seconds; at 64 KiB each they still cost the others ~0.5 s, hence 16 KiB).
#: Answers are small and the caller (the sidecar) is on loopback: larger ones are written as it reads.
SEND_BUFFER_BYTES = 16 * 1024
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

    @classmethod
    def from_settings(cls, settings) -> "HttpLimits":
        """The limits a ServingSettings carries; the pending-body budget holds at least one largest body."""
        return cls(max_body_bytes=settings.max_body_bytes, max_head_bytes=settings.max_head_bytes,
                   header_timeout_seconds=settings.header_timeout_seconds,
                   write_timeout_seconds=settings.write_timeout_seconds,
                   idle_timeout_seconds=settings.idle_timeout_seconds, max_connections=settings.max_connections,
                   max_pending_body_bytes=max(settings.max_pending_body_bytes,
                                              math.ceil(settings.max_body_bytes / LARGE_BODY_SHARE)),
                   min_upload_bytes_per_second=settings.min_upload_bytes_per_second)

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
                 "answer_", "connection", "oversize", "timer", "refused_early", "on_gone", "held_bytes")

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


class Connection(asyncio.Protocol):
    """One client connection: parse requests as bytes arrive, write answers in request order."""

    def __init__(self, server: "HttpServer"):
        self.server = server
        self.limits = server.limits
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.pending: deque[Exchange] = deque()  # dispatched (or refused), not yet answered on the wire, in order
        self.parked: deque[Exchange] = deque()  # read whole beyond the pipeline depth, not yet dispatched
        self.current: Exchange | None = None
        self.peer = ""
        self._url = b""
        self._header_list: list[tuple[bytes, bytes]] = []
        self._head_bytes = 0  # bytes of the current head read so far (counted per slice fed while in the head)
        self._in_body = False
        self._body: bytes | bytearray = b""
        self._body_bytes = 0
        self._body_left = -1  # bytes of a Content-Length body still to come; -1: chunked, or not in a body
        self._body_deadline = 0.0
        self._body_limit = self.limits.max_body_bytes  # the current request's (HttpServer.body_limit)
        self._reserved = 0  # bytes of the pod-wide pending-body budget this connection holds
        self._feeding = False  # inside the parser: answers given meanwhile must not feed it again
        self._turn_messages = 0  # requests completed in this turn of the loop
        self._unparsed: memoryview | None = None  # what a read brought beyond the pipeline depth
        self._paused = False
        self._write_blocked_since: float | None = None
        self._corked: list[bytes] | None = None  # answers written while a read is parsed go out in one write
        self._closing = False
        self._linger: Linger | None = None  # the lingering close after a refusal, once begun
        self._last_active = time.monotonic()

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.Transport) -> None:
        self.transport = transport
        transport.set_write_buffer_limits(high=SEND_BUFFER_BYTES)
        if len(self.server.connections) >= self.limits.max_connections:
            self._closing = True
            self.server.probe_lane.take(transport)  # it reads the request line from now on, not this connection
            return
        peer = transport.get_extra_info("peername")
        self.peer = peer[0] if isinstance(peer, tuple) else ""
        self.server.connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.server.connections.discard(self)
        self._closing = True
        self.transport = None
        self._release_body()
        self.parked.clear()
        self._unparsed = None
        for exchange in self.pending:
            if exchange.on_gone is not None and exchange.answer_ is None:
                exchange.on_gone()
        if self._linger is not None:
            self._linger.caller_closed()

    def pause_writing(self) -> None:
        # The caller is not reading its answers: stop reading its requests until it catches up, so that a
        # client pipelining without reading cannot grow the server's write buffer without bound.
        self._write_blocked_since = time.monotonic()
        if self.transport is not None:
            self.transport.pause_reading()

    def resume_writing(self) -> None:
        self._write_blocked_since = None
        if self._closing or self.transport is None:
            return
        if self._unparsed is not None:  # what was read before the caller stopped reading: parse it on the next turn
            self.server.loop.call_soon(self._next_turn)
        elif not self._paused:
            self.transport.resume_reading()

    def data_received(self, data: bytes) -> None:
        if self._closing:
            if self._linger is not None:
                self._linger.discard(len(data))
            return
        if self._unparsed is not None:  # reading is paused; a read already under way joins what waits
            self._unparsed = memoryview(bytes(self._unparsed) + data)
            return
        self._feed(memoryview(data))

    # parsing

    def _feed(self, view: memoryview) -> None:
        """Parse `view` a slice at a time; keep what lies beyond the pipeline depth for later."""
        end_of_data, pos = len(view), 0
        self._feeding = True
        self._corked = []
        self._turn_messages = 0
        try:
            while pos < end_of_data and not self._closing:
                self._dispatch_parked()
                # The depth is reached, or the caller reads none of its answers: parse nothing more until answers
                # go out (else one read of thousands of pipelined pings would all be answered into the loop's buffer).
                if self.parked or self._write_blocked_since is not None:
                    self._unparsed = view[pos:]
                    self._pause()
                    return
                if self._turn_messages >= MESSAGES_PER_TURN:  # this turn's share: the rest waits for the next
                    self._unparsed = view[pos:]
                    self._pause()
                    self.server.loop.call_soon(self._next_turn)
                    return
                pos = self._feed_slice(view, pos, end_of_data)
            self._unparsed = None
        finally:
            self._feeding = False
            self._uncork()

    def _next_turn(self) -> None:
        """Parse what a previous turn left, unless the depth now holds it back (then answers resume it)."""
        if self._unparsed is not None and not self.parked and not self._feeding and not self._closing:
            unparsed, self._unparsed = self._unparsed, None
            self._feed(unparsed)
            self._resume_if_free()

    def _uncork(self) -> None:
        corked, self._corked = self._corked, None
        if corked and self.transport is not None:
            self.transport.write(corked[0] if len(corked) == 1 else b"".join(corked))

    def _feed_slice(self, view: memoryview, pos: int, end_of_data: int) -> int:
        """Parse one slice of `view` from `pos`; return where the next begins (`end_of_data` after a refusal)."""
        step = PARSE_SLICE_BYTES + (self._body_left if self._body_left > 0 else 0)
        end = min(end_of_data, pos + step)
        reading_head = not self._in_body
        if reading_head:
            self._head_bytes += end - pos
        try:
            self.parser.feed_data(view[pos:end])
        except httptools.HttpParserUpgrade as upgrade:  # asked for on a body-less request: answered as plain
            end = pos + max(1, upgrade.args[0])
        except httptools.HttpParserCallbackError as exc:  # one of the callbacks below raised
            if not isinstance(exc.__context__, _Refused):
                log.error("reading a request failed", exc_info=exc.__context__)
                self._answer_and_close(500, "internal error while reading the request; see the server log")
            return end_of_data
        except httptools.HttpParserError as exc:
            reason = str(exc) or "malformed request"
            hint = "; Content-Length must be a number of bytes" if "content-length" in reason.lower() else ""
            self._answer_and_close(400, f"the request could not be read as HTTP/1.1 ({reason}){hint}")
            return end_of_data
        if not self._in_body and self._head_bytes > self.limits.max_head_bytes:  # blank lines before a head count
            self._answer_and_close(431, f"the request's head (request line and headers) is over "
                                        f"{self.limits.max_head_bytes} bytes; send smaller headers")
            return end_of_data
        return end

    # httptools callbacks

    def on_message_begin(self) -> None:
        # A request beginning is what keeps a connection active: blank lines before one (which the parser skips,
        # as HTTP/1.1 asks) begin nothing, so a caller sending only those is idle and closed at the idle timeout.
        self.current = Exchange(self, time.monotonic())
        self._last_active = self.current.received_at
        self._url = b""
        self._header_list = []

    def on_url(self, url: bytes) -> None:
        self._url += url
        if len(self._url) > self.limits.max_head_bytes:
            self._refuse(414, f"the request line is over {self.limits.max_head_bytes} bytes")

    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_list.append((name, value))

    def on_headers_complete(self) -> None:
        exchange = self.current
        parser = self.parser
        self._in_body, self._head_bytes = True, 0
        exchange.method = parser.get_method().decode("ascii", "replace")
        exchange.version = parser.get_http_version()
        exchange.keep_alive = parser.should_keep_alive()
        headers: dict[str, str] = {}
        for name, value in self._header_list:
            key = name.decode("latin-1").lower()
            text = value.decode("latin-1")
            headers[key] = f"{headers[key]}, {text}" if key in headers else text
        self._header_list = []
        exchange.headers = headers
        try:
            url = httptools.parse_url(self._url)
        except httptools.HttpParserInvalidURLError:
            self._refuse(400, f"the request target {self._url[:100]!r} is not a valid URL path")
        exchange.target = self._url
        exchange.path = _unquote(url.path or b"/")
        exchange.query = (url.query or b"").decode("latin-1")
        raw_length = headers.get("content-length")
        if raw_length is not None and len(raw_length) > MAX_CONTENT_LENGTH_DIGITS:
            self._refuse(400, f"Content-Length is {len(raw_length)} characters long; send the body's length in "
                              f"bytes in at most {MAX_CONTENT_LENGTH_DIGITS} digits", field="Content-Length")
        length = int(raw_length) if raw_length else 0  # the parser has refused one that is not digits
        chunked = "transfer-encoding" in headers
        # A request asking for an upgrade without a body is answered as plain HTTP/1.1 (RFC 9110 lets a server
        # ignore Upgrade); with one, the parser would skip the body and read it as the next request.
        if parser.should_upgrade() and (length or chunked or exchange.method == "CONNECT"):
            self._refuse(400, "protocol upgrades are not served here, and a request asking for one may not carry a "
                              "body; send it without the Upgrade and Connection: upgrade headers")
        self._body_left = length if not chunked else -1
        limit = self._body_limit = self.server.body_limit(exchange)
        if length > limit:
            exchange.oversize = True
            if length > limit + BODY_SLACK_BYTES:
                self._refuse(413, f"the body is {length} bytes, over the limit of {limit}; send a smaller body",
                             field="body")
        server = self.server
        self._body_deadline = exchange.received_at + server.body_seconds(headers)
        expects = headers.get("expect", "").lower() == "100-continue"
        # In line before admission looks at it: a refusal may be answered at once.
        self.pending.append(exchange)
        exchange.refused_early, keep_alive = True, exchange.keep_alive
        if expects:
            exchange.keep_alive = False  # refused, the caller will not send its body: close after the answer
        if not server.admit_head(exchange):
            return  # answered at its headers (a full pod's 503): its body is read and dropped, never held
        self.pending.pop()
        exchange.refused_early, exchange.keep_alive = False, keep_alive
        if length and not exchange.oversize and not self._reserve(length):
            raise _Refused()
        if expects and exchange.version == "1.1" and not exchange.oversize and self.transport:
            self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")

    def on_body(self, chunk: bytes) -> None:
        size = len(chunk)
        self._body_bytes += size
        if self._body_left > 0:
            self._body_left -= size
        exchange = self.current
        if exchange.refused_early or exchange.oversize:
            return
        if self._body_left < 0:  # chunked: held against the budget as it arrives, its deadline grown by the upload rate
            if not self._reserve(size):
                raise _Refused()
            limits = self.server.limits
            over = self._body_bytes - limits.max_body_bytes
            if over > 0 and limits.min_upload_bytes_per_second:  # as a declared length would: all of it, once over
                grown = size if over >= size else self._body_bytes
                self._body_deadline += grown / limits.min_upload_bytes_per_second
        if self._body_bytes > self._body_limit:
            exchange.oversize = True
            self._body = b""
            if self._body_bytes > self._body_limit + BODY_SLACK_BYTES:
                self._refuse(413, f"the body is over the limit of {self._body_limit} bytes; send a "
                                  f"smaller body", field="body")
            return
        if not self._body:
            self._body = chunk
        else:
            if type(self._body) is bytes:
                self._body = bytearray(self._body)
            self._body += chunk

    def on_message_complete(self) -> None:
        exchange = self.current
        self.current = None
        self._turn_messages += 1
        self._in_body, self._head_bytes, self._body_left = False, 0, -1
        body, self._body, self._body_bytes = self._body, b"", 0
        self._release_body()
        if exchange.refused_early:
            return
        exchange.body = bytes(body) if type(body) is bytearray else body
        if len(self.pending) >= PIPELINE_DEPTH:
            self.parked.append(exchange)
            return
        self.pending.append(exchange)
        if len(self.pending) >= PIPELINE_DEPTH:
            self._pause()
        self.server.dispatch(exchange)

    # answers

    def deliver(self, exchange: Exchange, answer: Answer) -> None:
        """Record `answer` for `exchange`, then write every answer at the head of the line (loop thread)."""
        if exchange.answer_ is not None:
            return
        exchange.answer_ = answer
        exchange.body = b""  # answered: its body is no longer needed, even while earlier answers are awaited
        exchange.on_gone = None
        if exchange.timer is not None:
            exchange.timer.cancel()
            exchange.timer = None
        if self.transport is None or self._linger is not None:
            return
        pending = self.pending
        while pending and pending[0].answer_ is not None:
            done = pending.popleft()
            close = self._write(done, done.answer_)
            if close:
                self._close_after_write(lingering=done.answer_.status >= 400)
                return
        if not self._feeding:  # inside the parser, its own loop takes up what waits
            self._dispatch_parked()
            if self._unparsed is not None and not self.parked:
                unparsed, self._unparsed = self._unparsed, None
                self._feed(unparsed)
        self._resume_if_free()
        if not pending and self.server.closing:
            self._close_after_write()

    def _write(self, exchange: Exchange, answer: Answer) -> bool:
        close = answer.close or not exchange.keep_alive or self.server.closing and len(self.pending) == 0
        try:
            data = render(answer, self.server.date_and_server(), exchange.method == "HEAD", close,
                          exchange.version == "1.0")
        except (UnicodeEncodeError, AttributeError, TypeError, ValueError):  # error_answer checks; this is the net
            log.error("an answer's headers could not be sent: %r", answer.headers)
            return self._write(exchange, Answer(500, b'{"results": null, "msg": "internal error: the answer\'s '
                                                     b'headers could not be sent; see the server log"}',
                                                [("Content-Type", "application/json")], answer.close))
        if self._corked is not None:
            self._corked.append(data)
        else:
            self.transport.write(data)
        self._last_active = time.monotonic()
        return close

    def _close_after_write(self, lingering: bool = False) -> None:
        """Close once what is buffered is written; after a refusal (`lingering`), with a lingering close."""
        self._closing = True
        self._uncork()
        if self.transport is None or self._linger is not None:
            return
        if lingering and not self.transport.is_closing():
            self._linger = Linger(self.transport, self.server.loop, self.server.on_linger_end)
        else:
            self.transport.close()  # flushes what is buffered first

    # clocks (read by the server's sweep, loop thread)

    def check_clocks(self, now: float) -> None:
        """Close what has outrun its clock: a slow head (408), a slow body (408), an unread answer, an idle line."""
        if self.transport is None:
            return
        limits = self.limits
        if self._write_blocked_since is not None and now - self._write_blocked_since > limits.write_timeout_seconds:
            self.server.on_write_timeout()
            self.transport.abort()  # the caller reads nothing: no answer, not even a 408, could reach it
            return
        if self._closing:  # closing once its answers are written (a refusal's lingering close has its own clock)
            return
        current = self.current
        if current is not None and current.refused_early:
            if now > self._body_deadline:  # its 503 is written or on its way: close (lingering) once it is
                self._closing, current.keep_alive = True, False
                self.transport.pause_reading()
                if current not in self.pending:
                    self._close_after_write(lingering=True)
            return
        if current is not None:
            if not self._in_body and now - current.received_at > limits.header_timeout_seconds:
                self._answer_and_close(408, f"the request's head was not complete within "
                                            f"{limits.header_timeout_seconds:g} s; send the whole head at once")
                return
            if self._in_body and now > self._body_deadline:
                self._answer_and_close(408, "the request's body was not complete within the request's deadline; "
                                            "send it faster, or with a longer X-Request-Timeout-Ms")
                return
        if self.is_idle() and now - self._last_active > limits.idle_timeout_seconds:
            self._close_after_write()

    def is_idle(self) -> bool:
        return not self.pending and not self.parked and self.current is None

    def close_if_idle(self) -> None:
        if self.is_idle() and self.transport is not None and self._linger is None:  # a lingering close ends itself
            self._close_after_write()

    # refusing

    def _refuse(self, status: int, message: str, field: str | None = None) -> None:
        """From a parser callback: answer the request being read, close after it, and stop parsing."""
        self._answer_and_close(status, message, field)
        raise _Refused()

    def _answer_and_close(self, status: int, message: str, field: str | None = None) -> None:
        """Answer the request being read with `status` and close the connection once it is written."""
        exchange = self.current
        if exchange is None or exchange.refused_early:  # refused early: its answer is on its way; close after it
            exchange = Exchange(self, time.monotonic())
        self.current = None
        self._closing = True
        self._release_body()
        self.parked.clear()
        self._unparsed = None
        exchange.keep_alive = False
        self.pending.append(exchange)
        if self.transport is not None:
            self.transport.pause_reading()
        self.server.refuse(exchange, status, message, field)

    def _reserve(self, size: int) -> bool:
        """Hold `size` more body bytes against the pod-wide budget; refuse the request 503 when it has no room.

        A large body (declared over LARGE_BODY_BYTES, or chunked) has room only within LARGE_BODY_SHARE of it."""
        budget = self.limits.max_pending_body_bytes
        large = self._body_left < 0 or self._reserved + size > LARGE_BODY_BYTES
        room = int(budget * LARGE_BODY_SHARE) if large else budget
        if self.server.pending_body_bytes + size > room:
            kind = f"chunked bodies and bodies over {LARGE_BODY_BYTES} bytes may use {room} of its {budget}" if large \
                else \
                f"its limit is {budget}"
            self._answer_and_close(503, f"this pod is holding {self.server.pending_body_bytes} bytes of bodies still "
                                        f"being sent ({kind}); retry shortly, or elsewhere")
            return False
        self.server.pending_body_bytes += size
        self._reserved += size
        return True

    def _release_body(self) -> None:
        self.server.pending_body_bytes -= self._reserved
        self._reserved = 0

    def _dispatch_parked(self) -> None:
        """Dispatch requests read beyond the pipeline depth, as far as the depth now allows (in order)."""
        parked, pending = self.parked, self.pending
        while parked and len(pending) < PIPELINE_DEPTH and not self._closing:
            exchange = parked.popleft()
            pending.append(exchange)
            self.server.dispatch(exchange)

    def _pause(self) -> None:
        """Stop reading: the connection has the pipeline depth in hand (resumed at half of it)."""
        if not self._paused and self.transport is not None:
            self._paused = True
            self.transport.pause_reading()

    def _resume_if_free(self) -> None:
        if (self._paused and len(self.pending) < PIPELINE_DEPTH // 2 and not self.parked and self._unparsed is None
                and not self._closing and self.transport is not None):
            self._paused = False
            if self._write_blocked_since is None:
                self.transport.resume_reading()


class _Refused(Exception):
    """Stop parsing a connection whose request was refused (raised through httptools)."""


class HttpServer:
    """Serve HTTP/1.1 on `host:port` from the calling thread's event loop until `stop()`.

    `dispatch(exchange)` is called in the loop thread for every complete request; it, or
    any thread it hands the exchange to, calls `exchange.answer(...)` exactly once.
    `refuse(exchange, status, message, field)` answers what the HTTP layer itself refuses.
    `admit_head(exchange)` is called when a request's headers are read: False means it has been answered
    already (e.g. a full pod's 503) and its body is not worth reading. `body_seconds(headers)` is the time a
    request's body may take to arrive, from its first byte (its deadline); `body_limit(exchange)` its largest
    size, from its path and headers (default: the limits' max_body_bytes). `answer_probe(path, method)` is
    the answer to a request on a connection over the connection limit (None: not a probe, so the prebuilt
    503), from the pod's state, in the loop thread. `on_over_limit(outcome)` counts each connection over the
    limit (one of `metric_names.OVER_LIMIT_OUTCOMES`), `on_linger_end(ending)` each lingering close (one of
    `metric_names.LINGER_ENDINGS`), and `on_write_timeout` each caller dropped for reading none of its answers.
    """

    def __init__(self, host: str, port: int, *, dispatch: Callable[[Exchange], None],
                 refuse: Callable[[Exchange, int, str, str | None], None], limits: HttpLimits,
                 body_seconds: Callable[[dict], float],
                 admit_head: Callable[[Exchange], bool] = lambda exchange: True,
                 answer_probe: Callable[[str, str], Answer | None] = lambda path, method: None,
                 on_over_limit: Callable[[str], None] = lambda outcome: None,
                 on_linger_end: Callable[[str], None] = lambda ending: None,
                 on_write_timeout: Callable[[], None] = lambda: None, backlog: int = 4096,
                 body_limit: Callable[[Exchange], int] | None = None, sock: socket.socket | None = None):
        self.host, self.port = host, port
        self._listening_socket = sock  # given: listening already, shared with the process that made it
        self.body_limit = body_limit or (lambda exchange: limits.max_body_bytes)
        self.dispatch = dispatch
        self.refuse = refuse
        self.admit_head = admit_head
        self.body_seconds = body_seconds
        self.answer_probe = answer_probe
        self.on_linger_end = on_linger_end
        self.on_write_timeout = on_write_timeout
        self.limits = limits
        self.backlog = backlog
        self._identity = f"Server: {SERVER_NAME}\r\n{image_identity.header_line()}"  # the build, for CI's smoke
        self.connections: set[Connection] = set()
        self.pending_body_bytes = 0
        self.closing = False
        self.loop: asyncio.AbstractEventLoop | None = None
        self.effective_port = port
        self.connection_refusal = (
            b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nConnection: close\r\n"
            b"Retry-After: " + str(RETRY_AFTER_SECONDS).encode() + b"\r\n")
        body = (b'{"results": null, "msg": "this pod has ' + str(limits.max_connections).encode() +
                b' connections open, its limit; retry shortly, or elsewhere"}')
        self.connection_refusal += b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body
        self.probe_lane = ProbeLane(self._probe_reply, self.connection_refusal, on_over_limit, on_linger_end)
        self._server: asyncio.base_events.Server | None = None
        self._outbox: deque[tuple[Exchange, Answer]] = deque()
        self._wake_pending = False
        self._date_second = -1
        self._date_header = b""
        self._stopped: asyncio.Event | None = None
        self._loop_thread_id: int | None = None

    async def serve(self, on_started: Callable[[], None] = lambda: None) -> None:
        """Listen, run until `stop()`, then return."""
        self.loop = asyncio.get_running_loop()
        self._loop_thread_id = threading.get_ident()
        self._stopped = asyncio.Event()
        sock = self._listening_socket or listening_socket(self.host, self.port)
        self.effective_port = sock.getsockname()[1]
        self._server = await self.loop.create_server(lambda: Connection(self), sock=sock, backlog=self.backlog)
        sweeper = self.loop.create_task(self._read_clocks())
        on_started()
        await self._stopped.wait()
        sweeper.cancel()
        for connection in list(self.connections):
            if connection.transport is not None:
                connection.transport.abort()
        self.probe_lane.close_all()

    def _probe_reply(self, path: str, method: str) -> bytes | None:
        """The bytes answering a request line read over the connection limit: a probe's answer, or None."""
        try:
            answer = self.answer_probe(path, method)
            return None if answer is None else render(answer, self.date_and_server(), method == "HEAD", close=True)
        except Exception:  # the caller gets the prebuilt 503; the lane and the loop carry on
            log.exception("answering a probe over the connection limit failed")
            return None

    def answer_soon(self, exchange: Exchange, answer: Answer) -> None:
        """Queue `answer` for the loop to write; safe from any thread. The loop is woken once per burst."""
        if threading.get_ident() == self._loop_thread_id:
            exchange.connection.deliver(exchange, answer)
            return
        self._outbox.append((exchange, answer))
        # Append before testing the flag, and clear the flag before draining: an answer is never stranded.
        if not self._wake_pending:
            self._wake_pending = True
            self.loop.call_soon_threadsafe(self._drain_outbox)

    def _drain_outbox(self) -> None:
        self._wake_pending = False
        outbox = self._outbox
        while outbox:
            exchange, answer = outbox.popleft()
            try:
                exchange.connection.deliver(exchange, answer)
            except Exception:  # one failing answer must never strand the answers queued after it
                log.exception("writing an answer failed")

    def date_and_server(self) -> bytes:
        now = int(time.time())
        if now != self._date_second:
            self._date_second = now
            self._date_header = f"Date: {formatdate(now, usegmt=True)}\r\n{self._identity}".encode()
        return self._date_header

    def stop_listening(self) -> None:
        """Close the listening socket (loop thread): new connections are refused; open ones carry on."""
        self.closing = True
        if self._listening_socket is not None:  # another process holds it too: stop it listening for all of them
            try:
                self._listening_socket.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        if self._server is not None:
            self._server.close()
        for connection in list(self.connections):
            connection.close_if_idle()

    def stop(self) -> None:
        """End `serve` (loop thread)."""
        if self._stopped is not None:
            self._stopped.set()

    async def _read_clocks(self) -> None:
        tick = self.limits.tick_seconds
        while True:
            await asyncio.sleep(tick)
            now = time.monotonic()
            for connection in list(self.connections):
                connection.check_clocks(now)


def listening_socket(host: str, port: int) -> socket.socket:
    """A TCP socket bound to `host:port` (port 0: any free one), its accepted connections' send buffer fixed."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUFFER_BYTES)  # accepted connections inherit it
    sock.bind((host, port))
    return sock


def raise_open_file_limit() -> None:
    """Let the process open as many connections as the hard limit allows: a connection the loop cannot accept
    (EMFILE) would wait unseen in the kernel's accept queue."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError):
            log.warning("could not raise the open-file limit from %d to %d", soft, hard)


def _unquote(path: bytes) -> str:
    """The URL path as WSGI's PATH_INFO holds it: percent-decoded bytes read as latin-1."""
    return (unquote_to_bytes(path) if b"%" in path else path).decode("latin-1")
