"""What two processes say when a link opens, before it carries messages: who speaks, and which memfds to map.

Done with blocking calls on the raw socket (file descriptors travel only as SCM_RIGHTS ancillary data,
which asyncio's transports do not carry), then the socket is handed to the event loop (`link.open_link`).
"""

from __future__ import annotations

import json
import os
import socket
import struct

_LENGTH = struct.Struct("<I")
#: A hello is a small JSON object; anything larger is not one.
MAX_HELLO_BYTES = 64 * 1024
#: How long either side waits for the other's hello.
HELLO_TIMEOUT_SECONDS = 10.0


class HandshakeError(ConnectionError):
    """The peer closed, timed out or sent something that is not a hello."""


def send_hello(sock: socket.socket, hello: dict, fds: list[int] = ()) -> None:
    """Send `hello` (JSON) and `fds` (SCM_RIGHTS) in one message."""
    body = json.dumps(hello).encode()
    data = _LENGTH.pack(len(body)) + body
    if fds:
        socket.send_fds(sock, [data], list(fds))
    else:
        sock.sendall(data)


def receive_hello(sock: socket.socket, max_fds: int = 4) -> tuple[dict, list[int]]:
    """The peer's hello and the file descriptors that came with it (the caller owns them)."""
    sock.settimeout(HELLO_TIMEOUT_SECONDS)
    fds: list[int] = []
    try:
        data, fds, _flags, _address = socket.recv_fds(sock, 4 + MAX_HELLO_BYTES, max_fds)
        if len(data) < 4:
            raise HandshakeError(f"the peer sent {len(data)} bytes, not a hello")
        (length,) = _LENGTH.unpack_from(data)
        if length > MAX_HELLO_BYTES:
            raise HandshakeError(f"the peer's hello claims {length} bytes")
        while len(data) < 4 + length:
            more = sock.recv(4 + length - len(data))
            if not more:
                raise HandshakeError("the peer closed during its hello")
            data += more
        try:
            return json.loads(data[4:4 + length]), list(fds)
        except ValueError as exc:
            raise HandshakeError(f"the peer's hello is not JSON: {exc}") from None
    except OSError as exc:
        for fd in fds:
            os.close(fd)
        if isinstance(exc, HandshakeError):
            raise
        raise HandshakeError(f"no hello from the peer: {exc}") from None
    finally:
        sock.settimeout(None)
