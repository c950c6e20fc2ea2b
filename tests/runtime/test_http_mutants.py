"""Mutated requests, as a hostile or broken caller sends them: whatever the bytes, the pod answers or closes.

Valid requests (the service route's JSON, chunked, with `Expect: 100-continue`, raw bytes, HTTP/1.0, pipelined, the
Open Inference Protocol's infer in JSON and in binary) are mutated by a seeded generator (SEED: the same mutants every
run), each mutant sent on its own connection, most followed by a request that closes it. For every mutant, in both
layouts (one process; the front and a decoder process), the pod must answer only 1xx, 2xx, 4xx or a 503 at one of its
limits (never a 500, 502 or 504: no bytes a caller sends are a fault of ours), write each answer whole, end the
connection within CASE_SECONDS, log no fault of its own (tests/runtime/conftest.py: stop_all) and then serve an
ordinary request exactly.
"""

from __future__ import annotations

import json
import random
import re
import struct
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from hostile import Reader, connect, json_request, request_head

SEED = 70
MUTANTS = 400
CALLERS = 16
#: One mutant in this many is sent without the closing request: it ends at the server's own limits.
UNCLOSED_EVERY = 8
#: The server's limits are lowered so that a mutant that left a request unfinished ends within seconds.
LIMITS = {"header_timeout_seconds": 1, "idle_timeout_seconds": 1, "request_timeout_ms": 2000}
#: Longest a mutant's connection may stay open: the request deadline, the linger after a refusal and slack.
CASE_SECONDS = 10.0
ROUTE = "/api/example"  # the fixture servers' service_name is "example"
BODY = {"postid": "1", "data": [1, 2, 3, 4]}
CLOSER = request_head("GET", "/api/live", {"Connection": "close"})
#: Bytes a mutation splices in: the HTTP grammar's separators, encodings' edges and the limits' edges.
TOKENS = [b"\r\n", b"\r\n\r\n", b"\n", b"\r", b"\0", b" ", b":", b";", b",", b'"', b"\\", b"{", b"}", b"[", b"]",
          b"\xff\xfe", b"\xc3\x28", b"\x7f", b"%00", b"../", b"-1", b"0x10", b"1e999", b"NaN", b'"\\ud800"',
          b"Content-Length: 99999999999999999999\r\n", b"Content-Length: 5\r\n", b"Content-Length: -1\r\n",
          b"Transfer-Encoding: chunked\r\n", b"Transfer-Encoding: gzip, chunked\r\n", b"Expect: 100-continue\r\n",
          b"Connection: upgrade\r\nUpgrade: h2c\r\n", b"Content-Type: application/octet-stream\r\n",
          b"X-Request-Timeout-Ms: 0\r\n", b"ffffffffffffffff\r\n", b"A" * 70_000]
NUMBERS = [b"0", b"-1", b"4294967296", b"18446744073709551616", b"1" * 40, b"9" * 5000]


def seeds(model: dict) -> list[bytes]:
    """Valid requests of every shape the pod reads; `model`: the Open Inference Protocol's model metadata."""
    v2_input = {"name": model["inputs"][0]["name"], "datatype": model["inputs"][0]["datatype"]}
    body = json.dumps(BODY).encode()
    chunked = (request_head("POST", ROUTE, {"Content-Type": "application/json", "Transfer-Encoding": "chunked"})
               + f"{len(body) // 2:x}\r\n".encode() + body[:len(body) // 2] + b"\r\n"
               + f"{len(body) - len(body) // 2:x}\r\n".encode() + body[len(body) // 2:] + b"\r\n0\r\n\r\n")
    infer = {"inputs": [{**v2_input, "shape": [1, 4], "data": [1, 2, 3, 4]}]}
    tensor = struct.pack(f"<4{'d' if v2_input['datatype'] == 'FP64' else 'f'}", 1, 2, 3, 4)
    header = json.dumps({"inputs": [{**v2_input, "shape": [1, 4], "parameters": {"binary_data_size": len(tensor)}}],
                         "outputs": [{"name": model["outputs"][0]["name"], "parameters": {"binary_data": True}}]}).encode()
    binary = request_head("POST", f"{ROUTE}/v2/models/example/infer", {
        "Content-Type": "application/octet-stream", "Content-Length": str(len(header) + len(tensor)),
        "Inference-Header-Content-Length": str(len(header))}) + header + tensor
    return [json_request(ROUTE, BODY), chunked,
            json_request(ROUTE, BODY, {"Expect": "100-continue"}),
            request_head("POST", ROUTE, {"Content-Type": "application/octet-stream", "Content-Length": "4"}) + b"\1\2\3\4",
            request_head("GET", "/api/ping", version="1.0"),
            json_request(ROUTE, BODY) + request_head("GET", "/api/ping") + json_request(ROUTE, BODY),
            json_request(f"{ROUTE}/v2/models/example/infer", infer), binary]


def mutate(data: bytes, rng: random.Random) -> bytes:
    """`data` with one to three of: a byte replaced, a token spliced in, a span deleted or repeated, a number
    replaced, the end cut off; most in the body (past the head), where the head's parser no longer guards."""
    for _ in range(rng.randint(1, 3)):
        body = data.find(b"\r\n\r\n") + 4
        at = rng.randrange(body, len(data) + 1) if 3 < body < len(data) and rng.random() < 0.7 else \
            rng.randrange(len(data) + 1)
        kind = rng.choice(["replace", "splice", "delete", "repeat", "number", "cut"])
        if kind == "replace" and at < len(data):
            data = data[:at] + bytes([rng.randrange(256)]) + data[at + 1:]
        elif kind == "splice":
            data = data[:at] + rng.choice(TOKENS) + data[at:]
        elif kind == "delete":
            data = data[:at] + data[at + rng.randint(1, 16):]
        elif kind == "repeat":
            data = data[:at] + data[at:at + rng.randint(1, 32)] * rng.randint(2, 4) + data[at:]
        elif kind == "number":
            digits = [m.span() for m in re.finditer(rb"\d+", data)]
            if digits:
                start, end = rng.choice(digits)
                data = data[:start] + rng.choice(NUMBERS) + data[end:]
        elif kind == "cut":
            data = data[:at]
    return data


def exchange(port: int, data: bytes, closed: bool) -> tuple[list[int], float]:
    """Send `data` (and the closing request if `closed`) on one connection; the statuses of the answers read until
    the server closed it (0 for an answer cut short), and the seconds that took (CASE_SECONDS or more: it never
    closed)."""
    began, statuses = time.monotonic(), []
    with connect(port, timeout=CASE_SECONDS) as sock:
        try:
            sock.sendall(data + CLOSER if closed else data)
        except (BrokenPipeError, ConnectionResetError):  # refused while sending: what it answered is still read
            pass
        reader = Reader(sock)
        try:
            while True:
                answer = reader.response()
                statuses += [*answer.interim, answer.status]
        except EOFError:  # closed: between answers, or in the middle of one
            if reader.buffer:
                statuses.append(0)
        except OSError:  # reset, or CASE_SECONDS without a byte (socket.timeout)
            pass
    return statuses, time.monotonic() - began


def allowed(status: int) -> bool:
    return 100 <= status < 500 or status == 503


@pytest.mark.parametrize("decode_processes", [0, 1], ids=["one process", "split"])
def test_mutated_requests_get_only_answers_or_a_close_and_the_pod_serves_on(start_server, affine_model,
                                                                              decode_processes):
    server = start_server(handler="fixture_handlers:Affine", model_path=str(affine_model),
                          decode_processes=decode_processes, **LIMITS)
    valid = seeds(requests.get(server.url("/api/example/v2/models/example"), timeout=5).json())
    # Each seed as sent, then the closing request. Raw bytes reach Affine's decode, which reads only JSON's `data`
    # (400); HTTP/1.0 closes after its answer.
    assert [exchange(server.port, data, True)[0] for data in valid] == [
        [200, 200], [200, 200], [100, 200, 200], [400, 200], [200], [200, 200, 200, 200], [200, 200], [200, 200]]
    rng = random.Random(SEED)
    mutants = [mutate(rng.choice(valid), rng) for _ in range(MUTANTS)]
    with ThreadPoolExecutor(CALLERS) as pool:
        results = list(pool.map(lambda n: exchange(server.port, mutants[n], n % UNCLOSED_EVERY != 0), range(MUTANTS)))

    refused = [(statuses, data[:160]) for (statuses, _), data in zip(results, mutants) if not all(map(allowed, statuses))]
    assert refused == [], refused[:5]
    hung = [(round(seconds, 1), data[:160]) for (_, seconds), data in zip(results, mutants) if seconds >= CASE_SECONDS]
    assert hung == [], hung[:5]
    answered = sum(1 for statuses, _ in results if statuses)
    assert answered >= MUTANTS // 2, f"only {answered} of {MUTANTS} mutants were answered at all: {results[:10]}"
    reply = requests.post(server.api, json=BODY, timeout=10)
    assert reply.status_code == 200 and reply.json()["results"] == [3.0, 5.0, 7.0, 9.0]
    assert requests.get(server.url("/api/ping"), timeout=5).status_code == 200
