"""A framed, two-way message link between two of the pod's processes, over a Unix stream socket.

Each frame is a 4-byte length and a pickled list of messages (plain tuples: arrays never ride in
them, see `items`). `send` may be called from any thread: messages sent during one turn of the
event loop go out in one frame and one write, so a busy link costs a few microseconds a message.
The receiving side gets each frame's messages in order, in the event loop's thread.
"""

from __future__ import annotations

import asyncio
import logging
import pickle
import struct
import threading
from collections import deque
from typing import Any, Callable

log = logging.getLogger(__name__)

_LENGTH = struct.Struct("<I")
#: The largest frame a link takes: a video's body (max_video_bytes in base64 JSON) with room to spare. A peer
#: sending more is broken: the link closes.
MAX_FRAME_BYTES = 1 << 30


class Link(asyncio.Protocol):
    """One end of a link. `on_messages(list)` gets each frame's messages; `on_lost()` once it closes."""

    def __init__(self, loop: asyncio.AbstractEventLoop, on_messages: Callable[[list], None],
                 on_lost: Callable[[], None] = lambda: None, name: str = "link",
                 on_unsendable: Callable[[Any, Exception], None] | None = None):
        self.loop = loop
        self.name = name
        self.on_messages = on_messages
        self.on_lost = on_lost
        self.on_unsendable = on_unsendable  # a message pickle refused: its owner answers what it carried
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self._loop_thread = threading.get_ident()
        self._buffer = bytearray()
        self._outbox: deque = deque()
        self._flush_pending = False

    def connection_made(self, transport: asyncio.Transport) -> None:
        self.transport = transport
        self._loop_thread = threading.get_ident()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.closed:
            return
        self.closed = True
        self.transport = None
        self._outbox.clear()
        self.on_lost()

    def data_received(self, data: bytes) -> None:
        buffer = self._buffer
        buffer += data
        messages: list = []
        start, end = 0, len(buffer)
        while end - start >= 4:
            (length,) = _LENGTH.unpack_from(buffer, start)
            if length > MAX_FRAME_BYTES:
                log.error("%s: a frame of %d bytes is over the limit; closing the link", self.name, length)
                self.close()
                return
            if end - start - 4 < length:
                break
            messages.extend(pickle.loads(memoryview(buffer)[start + 4:start + 4 + length]))
            start += 4 + length
        if start:
            del buffer[:start]
        if messages:
            self.on_messages(messages)

    def send(self, message: Any) -> None:
        """Queue `message` (from any thread); it goes out with the others of this turn of the loop."""
        if self.closed:
            return
        self._outbox.append(message)
        # Append before testing the flag, and clear the flag before draining: a message is never stranded.
        if not self._flush_pending:
            self._flush_pending = True
            if threading.get_ident() == self._loop_thread:
                self.loop.call_soon(self._flush)
            else:
                try:
                    self.loop.call_soon_threadsafe(self._flush)
                except RuntimeError:  # the loop has closed: the process is exiting
                    pass

    def _flush(self) -> None:
        self._flush_pending = False
        outbox = self._outbox
        if not outbox or self.transport is None:
            return
        messages = []
        while outbox:
            messages.append(outbox.popleft())
        try:
            frame = pickle.dumps(messages, protocol=pickle.HIGHEST_PROTOCOL)
        except Exception:  # one message holds what pickle refuses: send the others, hand that one back
            frame = pickle.dumps(self._sendable(messages), protocol=pickle.HIGHEST_PROTOCOL)
        self.transport.writelines((_LENGTH.pack(len(frame)), frame))

    def _sendable(self, messages: list) -> list:
        """The messages pickle takes; each it refuses goes to `on_unsendable` (logged), never silently lost."""
        kept = []
        for message in messages:
            try:
                pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
            except Exception as exc:
                log.error("%s: a %r message could not be sent (%s: %s)", self.name,
                          message[0] if isinstance(message, tuple) and message else type(message).__name__,
                          type(exc).__name__, exc)
                if self.on_unsendable is not None:
                    self.on_unsendable(message, exc)
                continue
            kept.append(message)
        return kept

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


async def open_link(loop: asyncio.AbstractEventLoop, sock, on_messages: Callable[[list], None],
                    on_lost: Callable[[], None] = lambda: None, name: str = "link",
                    on_unsendable: Callable[[Any, Exception], None] | None = None) -> Link:
    """Wrap a connected Unix socket (after its handshake) in a Link running on `loop`."""
    _, link = await loop.connect_accepted_socket(lambda: Link(loop, on_messages, on_lost, name, on_unsendable), sock)
    return link
