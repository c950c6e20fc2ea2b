"""The pod's HTTP/1.1 server: one event-loop thread reads and writes every connection.

The loop (asyncio on uvloop, requests parsed by httptools, both C) does the HTTP work in a
few microseconds per request, and hands each complete request to `dispatch`, which decides
where it runs; whoever answers calls `Exchange.answer` from any thread, and the loop writes
the answer. No thread waits for a request's inference, and nothing is queued where no code
sees it: a request is either read and counted by the dispatcher, or still on the wire.

HTTP/1.1 keep-alive and pipelining (answers go out in request order), HTTP/1.0, chunked
bodies, `Expect: 100-continue`, a body limit enforced from the headers (413 before a large
body is buffered) and the parser's own refusals (400, naming what it could not read) are
handled here; routing, admission and the views are not.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
import time
from collections import deque
from email.utils import formatdate
from typing import Callable, Iterable
from urllib.parse import unquote_to_bytes

import httptools
from werkzeug.http import HTTP_STATUS_CODES

log = logging.getLogger(__name__)

#: A body this far over the limit is read and dropped, so the 413 reaches a caller still sending it;
#: further over, the connection is closed after the 413.
BODY_SLACK_BYTES = 1024 * 1024
#: Request head (request line and headers) size limit: 431 above it.
MAX_HEAD_BYTES = 64 * 1024
#: Requests one connection may have read and not yet answered before the server stops reading it.
PIPELINE_DEPTH = 16
#: A keep-alive connection idle this long is closed (Envoy's own idle timeout is shorter).
IDLE_SECONDS = 300.0
SERVER_NAME = "podserve"

_STATUS_LINES = {code: f"HTTP/1.1 {code} {reason}\r\n".encode("latin-1") for code, reason in HTTP_STATUS_CODES.items()}


def status_line(status: int) -> bytes:
    return _STATUS_LINES.get(status) or f"HTTP/1.1 {status} Unknown\r\n".encode()


class Answer:
    """A complete HTTP answer: status, headers (name, value) and body."""

    __slots__ = ("status", "headers", "body", "close")

    def __init__(self, status: int, body: bytes, headers: Iterable[tuple[str, str]] = (), close: bool = False):
        self.status, self.body, self.headers, self.close = status, body, headers, close


class Exchange:
    """One request as read off the wire, and the slot its answer goes into.

    `headers` maps lower-cased names to values (repeated headers joined with ", ").
    `received_at` is time.monotonic() when its first bytes were read: deadlines count from it.
    """

    __slots__ = ("method", "target", "path", "query", "headers", "body", "version", "keep_alive", "received_at",
                 "answer_", "connection", "oversize", "timer")

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
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.pending: deque[Exchange] = deque()  # read, not yet answered on the wire, in order
        self.current: Exchange | None = None
        self.peer = ""
        self._url = b""
        self._header_list: list[tuple[bytes, bytes]] = []
        self._head_bytes = 0
        self._body: list[bytes] = []
        self._body_bytes = 0
        self._paused = False
        self._write_blocked = False
        self._closing = False
        self._last_active = time.monotonic()

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.Transport) -> None:
        self.transport = transport
        peer = transport.get_extra_info("peername")
        self.peer = peer[0] if isinstance(peer, tuple) else ""
        self.server.connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.server.connections.discard(self)
        self._closing = True
        self.transport = None

    def pause_writing(self) -> None:
        # The caller is not reading its answers: stop reading its requests until it catches up, so that a
        # client pipelining without reading cannot grow the server's write buffer without bound.
        self._write_blocked = True
        if self.transport is not None:
            self.transport.pause_reading()

    def resume_writing(self) -> None:
        self._write_blocked = False
        if self.transport is not None and not self._paused and not self._closing:
            self.transport.resume_reading()

    def data_received(self, data: bytes) -> None:
        if self._closing:
            return
        self._last_active = time.monotonic()
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._answer_and_close(400, "protocol upgrades are not served here; send plain HTTP/1.1 requests")
        except httptools.HttpParserCallbackError as exc:  # one of the callbacks below raised
            if not isinstance(exc.__context__, _Refused):
                log.error("reading a request failed", exc_info=exc.__context__)
                self._answer_and_close(500, "internal error while reading the request; see the server log")
        except httptools.HttpParserError as exc:
            reason = str(exc) or "malformed request"
            hint = "; Content-Length must be a number of bytes" if "content-length" in reason.lower() else ""
            self._answer_and_close(400, f"the request could not be read as HTTP/1.1 ({reason}){hint}")

    # httptools callbacks

    def on_message_begin(self) -> None:
        self.current = Exchange(self, time.monotonic())
        self._url = b""
        self._header_list = []
        self._head_bytes = 0
        self._body = []
        self._body_bytes = 0

    def on_url(self, url: bytes) -> None:
        self._url += url
        self._head_bytes += len(url)
        if self._head_bytes > MAX_HEAD_BYTES:
            self._refuse(414, f"the request line is over {MAX_HEAD_BYTES} bytes")

    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_list.append((name, value))
        self._head_bytes += len(name) + len(value) + 4
        if self._head_bytes > MAX_HEAD_BYTES:
            self._refuse(431, f"the request's headers are over {MAX_HEAD_BYTES} bytes")

    def on_headers_complete(self) -> None:
        exchange = self.current
        parser = self.parser
        exchange.method = parser.get_method().decode("ascii", "replace")
        exchange.version = parser.get_http_version()
        exchange.keep_alive = parser.should_keep_alive()
        headers: dict[str, str] = {}
        for name, value in self._header_list:
            key = name.decode("latin-1").lower()
            text = value.decode("latin-1")
            headers[key] = f"{headers[key]}, {text}" if key in headers else text
        exchange.headers = headers
        try:
            url = httptools.parse_url(self._url)
        except httptools.HttpParserInvalidURLError:
            self._refuse(400, f"the request target {self._url[:100]!r} is not a valid URL path")
        exchange.target = self._url
        exchange.path = _unquote(url.path or b"/")
        exchange.query = (url.query or b"").decode("latin-1")
        length = headers.get("content-length")
        limit = self.server.max_body_bytes
        if length is not None and length.isdigit() and int(length) > limit:
            exchange.oversize = True
            if int(length) > limit + BODY_SLACK_BYTES:
                self._refuse(413, f"the body is {length} bytes, over the limit of {limit}; send a smaller image",
                             field="body")
        if headers.get("expect", "").lower() == "100-continue" and not exchange.oversize and self.transport:
            self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")

    def on_body(self, chunk: bytes) -> None:
        self._body_bytes += len(chunk)
        if self._body_bytes > self.server.max_body_bytes:
            self.current.oversize = True
            self._body = []
            if self._body_bytes > self.server.max_body_bytes + BODY_SLACK_BYTES:
                self._refuse(413, f"the body is over the limit of {self.server.max_body_bytes} bytes; send a "
                                  f"smaller image", field="body")
            return
        self._body.append(chunk)

    def on_message_complete(self) -> None:
        exchange = self.current
        self.current = None
        exchange.body = self._body[0] if len(self._body) == 1 else b"".join(self._body)
        self._body = []
        self.pending.append(exchange)
        if len(self.pending) >= PIPELINE_DEPTH and not self._paused and self.transport:
            self._paused = True
            self.transport.pause_reading()
        self.server.dispatch(exchange)

    # answers

    def deliver(self, exchange: Exchange, answer: Answer) -> None:
        """Record `answer` for `exchange`, then write every answer at the head of the line (loop thread)."""
        if exchange.answer_ is not None:
            return
        exchange.answer_ = answer
        if exchange.timer is not None:
            exchange.timer.cancel()
            exchange.timer = None
        if self.transport is None:
            return
        pending = self.pending
        while pending and pending[0].answer_ is not None:
            done = pending.popleft()
            close = self._write(done, done.answer_)
            if close:
                self._close_after_write()
                return
        if self._paused and len(pending) < PIPELINE_DEPTH // 2:
            self._paused = False
            if not self._write_blocked:
                self.transport.resume_reading()
        if not pending and self.server.closing:
            self._close_after_write()

    def _write(self, exchange: Exchange, answer: Answer) -> bool:
        close = answer.close or not exchange.keep_alive or self.server.closing and len(self.pending) == 0
        head = [status_line(answer.status), b"Content-Length: ", str(len(answer.body)).encode(), b"\r\n"]
        for name, value in answer.headers:
            head.append(f"{name}: {value}\r\n".encode("latin-1"))
        head.append(self.server.date_and_server())
        if close:
            head.append(b"Connection: close\r\n")
        elif exchange.version == "1.0":
            head.append(b"Connection: keep-alive\r\n")
        head.append(b"\r\n")
        if exchange.method != "HEAD":
            head.append(answer.body)
        self.transport.write(b"".join(head))
        self._last_active = time.monotonic()
        return close

    def _close_after_write(self) -> None:
        self._closing = True
        if self.transport is not None:
            self.transport.close()  # flushes what is buffered first

    def is_idle(self) -> bool:
        return not self.pending and self.current is None

    def idle_for(self, now: float) -> float:
        return now - self._last_active if self.is_idle() else 0.0

    def close_if_idle(self) -> None:
        if self.is_idle() and self.transport is not None:
            self._close_after_write()

    def _refuse(self, status: int, message: str, field: str | None = None) -> None:
        """From a parser callback: answer the request being read, close after it, and stop parsing."""
        self._answer_and_close(status, message, field)
        raise _Refused()

    def _answer_and_close(self, status: int, message: str, field: str | None = None) -> None:
        """Answer the request being read with `status` and close the connection once it is written."""
        exchange = self.current or Exchange(self, time.monotonic())
        self.current = None
        self._closing = True
        exchange.keep_alive = False
        self.pending.append(exchange)
        if self.transport is not None:
            self.transport.pause_reading()
        self.server.refuse(exchange, status, message, field)


class _Refused(Exception):
    """Stop parsing a connection whose request was refused (raised through httptools)."""


class HttpServer:
    """Serve HTTP/1.1 on `host:port` from the calling thread's event loop until `stop()`.

    `dispatch(exchange)` is called in the loop thread for every complete request; it, or
    any thread it hands the exchange to, calls `exchange.answer(...)` exactly once.
    `refuse(exchange, status, message, field)` answers what the HTTP layer itself refuses.
    """

    def __init__(self, host: str, port: int, *, dispatch: Callable[[Exchange], None],
                 refuse: Callable[[Exchange, int, str, str | None], None], max_body_bytes: int,
                 backlog: int = 4096):
        self.host, self.port = host, port
        self.dispatch = dispatch
        self.refuse = refuse
        self.max_body_bytes = max_body_bytes
        self.backlog = backlog
        self.connections: set[Connection] = set()
        self.closing = False
        self.loop: asyncio.AbstractEventLoop | None = None
        self.effective_port = port
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
        sock = socket.socket(socket.AF_INET6 if ":" in self.host else socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.host, self.port))
        self.effective_port = sock.getsockname()[1]
        self._server = await self.loop.create_server(lambda: Connection(self), sock=sock, backlog=self.backlog)
        idle_sweeper = self.loop.create_task(self._close_idle_connections())
        on_started()
        await self._stopped.wait()
        idle_sweeper.cancel()
        for connection in list(self.connections):
            if connection.transport is not None:
                connection.transport.abort()

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
            exchange.connection.deliver(exchange, answer)

    def date_and_server(self) -> bytes:
        now = int(time.time())
        if now != self._date_second:
            self._date_second = now
            self._date_header = f"Date: {formatdate(now, usegmt=True)}\r\nServer: {SERVER_NAME}\r\n".encode()
        return self._date_header

    def stop_listening(self) -> None:
        """Close the listening socket (loop thread): new connections are refused; open ones carry on."""
        self.closing = True
        if self._server is not None:
            self._server.close()
        for connection in list(self.connections):
            connection.close_if_idle()

    def stop(self) -> None:
        """End `serve` (loop thread)."""
        if self._stopped is not None:
            self._stopped.set()

    async def _close_idle_connections(self) -> None:
        while True:
            await asyncio.sleep(IDLE_SECONDS / 10)
            now = time.monotonic()
            for connection in list(self.connections):
                if connection.idle_for(now) > IDLE_SECONDS:
                    connection.close_if_idle()


def _unquote(path: bytes) -> str:
    """The URL path as WSGI's PATH_INFO holds it: percent-decoded bytes read as latin-1."""
    return (unquote_to_bytes(path) if b"%" in path else path).decode("latin-1")
