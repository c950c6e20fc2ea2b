"""The pod's own HTTP/1.1 server over raw sockets: framing, pipelining, limits, and what it refuses."""

from __future__ import annotations

import json
import socket

import pytest

from podserve.testbed.processes import poll_until

LIMIT = 4096  # max_body_bytes for these servers


@pytest.fixture
def server(start_server, affine_model):
    return start_server(handler="fixture_handlers:Affine", model_path=str(affine_model), max_body_bytes=LIMIT)


def _request(server, body: bytes, *, version: str = "1.1", extra: str = "", path: str | None = None) -> bytes:
    return (f"POST {path or '/api/' + server.service} HTTP/{version}\r\nHost: x\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n{extra}\r\n").encode() + body


def _read_answer(sock: "Reader") -> tuple[int, dict, dict]:
    status_line = sock.file.readline()
    assert status_line.startswith(b"HTTP/1.1 "), status_line
    headers = {}
    while (line := sock.file.readline()) not in (b"\r\n", b""):
        name, _, value = line.decode("latin-1").partition(":")
        headers[name.strip()] = value.strip()
    body = sock.file.read(int(headers["Content-Length"]))
    return int(status_line.split()[1]), headers, json.loads(body)


class Reader:
    """A client connection whose answers are read through one buffered file, so pipelined answers are not lost."""

    def __init__(self, port: int):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.file = self.sock.makefile("rb")
        self.sendall = self.sock.sendall

    def recv(self, size: int) -> bytes:
        return self.file.read1(size)

    def __enter__(self) -> "Reader":
        return self

    def __exit__(self, *_exc) -> None:
        self.file.close()
        self.sock.close()


def _connect(server) -> Reader:
    return Reader(server.port)


def test_pipelined_requests_are_answered_in_order_on_one_connection(server):
    bodies = [json.dumps({"postid": f"p{i}", "data": [i]}).encode() for i in range(5)]
    with _connect(server) as sock:
        sock.sendall(b"".join(_request(server, body) for body in bodies))  # all five in one write
        answers = [_read_answer(sock) for _ in bodies]
    assert [a[2]["postid"] for a in answers] == [f"p{i}" for i in range(5)]
    assert [a[2]["results"] for a in answers] == [[2.0 * i + 1] for i in range(5)]


def test_http_1_0_is_answered_and_closed_and_keep_alive_is_honoured(server):
    body = b'{"postid": "old", "data": [1]}'
    with _connect(server) as sock:
        sock.sendall(_request(server, body, version="1.0"))
        status, headers, answer = _read_answer(sock)
        assert status == 200 and answer["postid"] == "old"
        assert sock.recv(1) == b"", "an HTTP/1.0 connection without keep-alive must be closed after the answer"
    with _connect(server) as sock:
        for postid in ("a", "b"):
            sock.sendall(_request(server, f'{{"postid": "{postid}", "data": [1]}}'.encode(), version="1.0",
                                  extra="Connection: keep-alive\r\n"))
            status, headers, answer = _read_answer(sock)
            assert status == 200 and answer["postid"] == postid and headers["Connection"] == "keep-alive"


def test_a_chunked_body_is_read_whole(server):
    body = b'{"postid": "chunks", "data": [1, 2, 3]}'
    chunked = b"".join(b"%x\r\n%s\r\n" % (len(part), part) for part in (body[:7], body[7:20], body[20:])) + b"0\r\n\r\n"
    head = (f"POST /api/{server.service} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            f"Transfer-Encoding: chunked\r\n\r\n").encode()
    with _connect(server) as sock:
        sock.sendall(head + chunked)
        status, _, answer = _read_answer(sock)
    assert status == 200 and answer["results"] == [3.0, 5.0, 7.0]


def test_expect_100_continue_gets_the_interim_answer_before_the_body_is_sent(server):
    body = b'{"postid": "patient", "data": [4]}'
    head = (f"POST /api/{server.service} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\nExpect: 100-continue\r\n\r\n").encode()
    with _connect(server) as sock:
        sock.sendall(head)
        assert sock.recv(64) == b"HTTP/1.1 100 Continue\r\n\r\n"
        sock.sendall(body)
        status, _, answer = _read_answer(sock)
    assert status == 200 and answer["results"] == [9.0]


def test_a_body_a_little_over_the_limit_gets_413_and_the_connection_stays_usable(server):
    with _connect(server) as sock:
        sock.sendall(_request(server, b"x" * (LIMIT + 10)))
        status, _, answer = _read_answer(sock)
        assert status == 413 and answer["field"] == "body" and str(LIMIT) in answer["msg"]
        sock.sendall(_request(server, b'{"postid": "next", "data": [1]}'))
        status, _, answer = _read_answer(sock)
        assert status == 200 and answer["postid"] == "next"


def test_a_huge_content_length_is_refused_from_the_headers_without_reading_the_body(server):
    head = (f"POST /api/{server.service} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            f"Content-Length: {50 * 1024 * 1024}\r\n\r\n").encode()
    with _connect(server) as sock:
        sock.sendall(head + b"x" * 1000)  # the other 50 MiB are never sent
        status, headers, answer = _read_answer(sock)
        assert status == 413 and answer["error"] == "payload_too_large" and headers["Connection"] == "close"
        assert sock.recv(1) == b""


def test_headers_over_64_kib_get_431_and_garbage_gets_400_and_the_server_keeps_serving(server):
    with _connect(server) as sock:
        sock.sendall(_request(server, b"{}", extra="X-Padding: " + "a" * 70_000 + "\r\n"))
        status, _, answer = _read_answer(sock)
        assert status == 431 and str(64 * 1024) in answer["msg"]
    with _connect(server) as sock:
        sock.sendall(b"\x16\x03\x01\x02\x00 not http at all\r\n\r\n")  # e.g. a TLS hello on the plain port
        status, _, answer = _read_answer(sock)
        assert status == 400 and "HTTP/1.1" in answer["msg"]
    with _connect(server) as sock:
        sock.sendall(_request(server, b'{"postid": "fine", "data": [2]}'))
        assert _read_answer(sock)[2]["results"] == [5.0]


def test_a_client_that_leaves_mid_request_costs_nothing_and_its_answer_is_dropped(server):
    body = b'{"postid": "gone", "data": [1]}'
    for _ in range(20):
        with _connect(server) as sock:
            sock.sendall(_request(server, body)[:-5])  # half a body, then gone
        with _connect(server) as sock:
            sock.sendall(_request(server, body))  # a whole request, gone before its answer
    with _connect(server) as sock:
        sock.sendall(_request(server, b'{"postid": "after", "data": [1]}'))
        assert _read_answer(sock)[2]["postid"] == "after"
    in_flight = f'podserve_in_flight_requests{{service="{server.service}"}}'
    poll_until(lambda: server.metrics()[in_flight] == 0, "no request left in flight", timeout=5, every=0.05)
    assert "Traceback" not in server.log()
