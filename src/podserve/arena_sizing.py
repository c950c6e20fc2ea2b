"""How the split layout's shared memory is carved: each decoder's input arena and its output share in the model process.

One function sizes every arena (`arena_sizes`), and one says what an arena's memfd holds at most (`arena_file_bytes`):
runtime/processes/transport/arena.py creates its memfd by the second, the decoders and the model process size their
arenas by the first, and the memory plan (memory_plan.py) may count what they allocate by either. An arena holds
exactly its capacity (whole pages) beside a table of one generation per page; nothing rounds it up to a power of
two, and its free pages go back to the kernel (docs/processes.md: The wire between them).
"""

from __future__ import annotations

from dataclasses import dataclass

PAGE = 4096
#: An arena's memfd starts with a header (where its blocks start, its capacity) and a table of 8-byte generations,
#: one per page of its capacity (a block's generation is its first page's).
HEADER_BYTES = 64


def whole_pages(size: int) -> int:
    """`size` rounded down to whole pages (at least one)."""
    return max(PAGE, size // PAGE * PAGE)


def arena_file_bytes(capacity: int) -> int:
    """What an arena of `capacity` bytes (whole pages) holds at most: its header and generation table, then its
    blocks (the memfd's size; its pages are committed only when written, and free ones are given back)."""
    capacity = whole_pages(capacity)
    return blocks_start(capacity) + capacity


def blocks_start(capacity: int) -> int:
    """Where an arena's blocks start in its memfd: after its header and its generation table, on a page."""
    table = HEADER_BYTES + 8 * (whole_pages(capacity) // PAGE)
    return -(-table // PAGE) * PAGE


@dataclass(frozen=True)
class ArenaSizes:
    """Per decoder: its input arena's capacity and its output share's (the model process's arena for it)."""

    inputs: int
    outputs: int
    decoders: int

    @property
    def allocated(self) -> int:
        """What every arena of the pod holds at most, all decoders' inputs and outputs (a replacement decoder's
        arenas, while the one it replaces still ends, are not in it)."""
        return self.decoders * (arena_file_bytes(self.inputs) + arena_file_bytes(self.outputs))


def arena_sizes(arenas: int, decoders: int) -> ArenaSizes:
    """Split the pod's shared memory `arenas` (bytes) between `decoders` decoder processes: each gets an input arena
    of a (decoders + 1)th of it, and the model process an output arena per decoder sharing the last (decoders + 1)th,
    so that one decoder that stops reading its outputs fills only its own share. Each arena's memfd (its table
    included) fits its share: `allocated` is at most `arenas`."""
    decoders = max(1, decoders)
    share = arenas // (decoders + 1)
    return ArenaSizes(inputs=_capacity_within(share), outputs=_capacity_within(share // decoders), decoders=decoders)


def _capacity_within(size: int) -> int:
    """The largest capacity whose memfd (`arena_file_bytes`) takes at most `size` bytes (a page at least)."""
    return whole_pages(size - blocks_start(size))
