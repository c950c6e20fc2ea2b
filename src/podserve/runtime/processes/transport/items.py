"""What a work item carries between processes: its model input, its output, or its error.

Arrays travel as blocks of the sender's arena, described by small tuples the message carries; the
receiver reads them in place. Nothing here pickles an array: an array small enough
(`INLINE_BYTES`) travels as its raw bytes inside the message, a dict of arrays as a dict of
descriptors, and only values that are not arrays (a string, a list, a number) ride in the pickled
message itself.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from podserve import errors
from podserve.errors import ServingError
from podserve.runtime.processes.transport.arena import Arena, PeerArena, StaleBlock

#: Arrays up to this size travel inside the message: a block costs more than copying them.
INLINE_BYTES = 4096

BLOCK, INLINE, DICT, OBJECT = "b", "i", "d", "o"


class NoRoom(Exception):
    """The sender's arena cannot hold the value now (the pod's shared memory for it is in use)."""

    def __init__(self, nbytes: int, arena: Arena):
        super().__init__(f"{nbytes} bytes do not fit: {arena.used} of {arena.capacity} in use")
        self.nbytes = nbytes


def pack(value: Any, arena: Arena) -> tuple[tuple, list[int]]:
    """(descriptor of `value`, the blocks of `arena` it now holds); raise NoRoom when they do not fit."""
    blocks: list[int] = []
    try:
        return _pack(value, arena, blocks), blocks
    except NoRoom:
        for offset in blocks:
            arena.free(offset)
        raise


def _pack(value: Any, arena: Arena, blocks: list[int]) -> tuple:
    if isinstance(value, np.ndarray) and not value.dtype.hasobject and value.dtype.fields is None:
        if value.nbytes <= INLINE_BYTES:
            return INLINE, value.dtype.str, value.shape, value.tobytes()
        offset = arena.allocate(value.nbytes)
        if offset is None:
            raise NoRoom(value.nbytes, arena)
        blocks.append(offset)
        np.copyto(arena.view(offset, value.shape, value.dtype), value)
        return BLOCK, offset, arena.generation(offset), value.dtype.str, value.shape
    if type(value) is dict and value and all(isinstance(v, np.ndarray) for v in value.values()):
        return DICT, tuple((name, _pack(item, arena, blocks)) for name, item in value.items())
    return OBJECT, value


def unpack(descriptor: tuple, peer: PeerArena | None, copy: bool = False, blocks: list | None = None) -> Any:
    """The value `descriptor` describes: arrays in the peer's arena are views of it (valid until the peer frees
    them), small ones a copy of the message's bytes. With `copy`, arrays are copies this process owns, checked
    against their blocks' generations after the copy too. `blocks` gets (offset, generation) of each block read: the
    peer frees them once told, and a reader of views checks them (`fenced`) once it is done. Raises StaleBlock when a
    block was freed since its descriptor was written."""
    kind = descriptor[0]
    if kind == BLOCK:
        _, offset, generation, dtype, shape = descriptor
        dtype = np.dtype(dtype)
        nbytes = math.prod(shape) * dtype.itemsize  # Python's ints: exact, and a twentieth of numpy's cost here
        view = np.frombuffer(peer.buffer(offset, nbytes, generation), dtype=dtype).reshape(shape)
        if blocks is not None:
            blocks.append((offset, generation))
        if not copy:
            return view
        value = view.copy()
        if not peer.holds(offset, generation):
            raise StaleBlock(f"the block at {offset} was freed while it was read")
        return value
    if kind == INLINE:
        _, dtype, shape, raw = descriptor
        return np.frombuffer(raw, dtype=dtype).reshape(shape).copy()
    if kind == DICT:
        return {name: unpack(item, peer, copy, blocks) for name, item in descriptor[1]}
    return descriptor[1]


def fenced(peer: PeerArena, blocks: list) -> bool:
    """Whether every block (offset, generation) read in place from `peer` still holds what was read: a reader of
    views asks once it is done with them (its results from a block freed meanwhile are not the block's writer's)."""
    return all(peer.holds(offset, generation) for offset, generation in blocks)


def error_to_wire(error: ServingError) -> tuple:
    """A ServingError as plain data: its class name, message, field, headers, status and detail."""
    return (type(error).__name__, error.message, error.field, dict(error.headers), error.status,
            getattr(error, "detail", None))


def error_from_wire(data: tuple) -> ServingError:
    """The ServingError `error_to_wire` described (a ServingError of its status when its class is unknown here)."""
    name, message, field, headers, status, detail = data
    kind = getattr(errors, name, None)
    if not (isinstance(kind, type) and issubclass(kind, ServingError)):
        kind = ServingError
    error = kind(message, field=field, headers=headers)
    error.status = status
    if detail is not None:
        error.detail = detail
    return error
