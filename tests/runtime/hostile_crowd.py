"""Many hostile connections at once against one server, from one asyncio process, each recording how it ended.

    python hostile_crowd.py PORT ROUTE SECONDS OUT.json

Kinds (connections): endless headers (50), slow heads (50), slow 10 MiB bodies (50), floods of 64-byte chunks
(25), pipelined callers that never read (25). Every connection is opened at once, sends at a bounded pace for at
most SECONDS, and records the first status the server answered (None when it read nothing) and whether, and when,
the server closed it. Loopback only; nothing retries.
"""

from __future__ import annotations

import asyncio
import json
import socket
import sys
import time

CROWD = {"endless_header": 50, "slow_head": 50, "slow_body": 50, "chunk_flood": 25, "never_reads": 25}
BODY_BYTES = 10 * 1024 * 1024


async def main(port: int, route: str, seconds: float, out: str) -> None:
    started = time.monotonic()
    outcomes = await asyncio.gather(*(
        run(kind, port, route, started + seconds) for kind, count in CROWD.items() for _ in range(count)))
    with open(out, "w") as sink:
        json.dump(outcomes, sink)


async def run(kind: str, port: int, route: str, until: float) -> dict:
    outcome = {"kind": kind, "status": None, "closed_by_server": False, "closed_after": None}
    opened = time.monotonic()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if kind == "never_reads":
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    loop = asyncio.get_running_loop()
    try:
        await loop.sock_connect(sock, ("127.0.0.1", port))
        sender = asyncio.ensure_future(SENDERS[kind](loop, sock, route, until))
        if kind == "never_reads":
            await asyncio.wait({sender}, timeout=max(0.0, until - time.monotonic()))
            outcome["closed_by_server"] = await _reset_when_read(loop, sock)
        else:
            status, closed = await _read_until_closed(loop, sock, until)
            outcome["status"], outcome["closed_by_server"] = status, closed
        if outcome["closed_by_server"]:
            outcome["closed_after"] = round(time.monotonic() - opened, 3)
        sender.cancel()
    except (ConnectionError, OSError) as exc:
        outcome["error"] = repr(exc)
    finally:
        sock.close()
    return outcome


async def _read_until_closed(loop, sock, until: float) -> tuple[int | None, bool]:
    """The first status line's code, and whether the server closed the connection before `until`."""
    received = b""
    while time.monotonic() < until:
        try:
            chunk = await asyncio.wait_for(loop.sock_recv(sock, 65536), timeout=max(0.01, until - time.monotonic()))
        except asyncio.TimeoutError:
            break
        except (ConnectionResetError, BrokenPipeError):
            return _status(received), True
        if not chunk:
            return _status(received), True
        received += chunk
    return _status(received), False


async def _reset_when_read(loop, sock) -> bool:
    """Read what is waiting: True if the server has closed or reset the connection."""
    for _ in range(10_000):
        try:
            chunk = await asyncio.wait_for(loop.sock_recv(sock, 1 << 20), timeout=1.0)
        except asyncio.TimeoutError:
            return False
        except (ConnectionResetError, BrokenPipeError):
            return True
        if not chunk:
            return True
    return False


def _status(received: bytes) -> int | None:
    return int(received.split(b" ", 2)[1]) if received.startswith(b"HTTP/1.1 ") else None


async def _send_paced(loop, sock, pieces, pause: float, until: float) -> None:
    try:
        for piece in pieces:
            if time.monotonic() > until:
                return
            await loop.sock_sendall(sock, piece)
            await asyncio.sleep(pause)
    except (ConnectionError, OSError):
        return  # the server closed it: what was meant to happen


async def endless_header(loop, sock, route, until):
    start = f"POST {route} HTTP/1.1\r\nHost: pod\r\nX-Long: ".encode()
    await _send_paced(loop, sock, [start] + [b"a" * 4096] * 100_000, 0.02, until)


async def slow_head(loop, sock, route, until):
    start = f"POST {route} HTTP/1.1\r\nHost: pod\r\n".encode()
    await _send_paced(loop, sock, [start] + [b"X-Slow: 1\r\n"] * 100_000, 0.5, until)


async def slow_body(loop, sock, route, until):
    head = (f"POST {route} HTTP/1.1\r\nHost: pod\r\nContent-Type: application/json\r\n"
            f"Content-Length: {BODY_BYTES}\r\n\r\n").encode()
    await _send_paced(loop, sock, [head] + [b" " * 8192] * (BODY_BYTES // 8192), 0.1, until)


async def chunk_flood(loop, sock, route, until):
    head = f"POST {route} HTTP/1.1\r\nHost: pod\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
    chunks = b"40\r\n" + b" " * 64 + b"\r\n"
    await _send_paced(loop, sock, [head.encode()] + [chunks * 256] * 100_000, 0.05, until)


async def never_reads(loop, sock, route, until):
    pings = b"GET /api/ping HTTP/1.1\r\nHost: pod\r\n\r\n" * 64
    await _send_paced(loop, sock, [pings] * 100_000, 0.005, until)


SENDERS = {"endless_header": endless_header, "slow_head": slow_head, "slow_body": slow_body,
           "chunk_flood": chunk_flood, "never_reads": never_reads}


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]), sys.argv[2], float(sys.argv[3]), sys.argv[4]))
