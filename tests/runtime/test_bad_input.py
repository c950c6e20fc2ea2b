"""Bad input of every class gets a 4xx naming the field, never a 5xx, and never hurts the server."""

from __future__ import annotations

import base64
import http.client
import itertools
import socket
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests
from images import text_image
from malformed import CASES, MAX_BODY, ROUTE_CASES

ERROR_KEYS = {"postid", "uid", "seqid", "results", "msg", "error", "field"}


@pytest.fixture
def example_server(start_server, example_model):
    return start_server(handler="server:TextDirection", model_path=str(example_model), service_name="example",
                        max_body_bytes=MAX_BODY)


def test_each_bad_input_class_names_its_field(example_server):
    for name, (kwargs, status, field) in CASES.items():
        reply = example_server.session.post(example_server.api, timeout=30, **kwargs)
        assert reply.status_code == status, (name, reply.text)
        body = reply.json()
        assert set(body) == ERROR_KEYS, name
        assert body["results"] is None and body["field"] == field, (name, body)
        assert body["msg"] and len(body["msg"]) < 400, (name, body["msg"])
        if field not in (None, "body", "Content-Type"):
            assert field in body["msg"], (name, body["msg"])


def test_routes_that_do_not_exist_or_take_another_method(example_server):
    for method, path, status in ROUTE_CASES:
        reply = requests.request(method, example_server.url(path), timeout=10)
        assert reply.status_code == status, (method, path)
        assert set(reply.json()) == ERROR_KEYS
        if status == 405:  # RFC 9110: a 405 lists the methods the path takes, in Allow and in the message
            allowed = reply.headers["Allow"]
            assert method not in allowed.split(", ") and allowed in reply.json()["msg"], (method, path, allowed)
        else:
            assert f"no route {path!r}" in reply.json()["msg"], (method, path)


def test_a_thousand_malformed_requests_get_only_4xx_and_the_server_stays_correct(example_server):
    kinds = list(CASES.values()) + [({"method": m, "path": p}, s, None) for m, p, s in ROUTE_CASES]
    plan = list(itertools.islice(itertools.cycle(kinds), 1000))

    def send(case):
        kwargs, _, _ = case
        with requests.Session() as session:
            if "method" in kwargs:
                return session.request(kwargs["method"], example_server.url(kwargs["path"]), timeout=30).status_code
            return session.post(example_server.api, timeout=30, **kwargs).status_code

    with ThreadPoolExecutor(8) as pool:
        statuses = list(pool.map(send, plan))
    assert len(statuses) == 1000
    assert all(400 <= s < 500 for s in statuses), sorted(set(statuses))
    assert statuses == [expected for _, expected, _ in plan]

    assert requests.get(example_server.url("/api/ping"), timeout=5).status_code == 200
    assert requests.get(example_server.url("/api/live"), timeout=5).status_code == 200
    upright = example_server.post({"image": base64.b64encode(text_image("still serving")).decode()})
    flipped = example_server.post({"image": base64.b64encode(text_image("still serving", upside_down=True)).decode()})
    assert upright.json()["results"]["angle"] == 0 and flipped.json()["results"]["angle"] == 180
    metrics = example_server.metrics()
    assert not [k for k, v in metrics.items() if k.startswith("podserve_requests_total") and 'status="5' in k and v]


def test_a_content_length_of_5000_digits_is_answered_400_not_dropped(example_server):
    # int() refuses strings over 4,300 digits (Python's conversion limit): the old front end (waitress) let that
    # ValueError escape, and the connection was closed with no answer at all.
    head = (f"POST {example_server.api.split(str(example_server.port), 1)[1]} HTTP/1.1\r\nHost: x\r\n"
            f"Content-Type: application/json\r\nContent-Length: {'9' * 5000}\r\n\r\n").encode()
    with socket.create_connection(("127.0.0.1", example_server.port), timeout=10) as sock:
        sock.sendall(head + b"{}")
        answer = http.client.HTTPResponse(sock)
        answer.begin()
        assert answer.status == 400
        assert b"Content-Length" in answer.read()
    assert requests.get(example_server.url("/api/ping"), timeout=5).status_code == 200
    assert "uncaptured python exception" not in example_server.log()
