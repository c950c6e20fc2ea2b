"""One client connection: its requests read in order and dispatched, its answers written in request order, its clocks.

At most `PIPELINE_DEPTH` requests of one connection are dispatched and unanswered: reading stops there, and what
one read brought beyond it waits, parsed no further than a slice; a caller that reads none of its answers for the
write timeout is disconnected; a refusal on a connection the server then closes is followed by a lingering close
(http/lingering.py), so the caller still sending reads the refusal instead of a reset.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from typing import TYPE_CHECKING

import httptools

from podserve.runtime.http.lingering import Linger
from podserve.runtime.http.messages import Answer, Exchange, render
from podserve.runtime.http.parser import PIPELINE_DEPTH, RequestParser

if TYPE_CHECKING:
    from podserve.runtime.http.server import HttpServer

log = logging.getLogger(__name__)

#: Requests one connection may complete in one turn of the loop; the rest of its read waits for the next turn, so
#: a read of thousands of pipelined requests cannot keep every other connection (and the probes) waiting.
MESSAGES_PER_TURN = 32
#: Each connection's kernel send buffer (Linux doubles it), fixed rather than autotuned, and the most the loop
#: buffers for it before it stops reading that connection: autotuning grows the kernel's to megabytes, so a caller
#: that reads nothing could make the loop write tens of thousands of answers before its write clock even starts (25
#: such callers stalled the loop for seconds; at 64 KiB each they still cost the others ~0.5 s, hence 16 KiB).
#: Answers are small and the caller (the sidecar) is on loopback: larger ones are written as it reads.
SEND_BUFFER_BYTES = 16 * 1024


class Connection(RequestParser, asyncio.Protocol):
    """One client connection: parse requests as bytes arrive (RequestParser), write answers in request order."""

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

    # reading: what arrived, a slice at a time, each parsed by RequestParser

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
            self._linger = Linger(self.transport, self.server.loop, self.server.on_linger_end,
                                  max_bytes=self.server.limits.linger_bytes)
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

    # flow control: the pipeline depth

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
