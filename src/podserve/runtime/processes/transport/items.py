"""What a work item carries between processes: its model input, its output, or its error.

Arrays travel as blocks of the sender's arena, described by small tuples the message carries; the
receiver reads them in place. Nothing here pickles an array: an array small enough
(`INLINE_BYTES`) travels as its raw bytes inside the message, a dict of arrays as a dict of
descriptors, and only values that are not arrays (a string, a list, a number) ride in the pickled
message itself.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from podserve import errors
from podserve.errors import ServingError
from podserve.runtime.processes.transport.arena import Arena, PeerArena

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
        np.copyto(np.ndarray(value.shape, value.dtype, buffer=arena.map, offset=offset), value)
        return BLOCK, offset, value.dtype.str, value.shape
    if type(value) is dict and value and all(isinstance(v, np.ndarray) for v in value.values()):
        return DICT, tuple((name, _pack(item, arena, blocks)) for name, item in value.items())
    return OBJECT, value


def unpack(descriptor: tuple, peer: PeerArena | None, copy: bool = False, blocks: list[int] | None = None) -> Any:
    """The value `descriptor` describes: arrays in the peer's arena are views of it (valid until the peer frees
    them; with `copy`, copies this process owns, and their blocks listed in `blocks` for the peer to free), small
    ones a copy of the message's bytes."""
    kind = descriptor[0]
    if kind == BLOCK:
        _, offset, dtype, shape = descriptor
        dtype = np.dtype(dtype)
        nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        view = np.frombuffer(peer.buffer(offset, nbytes), dtype=dtype).reshape(shape)
        if not copy:
            return view
        if blocks is not None:
            blocks.append(offset)
        return view.copy()
    if kind == INLINE:
        _, dtype, shape, raw = descriptor
        return np.frombuffer(raw, dtype=dtype).reshape(shape).copy()
    if kind == DICT:
        return {name: unpack(item, peer, copy, blocks) for name, item in descriptor[1]}
    return descriptor[1]


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
