"""A closed-loop HTTP client that keeps each answer's status and latency apart: for overload runs.

wrk reports one latency distribution over every answer; under overload most answers are
fast 503s, and what matters is the latency of the answered (200) requests and whether any
socket failed. This client runs `clients` keep-alive connections from one thread
(`selectors`, pre-built requests, no HTTP library): each sends its next request as soon as
the previous answer is read; or, with `honour_retry_after`, after a 503 it first waits the
seconds its `Retry-After` asks (as Envoy's retry policy and well-behaved callers do). Bounded
in time and in count. It costs about 20-30 µs of CPU per request, measured and reported
(`client_cpu_s`).
"""

from __future__ import annotations

import heapq
import selectors
import socket
import time
from dataclasses import dataclass, field
from typing import Sequence


@dataclass
class Outcome:
    """What one closed-loop run saw."""

    seconds: float = 0.0
    latencies: dict[int, list[float]] = field(default_factory=dict)  # status -> seconds per answer
    socket_errors: int = 0
    missing_retry_after: int = 0  # 503 answers without a Retry-After header
    client_cpu_s: float = 0.0
    send_seconds: float = 0.0  # send_burst: how long the client took to send every request of the burst

    def count(self, status: int) -> int:
        return len(self.latencies.get(status, []))

    @property
    def answers(self) -> int:
        return sum(len(v) for v in self.latencies.values())

    def percentile_ms(self, status: int, q: float) -> float | None:
        values = sorted(self.latencies.get(status, []))
        if not values:
            return None
        return round(values[min(len(values) - 1, int(q / 100 * len(values)))] * 1000, 2)

    def rate(self, status: int) -> float:
        return self.count(status) / self.seconds if self.seconds else 0.0


class _Connection:
    __slots__ = ("sock", "sent_at", "buffer", "wire", "open", "waiting")

    def __init__(self, sock: socket.socket):
        self.sock, self.sent_at, self.buffer, self.wire = sock, 0.0, b"", 0
        self.open = True  # False once closed: its caller's next request goes on a new connection
        self.waiting = False  # in `waiting`, to send (or reconnect) later


def run_closed_loop(host: str, port: int, wires: Sequence[bytes], clients: int, seconds: float,
                    max_requests: int = 1_000_000, honour_retry_after: bool = False) -> Outcome:
    """Keep `clients` connections busy for `seconds` (or `max_requests` answers) sending `wires` in turn; with
    `honour_retry_after`, a connection answered 503 waits its Retry-After before sending again. An answer with
    `Connection: close` (the pod's 503 past its connection limit) ends its connection, as any HTTP client ends
    it: the caller's next request goes on a new one, and no socket error is counted."""
    outcome = Outcome()
    waiting: list[tuple[float, int, _Connection]] = []  # (send at, tie-break, connection) after a 503
    selector = selectors.DefaultSelector()
    cpu_started = time.process_time()
    next_wire = 0

    def open_connection() -> None:
        try:
            sock = socket.create_connection((host, port), timeout=10)
        except OSError:
            outcome.socket_errors += 1
            return
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        connection = _Connection(sock)
        selector.register(sock, selectors.EVENT_READ, connection)
        try:
            send(connection)
        except OSError:  # closed before the request went: its caller tries again shortly, not in a hot loop
            close(connection, failed=True)
            later(connection, time.monotonic() + 0.01)

    def send(connection: _Connection) -> None:
        nonlocal next_wire
        connection.wire = next_wire
        next_wire = (next_wire + 1) % len(wires)
        connection.sent_at = time.monotonic()
        connection.sock.setblocking(True)
        connection.sock.sendall(wires[connection.wire])
        connection.sock.setblocking(False)

    def close(connection: _Connection, failed: bool) -> None:
        if not connection.open:
            return
        outcome.socket_errors += failed
        connection.open = False
        selector.unregister(connection.sock)
        connection.sock.close()

    def lost(connection: _Connection) -> None:
        """A socket error or an end nobody announced: a new connection, now or when this one was due to send."""
        close(connection, failed=True)
        if not connection.waiting:
            open_connection()

    def later(connection: _Connection, at: float) -> None:
        connection.waiting = True
        heapq.heappush(waiting, (at, id(connection), connection))

    def go_on(connection: _Connection) -> None:
        """Send the connection's next request, or, once it is closed, open a new one for its caller."""
        if not connection.open:
            open_connection()
            return
        try:
            send(connection)
        except OSError:
            lost(connection)

    started = time.monotonic()
    stop_at = started + seconds
    for _ in range(clients):
        open_connection()
    while time.monotonic() < stop_at and outcome.answers < max_requests and (selector.get_map() or waiting):
        while waiting and waiting[0][0] <= time.monotonic():
            connection = heapq.heappop(waiting)[2]
            connection.waiting = False
            go_on(connection)
        next_due = waiting[0][0] - time.monotonic() if waiting else 0.1
        for key, _ in selector.select(timeout=max(0.0, min(0.1, next_due, stop_at - time.monotonic()))):
            connection: _Connection = key.data
            if not connection.open:
                continue
            try:
                chunk = connection.sock.recv(65536)
            except (BlockingIOError, InterruptedError):
                continue
            except OSError:
                lost(connection)
                continue
            if not chunk:
                lost(connection)
                continue
            connection.buffer += chunk
            answer = _complete_answer(connection.buffer)
            if answer is None:
                continue
            status, headers, used = answer
            now = time.monotonic()
            outcome.latencies.setdefault(status, []).append(now - connection.sent_at)
            lowered = headers.lower()
            if status == 503 and b"\r\nretry-after:" not in lowered:
                outcome.missing_retry_after += 1
            connection.buffer = connection.buffer[used:]
            if b"\r\nconnection: close" in lowered:
                close(connection, failed=False)
            pause = _retry_after(headers) if honour_retry_after and status == 503 else 0.0
            if pause and now + pause < stop_at:
                later(connection, now + pause)
            elif now < stop_at and not pause:
                go_on(connection)
    outcome.seconds = time.monotonic() - started
    for key in list(selector.get_map().values()):
        key.fileobj.close()
    selector.close()
    outcome.client_cpu_s = time.process_time() - cpu_started
    return outcome


def _retry_after(head: bytes) -> float:
    """The seconds a response's Retry-After header asks for (0 when it has none)."""
    at = head.lower().find(b"\r\nretry-after:")
    if at < 0:
        return 0.0
    end = head.find(b"\r\n", at + 2)
    try:
        return float(head[at + 14:end if end >= 0 else len(head)])
    except ValueError:
        return 0.0


def _complete_answer(buffer: bytes) -> tuple[int, bytes, int] | None:
    """Return (status, header bytes, bytes used) once `buffer` holds one whole response, else None."""
    end = buffer.find(b"\r\n\r\n")
    if end < 0:
        return None
    head = buffer[:end]
    lowered = head.lower()
    at = lowered.find(b"\r\ncontent-length:")
    length = 0
    if at >= 0:
        line_end = lowered.find(b"\r\n", at + 2)
        length = int(head[at + 17:line_end if line_end >= 0 else len(head)])
    if len(buffer) < end + 4 + length:
        return None
    return int(head[9:12]), head, end + 4 + length


def send_burst(host: str, port: int, wires: Sequence[bytes], count: int, timeout: float = 60.0) -> Outcome:
    """Open `count` connections, then send one request on each as fast as one thread can, and read every answer.
    Latencies count from the first send: the last one is when the burst was fully answered."""
    outcome = Outcome()
    selector = selectors.DefaultSelector()
    sockets = []
    try:
        for _ in range(count):
            sock = socket.create_connection((host, port), timeout=10)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sockets.append(sock)
        started = time.monotonic()
        for number, sock in enumerate(sockets):
            sock.sendall(wires[number % len(wires)])
            sock.setblocking(False)
            selector.register(sock, selectors.EVENT_READ, [b""])
        outcome.send_seconds = time.monotonic() - started
        while selector.get_map() and time.monotonic() - started < timeout:
            for key, _ in selector.select(timeout=1.0):
                try:
                    chunk = key.fileobj.recv(65536)
                except OSError:
                    chunk = b""
                if not chunk:
                    outcome.socket_errors += 1
                    selector.unregister(key.fileobj)
                    continue
                key.data[0] += chunk
                answer = _complete_answer(key.data[0])
                if answer is not None:
                    status, headers, _ = answer
                    outcome.latencies.setdefault(status, []).append(time.monotonic() - started)
                    if status == 503 and b"\r\nretry-after:" not in headers.lower():
                        outcome.missing_retry_after += 1
                    selector.unregister(key.fileobj)
        outcome.seconds = time.monotonic() - started
    finally:
        for sock in sockets:
            sock.close()
        selector.close()
    return outcome
