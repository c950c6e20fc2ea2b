"""Close a connection after a refusal so that a caller still sending reads the refusal, not a reset.

A server that closes a socket with unread bytes in its receive buffer makes the kernel send a
reset, and the caller's kernel then discards what it had not yet read: a client still sending a
3 MiB header never sees its 431. So after a refusal the server shuts down its write side once the
answer is written (the caller reads the answer, then end of file), keeps reading and discarding
what arrives, and closes when the caller closes, or at the latest after `LINGER_SECONDS` or its
byte bound (the pod's largest body and a little more, at least `LINGER_BYTES`: nginx's lingering
close, bounded in bytes as well as time). Depends on nothing but asyncio, so that every front-end
process can use it.
"""

from __future__ import annotations

import asyncio
from typing import Callable

from podserve.metric_names import LINGER_ENDED_BY_BYTES, LINGER_ENDED_BY_CALLER, LINGER_ENDED_BY_TIME

#: The longest a refused connection is read and discarded after its answer. Longer than a caller on the mesh or a
#: LAN needs to finish sending what it began (16 MiB at 100 Mbit/s takes 1.3 s), short enough that a refused
#: connection holds its slot (counted against max_connections, or the probe lane's own bound) only briefly.
LINGER_SECONDS = 2.0
#: The least bound on the bytes discarded after a refusal: more than an image body's limit (max_body_bytes, 10 MiB)
#: plus the slack read before a 413, so that a caller uploading a body a little over the limit reads its 413. A pod
#: that takes larger bodies (a video's base64 JSON) discards up to its largest (messages.linger_bytes).
LINGER_BYTES = 16 * 1024 * 1024



class Linger:
    """One connection's lingering close: begun by `Linger(...)`, fed by `discard`, ended by `caller_closed`.

    The protocol that owns `transport` calls `discard(len(data))` from its data_received (reading nothing
    else) and `caller_closed()` from its connection_lost; `on_end(ending)` is called once, with one of
    metric_names.LINGER_ENDINGS.
    """

    __slots__ = ("transport", "bytes_left", "timer", "on_end")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop,
                 on_end: Callable[[str], None], seconds: float = LINGER_SECONDS, max_bytes: int = LINGER_BYTES):
        self.transport: asyncio.Transport | None = transport
        self.bytes_left = max_bytes
        self.on_end = on_end
        transport.write_eof()  # once what is buffered is written: the caller reads the answer, then end of file
        transport.resume_reading()
        self.timer = loop.call_later(seconds, self._time_up)

    def discard(self, size: int) -> None:
        """Drop `size` bytes the caller sent; past the byte bound, reset the connection."""
        self.bytes_left -= size
        if self.bytes_left < 0 and self.transport is not None:
            transport = self._end(LINGER_ENDED_BY_BYTES)
            transport.abort()

    def caller_closed(self) -> None:
        """The connection is gone (the caller closed it, or it was reset): stop the clock."""
        if self.transport is not None:
            self._end(LINGER_ENDED_BY_CALLER)

    def cut(self) -> None:
        """Close now without counting an ending (the server is stopping)."""
        if self.transport is not None:
            transport, self.transport = self.transport, None
            self.timer.cancel()
            transport.close()

    def _time_up(self) -> None:
        if self.transport is not None:
            transport = self._end(LINGER_ENDED_BY_TIME)
            transport.close()  # after what is still buffered (the write timeout bounds a caller that reads nothing)

    def _end(self, ending: str) -> asyncio.Transport:
        transport, self.transport = self.transport, None
        self.timer.cancel()
        self.on_end(ending)
        return transport
