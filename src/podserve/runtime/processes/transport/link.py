"""A framed, two-way message link between two of the pod's processes, over a Unix stream socket.

Each frame is an 8-byte length and a pickled list of messages (plain tuples: arrays never ride in them, see
`items`). `send` may be called from any thread: messages sent during one turn of the event loop go out in one frame
and one write, so a busy link costs a few microseconds a message. A message nobody waits on (a receipt, blocks to
free) goes with `send_later`: in the next frame, or alone within a millisecond, never waking the peer by itself. The
receiving side gets each frame's messages in order, in the event loop's thread.

Each link pushes back (docs/processes.md: The wire between them):
- a frame cap, both ways: a message that would not fit in one frame is refused at the sender, handed to its
  `on_unsendable` with FrameTooLarge (its owner answers what it carried), and the link goes on; a frame over the cap
  arriving here can only come from a broken peer, and closes the link;
- a high-water mark: while more than `high_water` bytes wait to be written (the peer is not reading), the link is
  `paused` and its owner told (`on_pause`, `on_resume`): the front sends such a decoder nothing new, the model process
  stops reading a decoder that does not read its answers, a decoder refuses inputs for a model process that does
  not read them (503).
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

_LENGTH = struct.Struct("<Q")
_PICKLE = pickle.HIGHEST_PROTOCOL
#: A link's frame cap unless its owner gives one (the front's links carry bodies: theirs is the largest body's).
FRAME_CAP_BYTES = 64 << 20
#: Bytes waiting to be written past which a link is paused.
HIGH_WATER_BYTES = 8 << 20
#: The longest a message sent with `send_later` waits for another message's frame to ride in.
LATER_SECONDS = 0.001


class FrameTooLarge(ValueError):
    """A message would not fit in one frame of its link: refused at the sender, never sent."""

    def __init__(self, link: str, kind: str, nbytes: int, cap: int):
        super().__init__(f"a {kind!r} message of {nbytes} bytes is over the {link} link's frame cap of {cap} bytes")
        self.nbytes, self.cap = nbytes, cap


class Link(asyncio.Protocol):
    """One end of a link. `on_messages(list)` gets each frame's messages; `on_lost()` once it closes."""

    def __init__(self, loop: asyncio.AbstractEventLoop, on_messages: Callable[[list], None],
                 on_lost: Callable[[], None] = lambda: None, name: str = "link",
                 on_unsendable: Callable[[Any, Exception], None] | None = None, frame_cap: int = FRAME_CAP_BYTES,
                 high_water: int = HIGH_WATER_BYTES, on_pause: Callable[[], None] | None = None,
                 on_resume: Callable[[], None] | None = None):
        self.loop = loop
        self.name = name
        self.on_messages = on_messages
        self.on_lost = on_lost
        self.on_unsendable = on_unsendable  # a message pickle refused, or over the cap: its owner answers it
        self.frame_cap, self.high_water = frame_cap, high_water
        self.on_pause, self.on_resume = on_pause, on_resume
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.paused = False  # more than high_water bytes wait to be written: the peer is not reading
        self._loop_thread = threading.get_ident()
        self._buffer = bytearray()
        self._outbox: deque = deque()
        self._flush_pending = False
        self._later: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:
        self.transport = transport
        transport.set_write_buffer_limits(high=self.high_water)
        self._loop_thread = threading.get_ident()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.closed:
            return
        self.closed = True
        self.transport = None
        self._outbox.clear()
        self.on_lost()

    def pause_writing(self) -> None:
        self.paused = True  # a large frame does this for a moment; a peer that stops reading, until its end
        log.debug("%s: over %d bytes wait to be written: paused", self.name, self.high_water)
        if self.on_pause is not None:
            self.on_pause()

    def resume_writing(self) -> None:
        self.paused = False
        log.debug("%s: the peer has read down to the low-water mark: resumed", self.name)
        if self.on_resume is not None:
            self.on_resume()

    @property
    def waiting_bytes(self) -> int:
        """Bytes written to the link that the peer has not read yet (what its high-water mark counts)."""
        return self.transport.get_write_buffer_size() if self.transport is not None else 0

    def data_received(self, data: bytes) -> None:
        buffer = self._buffer
        buffer += data
        messages: list = []
        start, end = 0, len(buffer)
        while end - start >= _LENGTH.size:
            (length,) = _LENGTH.unpack_from(buffer, start)
            if length > self.frame_cap:  # our senders refuse such frames: the peer is broken
                log.error("%s: a frame of %d bytes is over the cap of %d; closing the link", self.name, length,
                          self.frame_cap)
                self.close()
                return
            if end - start - _LENGTH.size < length:
                break
            begin = start + _LENGTH.size
            messages.extend(pickle.loads(memoryview(buffer)[begin:begin + length]))
            start = begin + length
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

    def send_later(self, message: Any) -> None:
        """Queue `message`, which nobody waits on (a receipt, blocks to free): it goes out with the next message's
        frame, or alone within LATER_SECONDS. A busy link carries it for nothing; the peer is not woken for it alone.
        From another thread than the loop's it is sent as `send` sends."""
        if threading.get_ident() != self._loop_thread:
            self.send(message)
            return
        if self.closed:
            return
        self._outbox.append(message)
        if not self._flush_pending and self._later is None:
            self._later = self.loop.call_later(LATER_SECONDS, self._flush_later)

    def _flush_later(self) -> None:
        self._later = None
        if not self._flush_pending:
            self._flush()

    def _flush(self) -> None:
        self._flush_pending = False
        outbox = self._outbox
        if not outbox or self.transport is None:
            return
        messages = []
        while outbox:
            messages.append(outbox.popleft())
        try:
            frame = pickle.dumps(messages, protocol=_PICKLE)
        except Exception:  # one message holds what pickle refuses: send the others, hand that one back
            frame = None
        if frame is not None and len(frame) <= self.frame_cap:
            self.transport.writelines((_LENGTH.pack(len(frame)), frame))
            return
        for frame in self._frames(messages):
            self.transport.writelines((_LENGTH.pack(len(frame)), frame))

    def _frames(self, messages: list) -> list[bytes]:
        """Frames within the cap holding every message pickle takes and that fits one; each other goes to
        `on_unsendable` (logged), never silently lost."""
        frames, group, size = [], [], 0
        for message in messages:
            try:
                alone = len(pickle.dumps(message, protocol=_PICKLE))
                if alone + 64 > self.frame_cap:
                    raise FrameTooLarge(self.name, _kind(message), alone, self.frame_cap)
            except Exception as exc:
                log.error("%s: a %r message could not be sent (%s: %s)", self.name, _kind(message),
                          type(exc).__name__, exc)
                if self.on_unsendable is not None:
                    self.on_unsendable(message, exc)
                continue
            if group and size + alone + 64 > self.frame_cap:
                frames.append(pickle.dumps(group, protocol=_PICKLE))
                group, size = [], 0
            group.append(message)
            size += alone
        if group:
            frames.append(pickle.dumps(group, protocol=_PICKLE))
        return frames

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


def _kind(message: Any) -> str:
    return str(message[0]) if isinstance(message, tuple) and message else type(message).__name__


async def open_link(loop: asyncio.AbstractEventLoop, sock, on_messages: Callable[[list], None],
                    on_lost: Callable[[], None] = lambda: None, name: str = "link",
                    on_unsendable: Callable[[Any, Exception], None] | None = None, **push_back) -> Link:
    """Wrap a connected Unix socket (after its handshake) in a Link running on `loop`; `push_back` may give its
    frame_cap, high_water, on_pause and on_resume."""
    _, link = await loop.connect_accepted_socket(
        lambda: Link(loop, on_messages, on_lost, name, on_unsendable, **push_back), sock)
    return link
