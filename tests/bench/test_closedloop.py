"""The overload client: whole responses only, the Retry-After a 503 asks for, and connections the server ends."""

import contextlib
import socket
import threading

from bench.closedloop import _complete_answer, _retry_after, run_closed_loop


def test_an_answer_is_complete_only_with_its_whole_body():
    head = b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 4\r\nRetry-After: 1\r\n\r\n"
    assert _complete_answer(head + b"ab") is None
    status, headers, used = _complete_answer(head + b"abcdHTTP/1.1 200 OK")
    assert (status, used) == (503, len(head) + 4) and headers.startswith(b"HTTP/1.1 503")


def test_retry_after_is_read_from_the_headers_and_absent_means_no_wait():
    assert _retry_after(b"HTTP/1.1 503 X\r\nContent-Length: 2\r\nRetry-After: 1") == 1.0
    assert _retry_after(b"HTTP/1.1 503 X\r\nretry-after: 2.5\r\nContent-Length: 2") == 2.5
    assert _retry_after(b"HTTP/1.1 503 X\r\nContent-Length: 2") == 0.0
    assert _retry_after(b"HTTP/1.1 503 X\r\nRetry-After: Wed, 21 Oct 2026 07:28:00 GMT") == 0.0


class _Door:
    """A loopback HTTP server: each connection reads one request and answers it; the first `refusals` connections
    get a 503 (Retry-After: 0.05) and are closed, saying `Connection: close` when `announce`, the rest get 200s."""

    def __init__(self, refusals: int, announce: bool):
        self.refusals, self.announce, self.accepted = refusals, announce, 0
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                sock, _ = self.listener.accept()
            except OSError:
                return
            self.accepted += 1
            threading.Thread(target=self._serve, args=(sock, self.accepted <= self.refusals), daemon=True).start()

    def _serve(self, sock: socket.socket, refuse: bool) -> None:
        with sock, contextlib.suppress(OSError):  # the client closes what is open when its run ends
            buffer = b""
            while True:
                while b"\r\n\r\n" not in buffer:
                    chunk = sock.recv(4096)
                    if not chunk:
                        return
                    buffer += chunk
                buffer = buffer.split(b"\r\n\r\n", 1)[1]
                if refuse:
                    close = b"Connection: close\r\n" if self.announce else b""
                    sock.sendall(b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 0.05\r\n" + close +
                                 b"Content-Length: 4\r\n\r\nfull")
                    return
                sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")


WIRES = [b"GET / HTTP/1.1\r\nHost: door\r\n\r\n"]


def test_a_503_that_closes_its_connection_is_a_refusal_and_the_caller_goes_on_over_a_new_one():
    """The pod past its connection limit answers 503 with `Connection: close` (runtime/http/server.py). That is a
    refusal, not a socket error: the caller waits its Retry-After and sends again on a new connection (make bench's
    16x overload row at a knee of 64 is 1,024 callers, over the pod's 1,000 connections)."""
    door = _Door(refusals=4, announce=True)
    try:
        outcome = run_closed_loop("127.0.0.1", door.port, WIRES, clients=4, seconds=0.6, honour_retry_after=True)
    finally:
        door.listener.close()
    assert outcome.socket_errors == 0
    assert outcome.count(503) == 4 and outcome.missing_retry_after == 0
    assert outcome.count(200) > 4  # every caller went on over a new connection


def test_a_connection_closed_while_it_waits_its_retry_after_is_never_used_again():
    """A connection the server ends without saying so, while its caller waits the 503's Retry-After, counts one socket
    error and its caller goes on over a new connection when due (sending on the closed one raised ValueError in
    make bench and ended the overload run)."""
    door = _Door(refusals=4, announce=False)
    try:
        outcome = run_closed_loop("127.0.0.1", door.port, WIRES, clients=4, seconds=0.6, honour_retry_after=True)
    finally:
        door.listener.close()
    assert outcome.count(503) == 4 and outcome.socket_errors == 4
    assert outcome.count(200) > 4
