"""Send many requests at once from threads, each on its own connection, released together."""

from __future__ import annotations

import http.client
import json
import json as _json
import socket
import threading
import urllib.parse
from concurrent.futures import ThreadPoolExecutor
from typing import Callable

import requests


class Reply:
    """A status, headers and body read off the wire."""

    def __init__(self, status: int, headers: dict[str, str], body: bytes):
        self.status_code, self.headers, self.content = status, headers, body

    def json(self):
        return json.loads(self.content)


def burst(url: str, requests_kwargs: list[dict], timeout: float = 60.0) -> list[Reply]:
    """POST every request at once and return the replies in order.

    Each request is encoded up front and sent on its own connection, already open, once
    every thread is ready: the server sees the burst within a fraction of a millisecond
    instead of at the pace of a Python client.
    """
    parsed = urllib.parse.urlsplit(url)
    wires = [_encode(parsed, **kwargs) for kwargs in requests_kwargs]
    barrier = threading.Barrier(len(wires))

    def send(wire: bytes) -> Reply:
        with socket.create_connection((parsed.hostname, parsed.port), timeout=timeout) as sock:
            barrier.wait(timeout)
            sock.sendall(wire)
            response = http.client.HTTPResponse(sock)
            response.begin()
            return Reply(response.status, dict(response.getheaders()), response.read())

    with ThreadPoolExecutor(len(wires)) as pool:
        return list(pool.map(send, wires))


def _encode(url: urllib.parse.SplitResult, json: object = None, data: bytes | None = None,
            headers: dict[str, str] | None = None) -> bytes:
    headers = dict(headers or {})
    if json is not None:
        data = _json.dumps(json).encode()
        headers.setdefault("Content-Type", "application/json")
    data = data or b""
    head = [f"POST {url.path} HTTP/1.1", f"Host: {url.netloc}", f"Content-Length: {len(data)}", "Connection: close"]
    head += [f"{k}: {v}" for k, v in headers.items()]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + data


def run_for(seconds: float, clients: int, send: Callable[[requests.Session, int], None]) -> None:
    """Run `clients` threads calling send(session, client) in a loop until `seconds` pass."""
    import time

    stop_at = time.monotonic() + seconds

    def loop(client: int) -> None:
        with requests.Session() as session:
            while time.monotonic() < stop_at:
                send(session, client)

    threads = [threading.Thread(target=loop, args=(i,)) for i in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
