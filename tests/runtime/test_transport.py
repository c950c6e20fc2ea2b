"""The wire between the split layout's processes (runtime/processes/transport/): links that push back, arenas sized to
what they hold that give pages back, and blocks fenced by generation."""

from __future__ import annotations

import asyncio
import os
import pickle
import socket
import struct

import numpy as np
import pytest

from podserve.arena_sizing import PAGE, arena_file_bytes, arena_sizes
from podserve.runtime.processes.transport.arena import TRIM_BYTES, Arena, PeerArena, StaleBlock
from podserve.runtime.processes.transport.items import fenced, pack, unpack
from podserve.runtime.processes.transport.link import FrameTooLarge, open_link

MIB = 1 << 20


def committed(arena: Arena) -> int:
    """Bytes of the arena's memfd the kernel holds pages for (shared memory counts its pages in st_blocks)."""
    return os.fstat(arena.fd).st_blocks * 512


def test_an_arena_holds_exactly_its_capacity_not_the_next_power_of_two():
    arena = Arena(12 * PAGE + 100, "test")  # 12 pages and a bit: rounded down to whole pages, not up to 16
    assert arena.capacity == 12 * PAGE
    assert os.fstat(arena.fd).st_size == arena_file_bytes(12 * PAGE) < 13 * PAGE + PAGE
    blocks = [arena.allocate(PAGE) for _ in range(12)]
    assert None not in blocks and max(blocks) == 11 * PAGE, blocks  # every page used, none past the capacity
    assert arena.allocate(1) is None
    for offset in blocks:
        arena.free(offset)
    assert arena.used == 0 and arena.allocate(8 * PAGE) == 0 and arena.allocate(4 * PAGE) == 8 * PAGE
    assert arena.allocate(PAGE) is None


def test_free_pages_go_back_to_the_kernel_once_they_stayed_free_a_trim():
    arena = Arena(16 * MIB, "test")
    offset = arena.allocate(4 * MIB)
    arena.view(offset, (4 * MIB,), np.uint8)[:] = 1
    assert committed(arena) >= 4 * MIB
    arena.free(offset)
    assert arena.trim() == 0, "a block freed since the last trim keeps its pages (it may be handed out again now)"
    assert committed(arena) >= 4 * MIB
    assert arena.trim() >= 4 * MIB
    assert committed(arena) < TRIM_BYTES
    again = arena.allocate(4 * MIB)  # the block serves as before: its pages come back as it is written
    block = arena.view(again, (4 * MIB,), np.uint8)
    assert not block.any()
    block[:] = 2
    assert committed(arena) >= 4 * MIB


def test_a_block_freed_and_handed_out_again_is_never_read_as_the_old_one():
    arena = Arena(MIB, "test")
    peer = PeerArena(os.dup(arena.fd))
    first = np.arange(2048, dtype=np.float32)
    descriptor, blocks = pack(first, arena)
    read: list = []
    assert np.array_equal(unpack(descriptor, peer, blocks=read), first) and fenced(peer, read)
    arena.free(blocks[0])
    assert not fenced(peer, read), "a reader of views learns that its block was freed under it"
    other, other_blocks = pack(np.zeros(2048, dtype=np.float32), arena)
    assert other_blocks == blocks  # the same place, handed out again
    with pytest.raises(StaleBlock):
        unpack(descriptor, peer)
    with pytest.raises(StaleBlock):
        unpack(descriptor, peer, copy=True)
    arena.free(other_blocks[0], generation=other[2] + 5)  # a free naming another generation frees nothing
    assert arena.blocks == 1
    arena.free(other_blocks[0], generation=other[2])
    assert arena.blocks == 0


def test_every_decoder_has_its_own_output_share_within_the_pods_shared_memory():
    sizes = arena_sizes(100 * MIB, 3)
    # A quarter each for the decoders' inputs, and a twelfth each for their outputs, less each memfd's table.
    assert 25 * MIB - 16 * PAGE < sizes.inputs <= 25 * MIB and sizes.inputs % PAGE == 0
    assert 25 * MIB // 3 - 16 * PAGE < sizes.outputs <= 25 * MIB // 3 and sizes.outputs % PAGE == 0
    assert sizes.allocated == 3 * (arena_file_bytes(sizes.inputs) + arena_file_bytes(sizes.outputs)) <= 100 * MIB
    arena = Arena(sizes.outputs, "test")
    assert os.fstat(arena.fd).st_size == arena_file_bytes(sizes.outputs) <= 25 * MIB // 3


class Peer:
    """One end of a link on a socketpair, recording what it gets and what it was told."""

    def __init__(self):
        self.messages: list = []
        self.unsendable: list = []
        self.events: list[str] = []
        self.lost = asyncio.Event()


async def linked(high_water: int = 8 * MIB, frame_cap: int = 64 * MIB):
    loop = asyncio.get_running_loop()
    left_sock, right_sock = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    left, right = Peer(), Peer()
    ends = []
    for peer, sock in ((left, left_sock), (right, right_sock)):
        ends.append(await open_link(loop, sock, peer.messages.extend, peer.lost.set, name="test",
                                    on_unsendable=lambda message, exc, peer=peer: peer.unsendable.append((message,
                                                                                                           exc)),
                                    frame_cap=frame_cap, high_water=high_water,
                                    on_pause=lambda peer=peer: peer.events.append("pause"),
                                    on_resume=lambda peer=peer: peer.events.append("resume")))
    return (left, ends[0]), (right, ends[1])


async def until(check, what: str, timeout: float = 10.0) -> None:
    async def wait() -> None:
        while not check():
            await asyncio.sleep(0.005)
    try:
        await asyncio.wait_for(wait(), timeout)
    except asyncio.TimeoutError:
        raise AssertionError(f"{what}: not within {timeout:g}s") from None


def test_a_message_over_the_frame_cap_is_refused_at_the_sender_and_the_link_goes_on():
    async def run() -> None:
        (_left, sender), (right, receiver) = await linked(frame_cap=MIB)
        sender.send(("small", 1))
        sender.send(("request", 2, b"x" * (2 * MIB)))
        sender.send(("small", 3))
        await until(lambda: len(right.messages) == 2, "the messages within the cap")
        assert right.messages == [("small", 1), ("small", 3)]
        [(message, exc)] = _left.unsendable
        assert message[:2] == ("request", 2) and isinstance(exc, FrameTooLarge) and exc.cap == MIB
        assert "over the test link's frame cap" in str(exc)
        assert not sender.closed and not receiver.closed
        sender.send(("after", 4))  # many messages whose sum is over the cap go out in several frames
        for n in range(5):
            sender.send(("part", n, b"y" * (MIB // 3)))
        await until(lambda: len(right.messages) == 8, "the parts, in order")
        assert [m[:2] for m in right.messages[2:]] == [("after", 4)] + [("part", n) for n in range(5)]
        sender.send(("lock", __import__("threading").Lock()))  # what pickle refuses goes back to its owner too
        await until(lambda: len(_left.unsendable) == 2, "the unpicklable message handed back")
        assert not isinstance(_left.unsendable[1][1], FrameTooLarge)
    asyncio.run(run())


def test_a_frame_header_over_the_cap_closes_the_link_and_lengths_take_eight_bytes():
    async def run() -> None:
        (_left, sender), (right, receiver) = await linked(frame_cap=MIB)
        frame = pickle.dumps([("hello",)])
        sender.transport.write(struct.pack("<Q", len(frame)) + frame)
        await until(lambda: right.messages == [("hello",)], "a frame with an 8-byte length")
        sender.transport.write(struct.pack("<Q", (4 << 30) + 1))  # past 4 GiB: a 4-byte length would wrap to 1
        await until(lambda: receiver.closed, "the link closing on a frame no sender of ours would send")
    asyncio.run(run())


def test_a_link_whose_peer_does_not_read_is_paused_past_its_high_water_mark():
    async def run() -> None:
        (left, sender), (right, receiver) = await linked(high_water=256 * 1024)
        receiver.transport.pause_reading()  # the peer stops reading
        chunk = b"z" * (64 * 1024)
        for n in range(200):
            sender.send(("body", n, chunk))
            await asyncio.sleep(0)
            if sender.paused:
                break
        await until(lambda: sender.paused, "the sender paused")
        assert left.events == ["pause"] and sender.waiting_bytes > 256 * 1024
        receiver.transport.resume_reading()
        await until(lambda: not sender.paused, "the sender resumed once the peer read")
        assert left.events == ["pause", "resume"]
        await until(lambda: len(right.messages) == n + 1, "every message, once read")
    asyncio.run(run())


def test_a_message_sent_later_rides_in_the_next_frame_or_goes_alone_within_its_bound(monkeypatch):
    """A receipt nobody waits on (`send_later`) does not wake the peer by itself when other messages follow: it rides
    in their frame, in order; alone, it still goes out, bounded by LATER_SECONDS (issue 70)."""
    from podserve.runtime.processes.transport import link as link_module

    async def run() -> None:
        loop = asyncio.get_running_loop()
        left_sock, right_sock = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        frames: list[list] = []
        sender = await open_link(loop, left_sock, lambda messages: None, name="test")
        await open_link(loop, right_sock, frames.append, name="test")
        monkeypatch.setattr(link_module, "LATER_SECONDS", 0.001)
        sender.send_later(("free", [7]))
        await until(lambda: frames, "the message alone, within its bound")
        assert frames == [[("free", [7])]]
        monkeypatch.setattr(link_module, "LATER_SECONDS", 3600.0)  # only another message's frame carries it now
        sender.send_later(("submitted", 1))
        await asyncio.sleep(0.05)
        assert len(frames) == 1
        sender.send(("answer", 1))
        await until(lambda: len(frames) == 2, "the frame of the next message")
        assert frames[1] == [("submitted", 1), ("answer", 1)]
        await loop.run_in_executor(None, sender.send_later, ("free", [8]))  # another thread: sent as `send` sends
        await until(lambda: len(frames) == 3, "the message sent from another thread")
        assert frames[2] == [("free", [8])]
    asyncio.run(run())
