"""Admission at the door: every request is timed from when the server read it, and refused at once when full.

Waitress reads requests in its event-loop thread and queues them for its request threads.
Two things happen there that a WSGI app cannot see by itself, and this module makes them
visible:

- each request is stamped with the moment its first bytes were read (`RECEIVED_AT` in the
  WSGI environ), so that its deadline counts the time it waited for a request thread;
- a `POST` to the service route that arrives while the pod already holds as many requests
  as it may (`Admission.limit`: those in waitress's task queue plus those the app is serving)
  is answered `503` with `Retry-After` at once, by the thread that read it, without a request
  thread and without running any app code.

With waitress's connection limit raised (main.py) and every waiting connection accepted at
once (waitress takes one per pass of its loop), callers no longer wait in the kernel's accept
queue either: every request the pod has is either being served or was refused.

Probes (`/api/ping`, `/api/live`) and `/metrics` are never refused here.
"""

from __future__ import annotations

import json
import time
from email.utils import formatdate
from typing import Callable

from waitress.channel import HTTPChannel
from waitress.parser import HTTPRequestParser, ParsingError
from waitress.task import ErrorTask, ThreadedTaskDispatcher, WSGITask

#: WSGI environ key: time.monotonic() when the server read the first bytes of the request.
RECEIVED_AT = "podserve.received_at"

#: A channel whose unsent output is over this is not answered from the event loop (it could block there).
_LOOP_WRITE_LIMIT = 64 * 1024
#: Connections accepted in one pass of waitress's loop, at most.
ACCEPTS_PER_PASS = 256


class StampedRequestParser(HTTPRequestParser):
    """Waitress's request parser, stamped with the moment the request's first bytes were read.

    It also answers 400 where waitress's own parser would raise: a Content-Length of more
    digits than Python's int() reads (sys.get_int_max_str_digits) made waitress drop the
    connection without an answer and log an error.
    """

    def __init__(self, adj):
        super().__init__(adj)
        self.received_at = time.monotonic()

    def parse_header(self, header_plus):
        try:
            return super().parse_header(header_plus)
        except ValueError as exc:  # not a ParsingError: e.g. int() of a 5,000-digit Content-Length
            raise ParsingError(f"a header could not be read ({str(exc)[:80]}); Content-Length must be a "
                               f"number of bytes") from None


class StampedWSGITask(WSGITask):
    """Waitress's WSGI task, passing the request's stamp to the app in the environ."""

    def get_environment(self):
        environ = super().get_environment()
        environ[RECEIVED_AT] = getattr(self.request, "received_at", None) or time.monotonic()
        return environ


class Shed:
    """The `error` a refused request carries: waitress's error-task path then answers it (see ShedAwareErrorTask)."""

    def __init__(self, body: bytes, retry_after: str):
        self.body = body
        self.retry_after = retry_after


class ShedAwareErrorTask(ErrorTask):
    """Answer a refused request with our JSON 503 and Retry-After, keeping the connection open."""

    def execute(self):
        error = self.request.error
        if not isinstance(error, Shed):
            return super().execute()
        self.status = "503 Service Unavailable"
        self.response_headers.extend([("Content-Type", "application/json"), ("Retry-After", error.retry_after)])
        self.content_length = len(error.body)
        self.write(error.body)


class AdmittingChannel(HTTPChannel):
    """Waitress's HTTP channel with stamped requests and the 503 answer for refused ones."""

    parser_class = StampedRequestParser
    task_class = StampedWSGITask
    error_task_class = ShedAwareErrorTask


class Admission:
    """Decide, per request, whether the pod takes it: at most `limit()` requests held at once."""

    def __init__(self, route: str, serving: Callable[[], int], limit: Callable[[], int], refusal_body: dict,
                 on_refused: Callable[[], None] = lambda: None, retry_after: str = "1"):
        self.route = route
        self.serving = serving
        self.limit = limit
        self.shed = Shed(json.dumps(refusal_body).encode(), retry_after)
        self.on_refused = on_refused

    def refuses(self, request, queued: int) -> bool:
        """True when `request` is a call to the service and `queued` + the requests being served reach the limit."""
        return (request.command == "POST" and request.path == self.route
                and queued + self.serving() >= self.limit())


class AdmissionDispatcher(ThreadedTaskDispatcher):
    """Waitress's task dispatcher that answers refused requests at once instead of queueing them.

    Waitress calls `add_task` with the channel's `requests_lock` held, from the event loop when
    a request has been read, or from a request thread when a keep-alive connection has a next
    request already read. A refused HTTP/1.1 keep-alive request is answered right there: its
    prebuilt 503 goes into the channel's output buffer (flushed by this same call when the
    socket takes it) and the request is dropped from the channel. Anything else refused (HTTP/1.0,
    `Connection: close`, a channel with much unsent output) goes to a request thread, which
    answers the same 503 through waitress's error-task path.
    """

    def __init__(self, admission: Admission):
        super().__init__()
        self.admission = admission
        self._response_head = b""
        self._date_second = -1

    def attach(self, server) -> None:
        """Make `server` use stamped requests and the 503 answer, and accept every waiting connection at once;
        call once, before `server.run()`."""
        server.channel_class = AdmittingChannel
        accept_one = server.handle_accept

        def accept_waiting() -> None:
            # Waitress accepts one connection per pass of its loop: a burst of connections then waits in the
            # kernel's accept queue, unseen and with no deadline running. Take them all (up to a bound) now.
            for _ in range(ACCEPTS_PER_PASS):
                before = len(server._map)
                accept_one()
                if len(server._map) == before or len(server._map) >= server.adj.connection_limit:
                    return

        server.handle_accept = accept_waiting

    def add_task(self, channel) -> None:
        while channel.requests:
            request = channel.requests[0]
            if request.error is not None or not self.admission.refuses(request, len(self.queue)):
                break
            self.admission.on_refused()
            request.error = self.admission.shed
            if (request.version != "1.1" or request.connection_close or request.expect_continue
                    or channel.total_outbufs_len > _LOOP_WRITE_LIMIT or not channel.connected):
                break  # a request thread answers it through ShedAwareErrorTask
            channel.requests.pop(0)
            request.close()
            try:
                channel.write_soon(self._response())
            except Exception:  # the client went away: waitress closes the channel
                return
        if channel.requests:
            super().add_task(channel)

    def _response(self) -> bytes:
        now = int(time.time())
        if now != self._date_second:
            shed = self.admission.shed
            self._response_head = (
                f"HTTP/1.1 503 Service Unavailable\r\nContent-Length: {len(shed.body)}\r\n"
                f"Content-Type: application/json\r\nRetry-After: {shed.retry_after}\r\n"
                f"Date: {formatdate(now, usegmt=True)}\r\nServer: podserve\r\n\r\n").encode() + shed.body
            self._date_second = now
        return self._response_head
