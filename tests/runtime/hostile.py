"""Raw-socket clients that misbehave on purpose, and what the tests read back from the server under attack."""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path

import requests

#: A client whose receive buffer is this small stops taking answers after a few kilobytes.
TINY_RECEIVE_BUFFER = 4096


def connect(port: int, timeout: float = 10.0, receive_buffer: int | None = None,
            send_buffer: int | None = None) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if receive_buffer:  # before connect, so the window the server sees is small from the start
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
    if send_buffer:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, send_buffer)
    sock.settimeout(timeout)
    sock.connect(("127.0.0.1", port))
    return sock


def request_head(method: str, path: str, headers: dict[str, str] | None = None, version: str = "1.1") -> bytes:
    lines = [f"{method} {path} HTTP/{version}", "Host: pod"] + [f"{k}: {v}" for k, v in (headers or {}).items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def json_request(path: str, body: dict, headers: dict[str, str] | None = None) -> bytes:
    data = json.dumps(body).encode()
    return request_head("POST", path, {"Content-Type": "application/json", "Content-Length": str(len(data)),
                                       **(headers or {})}) + data


class Response:
    """One HTTP response read off a raw socket."""

    def __init__(self, status: int, headers: dict[str, str], body: bytes, interim: list[int]):
        self.status, self.headers, self.body, self.interim = status, headers, body, interim

    def json(self):
        return json.loads(self.body)

    @property
    def closes(self) -> bool:
        return self.headers.get("connection", "").lower() == "close"


class Reader:
    """Read responses off `sock` through one buffer, so pipelined answers are never lost."""

    def __init__(self, sock: socket.socket):
        self.sock = sock
        self.buffer = b""

    def _fill(self) -> bool:
        chunk = self.sock.recv(65536)
        self.buffer += chunk
        return bool(chunk)

    def _line(self) -> bytes:
        while b"\r\n" not in self.buffer:
            if not self._fill():
                raise EOFError(f"the server closed the connection mid-answer; had {self.buffer[:200]!r}")
        line, _, self.buffer = self.buffer.partition(b"\r\n")
        return line

    def response(self, head_only: bool = False) -> Response:
        """The next final response (interim 1xx answers are collected in `interim`)."""
        interim = []
        while True:
            status_line = self._line()
            status = int(status_line.split()[1])
            headers = {}
            while line := self._line():
                name, _, value = line.decode("latin-1").partition(":")
                headers[name.strip().lower()] = value.strip()
            if 100 <= status < 200:
                interim.append(status)
                continue
            length = 0 if head_only else int(headers.get("content-length", "0"))
            while len(self.buffer) < length:
                if not self._fill():
                    raise EOFError("the server closed the connection mid-body")
            body, self.buffer = self.buffer[:length], self.buffer[length:]
            return Response(status, headers, body, interim)

    def closed_by_server(self, within: float) -> bool:
        """True once the server has closed (EOF or reset) within `within` seconds, whatever else it sent first."""
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            self.sock.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                if not self._fill():
                    return True
            except (ConnectionResetError, BrokenPipeError):
                return True
            except socket.timeout:
                return False
        return False


def _paced(pieces, pause: float, within: float):
    """`pieces` one at a time, `pause` seconds after each, for at most `within` seconds."""
    deadline = time.monotonic() + within
    for piece in pieces:
        if time.monotonic() > deadline:
            return
        yield piece
        if pause:
            time.sleep(pause)


def send_until_refused(sock: socket.socket, pieces, pause: float = 0.0, within: float = 30.0) -> int:
    """Send `pieces` one by one until the server stops taking them (it closed, or answered); return bytes sent."""
    sent = 0
    sock.setblocking(False)
    try:
        for piece in _paced(pieces, pause, within):
            try:
                sock.recv(1, socket.MSG_PEEK)
                return sent  # an answer, or EOF, came back: the server refused what we send
            except BlockingIOError:
                pass
            except (ConnectionResetError, BrokenPipeError):
                return sent
            try:
                sent += sock.send(piece)
            except BlockingIOError:
                time.sleep(0.01)
            except (ConnectionResetError, BrokenPipeError):
                return sent
        return sent
    finally:
        sock.setblocking(True)


def send_until_closed(sock: socket.socket, pieces, pause: float = 0.0, within: float = 30.0) -> int:
    """Send `pieces` one by one, reading nothing, until the server has closed the connection (a send fails) or
    `within` seconds pass; return bytes sent. An answer or end of file from the server does not stop it."""
    sent = 0
    sock.settimeout(within)
    try:
        for piece in _paced(pieces, pause, within):
            sock.sendall(piece)
            sent += len(piece)
    except (ConnectionResetError, BrokenPipeError, socket.timeout):
        pass
    return sent


def cpu_seconds(pid: int) -> float:
    """User and system CPU the process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wait_until_quiet(pid: int, within: float = 60.0, window: float = 0.5, busy_share: float = 0.2) -> None:
    """Wait until the process has done what it was given: under `busy_share` of a core for one `window`."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        before = cpu_seconds(pid)
        time.sleep(window)
        if cpu_seconds(pid) - before < busy_share * window:
            return
    raise AssertionError(f"the server was still busy after {within:.0f} s")


def peak_rss_bytes(pid: int) -> int:
    """The process's peak resident memory so far (VmHWM)."""
    return _status_kib(pid, "VmHWM") * 1024


def rss_bytes(pid: int) -> int:
    return _status_kib(pid, "VmRSS") * 1024


def _status_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(f"/proc/{pid}/status has no {field}")


def flood_until_blocked(sock: socket.socket, piece: bytes, within: float = 20.0, blocked_for: float = 1.0) -> int:
    """Send `piece` over and over, reading nothing, until sending has blocked for `blocked_for` seconds (the server
    stopped reading) or the server dropped the connection; return bytes sent."""
    sent, blocked_since = 0, None
    deadline = time.monotonic() + within
    sock.setblocking(False)
    try:
        while time.monotonic() < deadline:
            try:
                sent += sock.send(piece)
                blocked_since = None
            except BlockingIOError:
                blocked_since = blocked_since or time.monotonic()
                if time.monotonic() - blocked_since > blocked_for:
                    break
                time.sleep(0.01)
            except (ConnectionResetError, BrokenPipeError):
                break
        return sent
    finally:
        sock.setblocking(True)


def served_metrics(server, within: float = 10.0) -> dict[str, float]:
    """The server's /metrics samples, retried while a flood still has it answer 503."""
    deadline = time.monotonic() + within
    while True:
        reply = requests.get(server.url("/metrics"), timeout=5)
        if reply.status_code == 200:
            return server.metrics_from_text(reply.text)
        if time.monotonic() > deadline:
            raise AssertionError(f"/metrics answered {reply.status_code}: {reply.text[:200]}")
        time.sleep(0.1)


def requests_counted(server, status: int, route: str | None = None) -> float:
    """podserve_requests_total for `status` (and `route` if given), summed over the other labels."""
    total = 0.0
    for key, value in served_metrics(server).items():
        if key.startswith("podserve_requests_total{") and f'status="{status}"' in key \
                and (route is None or f'route="{route}"' in key):
            total += value
    return total


def answers_normally(server, body: dict | None = None) -> dict:
    """A normal request on a new connection: the server still serves. Returns its JSON answer."""
    reply = requests.post(server.api, json=body or {"postid": "after", "data": [1, 2, 3, 4]}, timeout=10)
    assert reply.status_code == 200, reply.text
    return reply.json()


def timed_answer(port: int, raw_request: bytes, timeout: float = 10.0) -> tuple[Response, float]:
    """Send `raw_request` on a new connection (as the kubelet sends a probe: one write, then read); return the
    answer and the seconds from connecting to having it."""
    started = time.monotonic()
    with connect(port, timeout=timeout) as sock:
        sock.sendall(raw_request)
        answer = Reader(sock).response(head_only=raw_request.startswith(b"HEAD "))
    return answer, time.monotonic() - started


def send_all_then_read(port: int, head: bytes, pieces, timeout: float = 60.0) -> Response:
    """Send `head` and every one of `pieces` without reading (a blocking sendall each, as a naive client does),
    and only then read the answer. A reset on the way is an AssertionError saying where it came.

    The socket's send buffer is fixed at 64 KiB: otherwise the kernels' buffers (autotuned to megabytes on
    loopback) may take all of it before the server closes, and whether a reset then loses the answer is a race."""
    with connect(port, timeout=timeout, send_buffer=64 * 1024) as sock:
        sent = 0
        try:
            sock.sendall(head)
            for piece in pieces:
                sock.sendall(piece)
                sent += len(piece)
        except (ConnectionResetError, BrokenPipeError) as exc:
            raise AssertionError(f"the server reset the connection after {sent} bytes sent: {exc!r}") from exc
        reader = Reader(sock)
        try:
            answer = reader.response()
        except (ConnectionResetError, BrokenPipeError) as exc:
            raise AssertionError(f"all {sent} bytes sent, then the answer was lost to a reset: {exc!r}") from exc
        assert reader.closed_by_server(within=5), "the server left the refused connection open"
        return answer


def metric_value(server, name: str, **labels: str) -> float:
    """One sample of the server's /metrics, by name and (some of) its labels; 0 when absent."""
    total = 0.0
    for key, value in served_metrics(server).items():
        if key.split("{")[0] == name and all(f'{k}="{v}"' in key for k, v in labels.items()):
            total += value
    return total


def memory_for_uploads(uploads: int, **settings) -> int:
    """The pod memory (memory_bytes) whose plan lets the one-process server under test read `uploads` bytes of bodies
    at once (podserve/memory_plan.py: the HTTP server's budget for bodies still being sent is the plan's)."""
    from podserve import memory_plan
    from podserve.runtime.processes import layout
    from podserve.settings import ServingSettings

    def planned(memory: int) -> int:
        config = ServingSettings(**settings, memory_bytes=memory)
        return memory_plan.plan(config, 0, False, layout.model_bytes(config.model_path)).uploads

    low, high = 1 << 20, 1 << 40
    while high - low > 1:
        middle = (low + high) // 2
        low, high = (middle, high) if planned(middle) < uploads else (low, middle)
    return high
