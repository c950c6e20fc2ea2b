"""The pod's shared state in the split layout: one small memfd every process maps (docs/processes.md).

Each field has one writer: the model process writes the model's part (ready, status, instances, the
batches running, its metadata), each process its own slot (heartbeat, the requests it holds, its
backlog), the supervisor which slot belongs to whom. Readers (the front answering probes and
/metrics, the model process asking whether more requests are coming, the supervisor looking for
hung processes) read without locks: every number is one aligned 8-byte word, and each text is
written under a version that readers check.
"""

from __future__ import annotations

import json
import mmap
import os
import time

import numpy as np

#: Roles of a slot.
FREE, FRONT, DECODER, MODEL = 0, 1, 2, 3
ROLE_NAMES = {FRONT: "front", DECODER: "decoder", MODEL: "model"}
#: States of a slot's process.
STARTING, READY, RETIRING = 1, 2, 3
#: Slots: the front, the model process, and room for every decoder twice (a replacement starts before the process
#: it replaces has ended).
MAX_SLOTS = 256
#: Model instances whose batches are published.
MAX_INSTANCES = 64

_MODEL = np.dtype([("ready", "<i8"), ("failed", "<i8"), ("instances", "<i8"), ("lanes_take", "<i8"),
                   ("heartbeat_ns", "<i8"), ("pid", "<i8"), ("generation", "<i8"), ("info_version", "<i8"),
                   ("info_length", "<i8"), ("status_version", "<i8"), ("status_length", "<i8")])
_INSTANCE = np.dtype([("queue_depth", "<i8"), ("batch_started_ns", "<i8"), ("alive", "<i8")])
#: A slot's heartbeat is stamped by a thread of its own (it stops only while some thread holds the GIL), its
#: loop_ns by its event loop (it stops while the loop is stuck in a step, with or without the GIL).
_SLOT = np.dtype([("role", "<i8"), ("state", "<i8"), ("pid", "<i8"), ("generation", "<i8"),
                  ("heartbeat_ns", "<i8"), ("loop_ns", "<i8"), ("started_ns", "<i8"), ("incoming", "<i8"),
                  ("held", "<i8"), ("backlog", "<i8"), ("busy", "<i8"), ("replace", "<i8")])
#: Each slot field's index among its words in `PodState.slot_words` (a slot is SLOT_WORDS int64 words).
SLOT_WORD = {name: index for index, name in enumerate(_SLOT.names)}
SLOT_WORDS = len(_SLOT.names)
#: What the supervisor counts: processes it started again after one ended, by role, and decoders it found hung; and
#: whether the pod is stopping (set once, at SIGTERM: a front that ends then is not coming back).
_POD = np.dtype([("front_restarts", "<i8"), ("decoder_restarts", "<i8"), ("model_restarts", "<i8"),
                 ("hung_decoders", "<i8"), ("supervisor_pid", "<i8"), ("stopping", "<i8")])
_STATUS_BYTES = 1024
_INFO_BYTES = 256 * 1024

_MODEL_AT = 0
_POD_AT = 128
_INSTANCES_AT = 256
_SLOTS_AT = _INSTANCES_AT + MAX_INSTANCES * _INSTANCE.itemsize
_STATUS_AT = _SLOTS_AT + MAX_SLOTS * _SLOT.itemsize
_INFO_AT = _STATUS_AT + _STATUS_BYTES
SIZE = _INFO_AT + _INFO_BYTES


def now_ns() -> int:
    """The clock every process stamps the state with (CLOCK_MONOTONIC: one clock for the whole machine)."""
    return time.monotonic_ns()


class PodState:
    """The shared state, mapped in this process."""

    def __init__(self, fd: int):
        self.fd = fd
        self.map = mmap.mmap(fd, SIZE)
        self.model = np.ndarray((), _MODEL, buffer=self.map, offset=_MODEL_AT)
        self.pod = np.ndarray((), _POD, buffer=self.map, offset=_POD_AT)
        self.instances = np.ndarray((MAX_INSTANCES,), _INSTANCE, buffer=self.map, offset=_INSTANCES_AT)
        self.slots = np.ndarray((MAX_SLOTS,), _SLOT, buffer=self.map, offset=_SLOTS_AT)
        #: The same slots as plain int64 words (slot i's field f at i * SLOT_WORDS + SLOT_WORD[f]): what a reader on a
        #: request's path uses, at a tenth of the cost of a numpy field (the front routes every request by them).
        self.slot_words = memoryview(self.map)[_SLOTS_AT:_SLOTS_AT + MAX_SLOTS * _SLOT.itemsize].cast("q")

    @classmethod
    def create(cls) -> "PodState":
        """A new, zeroed state (the supervisor's): its fd is inherited by the processes it spawns."""
        fd = os.memfd_create("podserve-state", 0)
        os.ftruncate(fd, SIZE)
        os.set_inheritable(fd, True)
        return cls(fd)

    # The model process's part.

    def set_status(self, text: str) -> None:
        self._write_text("status", _STATUS_AT, _STATUS_BYTES, text.encode()[:_STATUS_BYTES])

    def status(self) -> str:
        return self._read_text("status", _STATUS_AT).decode(errors="replace")

    def set_info(self, info: dict) -> None:
        """What the model process tells the others once loaded: instance names, tensor specs (JSON)."""
        raw = json.dumps(info).encode()
        if len(raw) > _INFO_BYTES:
            raise ValueError(f"the model's description is {len(raw)} bytes, over {_INFO_BYTES}")
        self._write_text("info", _INFO_AT, _INFO_BYTES, raw)

    def info(self) -> dict:
        raw = self._read_text("info", _INFO_AT)
        return json.loads(raw) if raw else {}

    def _write_text(self, name: str, at: int, size: int, raw: bytes) -> None:
        model = self.model
        model[f"{name}_version"] += 1  # odd: being written
        self.map[at:at + len(raw)] = raw
        model[f"{name}_length"] = len(raw)
        model[f"{name}_version"] += 1

    def _read_text(self, name: str, at: int) -> bytes:
        model = self.model
        for _ in range(1000):
            version = int(model[f"{name}_version"])
            if version % 2:
                continue
            raw = bytes(self.map[at:at + int(model[f"{name}_length"])])
            if int(model[f"{name}_version"]) == version:
                return raw
        return b""

    # Slots.

    def claim_slot(self, role: int) -> int:
        """A free slot for a new process of `role` (the supervisor's), marked STARTING."""
        for index in range(MAX_SLOTS):
            slot = self.slots[index]
            if slot["role"] == FREE:
                now = now_ns()
                self.slots[index] = (role, STARTING, 0, int(slot["generation"]) + 1, now, now, now, 0, 0, 0, 0, 0)
                return index
        raise RuntimeError(f"no free slot among {MAX_SLOTS}: processes are being replaced faster than they end")

    def release_slot(self, index: int) -> None:
        """The slot's process has ended: what it held is no longer held by anyone (the supervisor's)."""
        slot = self.slots[index]
        for field in ("state", "pid", "incoming", "held", "backlog", "busy", "replace"):
            slot[field] = 0
        slot["role"] = FREE

    def slots_of(self, role: int) -> list[int]:
        return [int(i) for i in np.flatnonzero(self.slots["role"] == role)]

    def incoming(self) -> int:
        """Requests admitted and on their way to the model (being read or decoded), over every process."""
        return int(self.slots["incoming"].sum())
