"""The pod's HTTP/1.1 server: one event-loop thread reads and writes every connection.

The loop (asyncio on uvloop, requests parsed by httptools, both C) does the HTTP work in a
few microseconds per request, and hands each complete request to `dispatch`, which decides
where it runs; whoever answers calls `Exchange.answer` from any thread, and the loop writes
the answer. No thread waits for a request's inference, and nothing is queued where no code
sees it: a request is either read and counted by the dispatcher, or still on the wire.

HTTP/1.1 keep-alive and pipelining (answers go out in request order), HTTP/1.0, chunked
bodies, `Expect: 100-continue` and the parser's own refusals (400, naming what it could not
read) are handled here (server.py: the listener, the clocks' sweep, answers from any thread; connection.py: one
connection, its pipeline and its answers; parser.py: reading requests; messages.py: the limits, `Exchange` and
`Answer`); routing, admission and the views are not.

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
import logging
import resource
import socket
import threading
import time
from collections import deque
from email.utils import formatdate
from typing import Callable

from podserve import image_identity
from podserve.errors import RETRY_AFTER_SECONDS
from podserve.runtime.core.logs import RUNTIME_FAULT
from podserve.runtime.http.connection import SEND_BUFFER_BYTES, Connection
from podserve.runtime.http.messages import SERVER_NAME, Answer, Exchange, HttpLimits, render
from podserve.runtime.http.probe_lane import ProbeLane

log = logging.getLogger(__name__)


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
        self.probe_lane = ProbeLane(self._probe_reply, self.connection_refusal, on_over_limit, on_linger_end,
                                    linger_bytes=limits.linger_bytes)
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
            log.exception("answering a probe over the connection limit failed", extra=RUNTIME_FAULT)
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
                log.exception("writing an answer failed", extra=RUNTIME_FAULT)

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
