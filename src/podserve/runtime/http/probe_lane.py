"""Connections beyond the connection limit: read only their request line, and answer the probes among them.

The kubelet opens a new connection for every probe, so a limit on connections alone would let
whoever holds `max_connections` of them fail the pod's readiness and, through its liveness,
restart it. A connection over the limit is therefore not refused unread: it is handed to this
lane, which reads at most `REQUEST_LINE_BYTES` for at most `REQUEST_LINE_SECONDS`, until its
request line ends; `answer(path, method)` turns that line into the bytes to send (a probe's
answer from the pod's state, or the prebuilt 503 for anything else), and the connection is
closed with a lingering close (`lingering.Linger`).

The lane holds at most `LANE_SIZE` connections, read or lingering; one more evicts the
longest-held lingering one, else the longest-held one still being read, which gets the 503 at
once, unread. So a crowd of connections over the limit costs the pod a bounded amount of memory
and never keeps a new probe from being read: a probe's request arrives right behind its
connection, where an attacker's idle connections age out of the lane first. Depends on nothing
but asyncio and the `lingering` module, so that any front-end process can run one.
"""

from __future__ import annotations

import asyncio
from typing import Callable

from podserve.metric_names import OVER_LIMIT_EVICTED, OVER_LIMIT_PROBE, OVER_LIMIT_REFUSED
from podserve.runtime.http.lingering import LINGER_BYTES, Linger

#: Over-limit connections read or lingering at once. The kubelet probes once per probe period (10 s by default,
#: three probes) and Kong about as often: 64 is far more than they need at once, and bounds what a crowd costs.
LANE_SIZE = 64
#: The longest request line read: a probe's is about 30 bytes (`GET /api/ping HTTP/1.1`).
REQUEST_LINE_BYTES = 1024
#: The longest an over-limit connection may take to send its request line: the kubelet's default probe timeout.
REQUEST_LINE_SECONDS = 1.0



def request_line(data: bytes) -> tuple[str, str] | None:
    """The path and method of an HTTP/1.x request line (`data` up to its CRLF), or None if it is not one."""
    parts = data.rstrip(b"\r").split(b" ")
    if len(parts) != 3 or not parts[2].startswith(b"HTTP/1."):
        return None
    method, target = parts[0], parts[1]
    if not method.isalpha() or not target.startswith(b"/"):
        return None
    return target.split(b"?", 1)[0].decode("latin-1"), method.decode("ascii")


class ProbeLane:
    """The over-limit connections of one server.

    `answer(path, method)` returns the bytes to send for a request line: the whole answer, with
    `Connection: close` (None: send `refusal`, the prebuilt 503). `on_outcome(outcome)` counts each
    connection once, with one of metric_names.OVER_LIMIT_OUTCOMES; `on_linger_end(ending)` counts each lingering close.
    """

    def __init__(self, answer: Callable[[str, str], bytes | None], refusal: bytes,
                 on_outcome: Callable[[str], None], on_linger_end: Callable[[str], None],
                 size: int = LANE_SIZE, line_bytes: int = REQUEST_LINE_BYTES,
                 line_seconds: float = REQUEST_LINE_SECONDS, linger_bytes: int = LINGER_BYTES):
        self.answer, self.refusal = answer, refusal
        self.linger_bytes = linger_bytes  # a caller uploading any body the pod takes reads its 503
        self.on_outcome, self.on_linger_end = on_outcome, on_linger_end
        self.size, self.line_bytes, self.line_seconds = size, line_bytes, line_seconds
        self.reading: dict[OverLimitConnection, None] = {}    # in arrival order: the oldest first
        self.lingering: dict[OverLimitConnection, None] = {}

    def __len__(self) -> int:
        return len(self.reading) + len(self.lingering)

    def take(self, transport: asyncio.Transport) -> None:
        """Read `transport`'s request line in the lane (from the connection_made of the connection refused)."""
        if len(self) >= self.size:
            oldest = next(iter(self.lingering or self.reading))
            oldest.evict()
        connection = OverLimitConnection(self, transport)
        self.reading[connection] = None
        transport.set_protocol(connection)

    def close_all(self) -> None:
        for connection in list(self.reading) + list(self.lingering):
            connection.abort()


class OverLimitConnection(asyncio.Protocol):
    """One connection over the limit: its request line, one answer, a lingering close."""

    def __init__(self, lane: ProbeLane, transport: asyncio.Transport):
        self.lane = lane
        self.transport: asyncio.Transport | None = transport
        self.line = b""
        self.linger: Linger | None = None
        self.loop = asyncio.get_running_loop()
        self.timer: asyncio.TimerHandle | None = self.loop.call_later(lane.line_seconds, self._reply, None, 0)

    def data_received(self, data: bytes) -> None:
        if self.linger is not None:
            self.linger.discard(len(data))
            return
        seen = len(self.line)
        self.line += data[:self.lane.line_bytes + 2 - seen]
        end = self.line.find(b"\n", max(0, seen - 1))
        if end >= 0:
            parsed = request_line(self.line[:end])
            self._reply(self.lane.answer(*parsed) if parsed is not None else None, len(data) - (end + 1 - seen))
        elif len(self.line) > self.lane.line_bytes:
            self._reply(None, len(data))

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self._stop_clock()
        self.lane.reading.pop(self, None)
        self.lane.lingering.pop(self, None)
        if self.linger is not None:
            self.linger.caller_closed()

    def _reply(self, reply: bytes | None, unread: int) -> None:
        """Send `reply` (None: the 503) and close lingering; `unread`: bytes of the last read after the line."""
        self._stop_clock()
        if self.transport is None:
            return
        self.lane.on_outcome(OVER_LIMIT_PROBE if reply is not None else OVER_LIMIT_REFUSED)
        self.transport.write(reply if reply is not None else self.lane.refusal)
        self.lane.reading.pop(self, None)
        self.lane.lingering[self] = None
        self.linger = Linger(self.transport, self.loop, self.lane.on_linger_end, max_bytes=self.lane.linger_bytes)
        if unread > 0:
            self.linger.discard(unread)

    def evict(self) -> None:
        """Make room in a full lane: close now; one still being read gets the 503 first, unread."""
        self.lane.reading.pop(self, None)
        self.lane.lingering.pop(self, None)
        if self.linger is not None:
            self.linger.cut()
        elif self.transport is not None:
            self._stop_clock()
            self.lane.on_outcome(OVER_LIMIT_EVICTED)
            self.transport.write(self.lane.refusal)
            self.transport.close()

    def abort(self) -> None:
        """Drop the connection at once (the server is stopping)."""
        self._stop_clock()
        if self.linger is not None:
            self.linger.cut()
        if self.transport is not None:
            self.transport.abort()

    def _stop_clock(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
