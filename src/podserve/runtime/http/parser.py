"""Reading requests off a connection: httptools' callbacks, a slice at a time, each byte counted against a limit.

The request head is counted as its bytes arrive, however it is split (431 above the limit); a body is held against
the pod-wide budget for bodies still being sent (503 when it has no room) and its own limit (413); what the parser
cannot read gets a 400 naming it. `RequestParser` is the reading half of `Connection` (http/connection.py), which
holds the state both halves use and writes the answers.
"""

from __future__ import annotations

import logging
import time
from urllib.parse import unquote_to_bytes

import httptools

from podserve.runtime.core.logs import RUNTIME_FAULT
from podserve.runtime.http.messages import BODY_SLACK_BYTES, LARGE_BODY_BYTES, LARGE_BODY_SHARE, Exchange

log = logging.getLogger(__name__)

#: Requests one connection may have read and not yet answered before the server stops reading it.
PIPELINE_DEPTH = 16
#: Bytes parsed at a time while a request head (or a chunked body) may end in them: what one connection can make the
#: server parse beyond its pipeline depth. A Content-Length body is parsed to its end in one step.
PARSE_SLICE_BYTES = 4096
#: A Content-Length longer than this is refused 400 (20 digits hold every length a server can take).
MAX_CONTENT_LENGTH_DIGITS = 20


class _Refused(Exception):
    """Stop parsing a connection whose request was refused (raised through httptools)."""


class RequestParser:
    """The httptools callbacks of a `Connection`, and the refusals they make (the connection holds their state)."""

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
                log.error("reading a request failed", exc_info=exc.__context__, extra=RUNTIME_FAULT)
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


def _unquote(path: bytes) -> str:
    """The URL path as WSGI's PATH_INFO holds it: percent-decoded bytes read as latin-1."""
    return (unquote_to_bytes(path) if b"%" in path else path).decode("latin-1")
