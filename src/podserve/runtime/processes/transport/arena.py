"""Shared memory one process owns and writes, and its peers map and read: a memfd carved into blocks.

The owner allocates a block, writes into it and sends its offset in a message; the peer reads it in place (a
numpy view, no copy) and says when it is done with it; the owner then frees it. Blocks come from a buddy
allocator (sizes rounded up to a power of two, at least a page), so freeing in any order leaves no holes
that the next block cannot use. An arena holds at most `capacity` bytes at once: what does not fit is
refused (`allocate` returns None), and the caller answers 503, so shared memory stays within the pod's
memory budget. The memfd's pages are committed only when written: an arena's cost is its high-water mark.
"""

from __future__ import annotations

import mmap
import os
import threading

#: The smallest block: one page.
MIN_ORDER = 12


class Arena:
    """The blocks of one memfd this process owns."""

    def __init__(self, capacity: int, name: str):
        if capacity < 1 << MIN_ORDER:
            raise ValueError(f"an arena of {capacity} bytes is smaller than one page")
        self.capacity = capacity
        self.order = max(MIN_ORDER, (capacity - 1).bit_length())
        self.size = 1 << self.order
        self.fd = os.memfd_create(name, os.MFD_CLOEXEC)
        os.ftruncate(self.fd, self.size)
        self.map = mmap.mmap(self.fd, self.size)
        self.used = 0  # bytes of the blocks handed out (rounded sizes)
        self._free: dict[int, set[int]] = {order: set() for order in range(MIN_ORDER, self.order + 1)}
        self._free[self.order].add(0)
        self._orders: dict[int, int] = {}  # offset of each block handed out -> its order
        self._lock = threading.Lock()

    def allocate(self, nbytes: int) -> int | None:
        """The offset of a block of at least `nbytes`, or None when the arena cannot hold it now."""
        order = max(MIN_ORDER, (max(1, nbytes) - 1).bit_length())
        if order > self.order:
            return None
        with self._lock:
            if self.used + (1 << order) > self.capacity:
                return None
            found = order
            while found <= self.order and not self._free[found]:
                found += 1
            if found > self.order:
                return None
            offset = self._free[found].pop()
            while found > order:  # split: keep the lower half, free the upper
                found -= 1
                self._free[found].add(offset + (1 << found))
            self._orders[offset] = order
            self.used += 1 << order
            return offset

    def free(self, offset: int) -> None:
        """Give the block at `offset` back (a block freed twice, or never handed out, is ignored)."""
        with self._lock:
            order = self._orders.pop(offset, None)
            if order is None:
                return
            self.used -= 1 << order
            while order < self.order:
                buddy = offset ^ (1 << order)
                free = self._free[order]
                if buddy not in free:
                    break
                free.remove(buddy)
                offset = min(offset, buddy)
                order += 1
            self._free[order].add(offset)

    @property
    def blocks(self) -> int:
        """Blocks handed out and not yet freed."""
        return len(self._orders)

    def close(self) -> None:
        try:
            self.map.close()
        except BufferError:  # a view is still alive somewhere: the mapping goes with it
            pass
        os.close(self.fd)


class PeerArena:
    """Another process's arena, mapped here to read (and, for inputs a model may change in place, write) its blocks."""

    def __init__(self, fd: int):
        self.size = os.fstat(fd).st_size
        self.map = mmap.mmap(fd, self.size)
        os.close(fd)  # the mapping keeps the memory; the descriptor is not needed any more

    def buffer(self, offset: int, nbytes: int) -> memoryview:
        if offset < 0 or offset + nbytes > self.size:
            raise ValueError(f"block [{offset}, {offset + nbytes}) is outside the peer's arena of {self.size} bytes")
        return memoryview(self.map)[offset:offset + nbytes]
