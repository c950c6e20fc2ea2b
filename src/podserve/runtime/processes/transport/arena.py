"""Shared memory one process owns and writes, and its peers map and read: a memfd carved into blocks.

The owner allocates a block, writes into it and sends its offset and generation in a message; the peer reads it in
place (a numpy view, no copy) and says when it is done with it; the owner then frees it. Blocks come from a buddy
allocator (sizes rounded up to a power of two, at least a page, carved from exactly `capacity` bytes: the memfd is
never rounded up), so freeing in any order leaves no holes the next block cannot use. What does not fit is refused
(`allocate` returns None) and the caller answers 503, so shared memory stays within the pod's plan
(podserve/arena_sizing.py sizes every arena).

Generations fence the blocks: each page has a counter in the memfd's table, bumped when a block starting there is
handed out and when it is freed. A descriptor carries the generation its block had when written; a reader checks
it before and after reading (`PeerArena.holds`), so a block freed and handed out again under a reader (a peer that
ended, a link that dropped and came back) is refused, never read as someone else's data.

Pages are committed only when written, and free ones go back: `trim` gives the kernel the pages of every free block
of at least TRIM_BYTES that stayed free since the previous trim (the owner's loop calls it about once a second), so
an arena costs what it holds, not its high-water mark.
"""

from __future__ import annotations

import mmap
import os
import struct
import threading

import numpy as np

from podserve.arena_sizing import HEADER_BYTES, PAGE, arena_file_bytes, blocks_start, whole_pages

#: The smallest block: one page.
MIN_ORDER = 12
#: Free blocks at least this large give their pages back at a trim.
TRIM_BYTES = 1 << 20
_HEADER = struct.Struct("<QQ")  # where the blocks start, the capacity


class StaleBlock(Exception):
    """A block was freed (and perhaps handed out again) since its descriptor was written: its data is not there."""


class Arena:
    """The blocks of one memfd this process owns."""

    def __init__(self, capacity: int, name: str):
        if capacity < PAGE:
            raise ValueError(f"an arena of {capacity} bytes is smaller than one page")
        self.capacity = whole_pages(capacity)
        self.start = blocks_start(self.capacity)
        self.fd = os.memfd_create(name, os.MFD_CLOEXEC)
        os.ftruncate(self.fd, arena_file_bytes(self.capacity))
        self.map = mmap.mmap(self.fd, arena_file_bytes(self.capacity))
        _HEADER.pack_into(self.map, 0, self.start, self.capacity)
        self.generations = np.ndarray((self.capacity // PAGE,), "<u8", buffer=self.map, offset=HEADER_BYTES)
        self.used = 0  # bytes of the blocks handed out (rounded sizes)
        top = (self.capacity).bit_length() - 1
        self._free: dict[int, set[int]] = {order: set() for order in range(MIN_ORDER, top + 1)}
        offset = 0
        for order in range(top, MIN_ORDER - 1, -1):  # capacity as naturally aligned blocks, largest first
            if self.capacity - offset >= 1 << order:
                self._free[order].add(offset)
                offset += 1 << order
        self.top = top
        self._orders: dict[int, int] = {}  # offset of each block handed out -> its order
        self._untrimmed: dict[int, int] = {}  # free blocks of TRIM_BYTES or more that may hold pages -> order
        self._seen: set[int] = set()  # of those, the ones the previous trim saw free
        self._lock = threading.Lock()

    def allocate(self, nbytes: int) -> int | None:
        """The offset of a block of at least `nbytes` (its generation: `generation(offset)`), or None when the arena
        cannot hold it now."""
        order = max(MIN_ORDER, (max(1, nbytes) - 1).bit_length())
        if order > self.top:
            return None
        with self._lock:
            if self.used + (1 << order) > self.capacity:
                return None
            found = order
            while found <= self.top and not self._free[found]:
                found += 1
            if found > self.top:
                return None
            offset = self._free[found].pop()
            self._untrimmed.pop(offset, None)
            while found > order:  # split: keep the lower half, free the upper
                found -= 1
                self._free[found].add(offset + (1 << found))
                if (1 << found) >= TRIM_BYTES:
                    self._untrimmed[offset + (1 << found)] = found
            self._orders[offset] = order
            self.used += 1 << order
            self.generations[offset // PAGE] += 1
            return offset

    def generation(self, offset: int) -> int:
        return int(self.generations[offset // PAGE])

    def view(self, offset: int, shape, dtype) -> np.ndarray:
        """A writable array over the block at `offset`."""
        return np.ndarray(shape, dtype, buffer=self.map, offset=self.start + offset)

    def free(self, offset: int, generation: int | None = None) -> None:
        """Give the block at `offset` back (a block freed twice, never handed out, or handed out again since
        `generation` was its generation, is ignored)."""
        with self._lock:
            if generation is not None and (offset // PAGE >= len(self.generations)
                                           or int(self.generations[offset // PAGE]) != generation):
                return
            order = self._orders.pop(offset, None)
            if order is None:
                return
            self.generations[offset // PAGE] += 1
            self.used -= 1 << order
            while order < self.top:
                buddy = offset ^ (1 << order)
                free = self._free[order]
                if buddy not in free:
                    break
                free.remove(buddy)
                self._untrimmed.pop(buddy, None)
                self._untrimmed.pop(offset, None)
                offset = min(offset, buddy)
                order += 1
            self._free[order].add(offset)
            if (1 << order) >= TRIM_BYTES:
                self._untrimmed[offset] = order

    def trim(self) -> int:
        """Give the kernel back the pages of the large free blocks that stayed free since the previous trim; return
        how many bytes of blocks that covered."""
        trimmed = 0
        with self._lock:
            for offset, order in list(self._untrimmed.items()):
                if offset in self._seen:
                    self.map.madvise(mmap.MADV_REMOVE, self.start + offset, 1 << order)
                    del self._untrimmed[offset]
                    trimmed += 1 << order
            self._seen = set(self._untrimmed)
        return trimmed

    @property
    def blocks(self) -> int:
        """Blocks handed out and not yet freed."""
        return len(self._orders)

    def close(self) -> None:
        self.generations = _unmap(self.map)
        os.close(self.fd)


class PeerArena:
    """Another process's arena, mapped here to read (and, for inputs a model may change in place, write) its blocks."""

    def __init__(self, fd: int):
        size = os.fstat(fd).st_size
        self.map = mmap.mmap(fd, size)
        os.close(fd)  # the mapping keeps the memory; the descriptor is not needed any more
        self.start, self.capacity = _HEADER.unpack_from(self.map, 0)
        if self.start + self.capacity != size or self.capacity % PAGE:
            raise ValueError(f"not an arena: its header says {self.capacity} bytes from {self.start}, in {size}")
        self.generations = np.ndarray((self.capacity // PAGE,), "<u8", buffer=self.map, offset=HEADER_BYTES)

    def holds(self, offset: int, generation: int) -> bool:
        """Whether the block at `offset` is still the one written under `generation` (never, once unmapped here)."""
        generations = self.generations
        return generations is not None and 0 <= offset < self.capacity and int(generations[offset // PAGE]) == generation

    def buffer(self, offset: int, nbytes: int, generation: int) -> memoryview:
        if offset < 0 or offset + nbytes > self.capacity:
            raise ValueError(f"block [{offset}, {offset + nbytes}) is outside the peer's arena of {self.capacity} "
                             f"bytes")
        if not self.holds(offset, generation):
            raise StaleBlock(f"the block at {offset} was freed since it was written (generation {generation}, now "
                             f"{int(self.generations[offset // PAGE])})")
        return memoryview(self.map)[self.start + offset:self.start + offset + nbytes]

    def close(self) -> None:
        self.generations = _unmap(self.map)


def _unmap(mapping: mmap.mmap) -> None:
    """Close `mapping` (a view still alive somewhere keeps it until that view goes); nothing is read through it
    after this (the generations table, set to what this returns, is gone too)."""
    try:
        mapping.close()
    except BufferError:
        pass
