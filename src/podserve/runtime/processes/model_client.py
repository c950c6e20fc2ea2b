"""A decoder process's view of the model process: the pool interface the service route submits inputs to.

`ModelClient` stands where `InstancePool` stands in one process (runtime/protocols/service_route.py uses either):
`submit` writes the input into this decoder's shared-memory arena and sends its descriptor; the model
process's batch threads run it and send the output back the same way, and the item's `on_done` runs
here, in the event loop's thread. Readiness, the instances' queues and what the lanes take come from the
pod's shared state (runtime/processes/pod_state.py), which the model process publishes.

Every item submitted is answered exactly once: by its output or error, by a withdrawal's answer (sent on the link it
was submitted on, never to a model process that did not get it), or, when that link is lost, by a 503 here (an item
is recorded under the same lock `lost` takes, so none slips between the two). A link the model process does not read
(over its high-water mark) takes no new input: 503 at once.
"""

from __future__ import annotations

import itertools
import threading
from typing import Any, Callable

from podserve.errors import HandlerFailed, NotReady, Overloaded, ServingError
from podserve.handler import Handler
from podserve.runtime.batching.batcher import QUEUED, RUNNING
from podserve.runtime.processes import layout
from podserve.runtime.processes.child import Slot
from podserve.runtime.processes.transport.arena import Arena, PeerArena, StaleBlock
from podserve.runtime.processes.transport.items import NoRoom, error_from_wire, error_to_wire, pack, unpack
from podserve.settings import ServingSettings

#: What an item still in the model process gets when that process ends under it.
_MODEL_GONE = "the model process ended while this input was queued or running; retry shortly"


class RemoteWorker:
    """A model instance in the model process, as an item refers to it: its name, and withdrawing from its queue."""

    __slots__ = ("name", "client")

    def __init__(self, name: str, client: "ModelClient"):
        self.name, self.client = name, client

    def withdraw(self, item: "RemoteItem", error: ServingError | None = None) -> bool:
        """Ask the model process to take `item` out of its queue (finished with `error`, else its deadline's) if it
        has not started; the answer comes back as its output or its error."""
        self.client.withdraw(item, error)
        return True


class RemoteItem:
    """One input submitted to the model process, with the fields a WorkItem has once done."""

    __slots__ = ("item_id", "key", "deadline", "state", "output", "error", "batch_size", "queue_seconds",
                 "fill_seconds", "inference_seconds", "worker", "on_done", "context", "blocks", "input", "link")

    def __init__(self, item_id: int, key: Any, deadline: float, on_done: Callable | None, context: Any,
                 blocks: list[int], worker: RemoteWorker, link):
        self.item_id, self.key, self.deadline, self.link = item_id, key, deadline, link
        self.on_done, self.context, self.blocks, self.worker = on_done, context, blocks, worker
        self.state = QUEUED
        self.input = self.output = None
        self.error: ServingError | None = None
        self.batch_size, self.queue_seconds, self.fill_seconds, self.inference_seconds = 0, 0.0, 0.0, 0.0


class _Decoding:
    """This process's count of requests on their way to the model (published: the model's batch policy waits for
    them)."""

    __slots__ = ("fields", "counted")

    def __init__(self, fields):
        self.fields, self.counted = fields, False

    def __enter__(self) -> "_Decoding":
        self.fields["incoming"] += 1  # one numpy operation, under the GIL: no other thread interleaves
        self.counted = True
        return self

    def release(self) -> None:
        if self.counted:
            self.fields["incoming"] -= 1
            self.counted = False

    def __exit__(self, *_exc) -> None:
        self.release()


class ModelClient:
    """The model process, reached through this decoder's arena and link."""

    def __init__(self, settings: ServingSettings, slot: Slot, handler: Handler, arena: Arena):
        self.settings, self.slot, self.handler, self.arena = settings, slot, handler, arena
        self.state = slot.state
        self.link = None
        self.outputs: PeerArena | None = None
        self.generation = 0  # the model process's, from its hello: its shared-state records are read only while same
        self.items: dict[int, RemoteItem] = {}
        self._ids = itertools.count(1)
        self._workers: dict[str, RemoteWorker] = {}
        self._unknown = RemoteWorker("model", self)
        self._lock = threading.Lock()

    def connected(self, link, outputs: PeerArena, generation: int) -> None:
        with self._lock:
            self.link, self.outputs, self.generation = link, outputs, generation

    # The pool interface (runtime/batching/pool.py's InstancePool has the same).

    @property
    def ready(self) -> bool:
        return (bool(self.state.model["ready"]) and self.link is not None and not self.link.closed
                and int(self.state.model["generation"]) == self.generation)

    def status(self) -> str:
        if self.link is None or self.link.closed:
            return "the model process is starting"
        return self.state.status() or "the model process is loading"

    def codec_handler(self) -> Handler:
        if not self.ready:
            raise NotReady(f"not ready: {self.status()}")
        return self.handler

    def codec_handler_of(self, _item: RemoteItem) -> Handler:
        return self.handler

    def ensure_room(self) -> None:
        """Raise Overloaded at once when every instance's queue is full (checked before decoding)."""
        instances = int(self.state.model["instances"])
        if instances and all(self.state.instances[i]["queue_depth"] >= self.settings.queue_size
                             for i in range(instances)):
            raise Overloaded(f"every instance's queue is full ({instances} x {self.settings.queue_size}); retry "
                             f"shortly")

    def decoding(self) -> _Decoding:
        return _Decoding(self.slot.fields)

    def holding_limit(self) -> int:
        return layout.holding_limit(self.settings)

    def lanes_take(self) -> int:
        return int(self.state.model["lanes_take"])

    def submit(self, input: Any, key: Any, deadline: float, admission: _Decoding | None = None,
               on_done: Callable[[list], None] | None = None, context: Any = None) -> RemoteItem:
        """Write `input` into the arena and send it to the model process; `on_done([item])` runs once it is done."""
        link = self.link
        if link is None or link.closed:
            raise NotReady(f"not ready: {self.status()}")
        if link.paused:
            raise Overloaded(f"the model process is not reading what this decoder sends it ({link.waiting_bytes} "
                             f"bytes wait): it is stuck or being replaced; retry shortly")
        try:
            descriptor, blocks = pack(input, self.arena)
        except NoRoom as exc:
            raise Overloaded(f"this decoder's shared memory for model inputs is full ({exc}); retry shortly") from None
        item = RemoteItem(next(self._ids), key, deadline, on_done, context, blocks, self._unknown, link)
        with self._lock:
            if self.link is not link or link.closed:  # lost meanwhile: `lost` has answered what it found already
                self._free_inputs(item)
                raise NotReady(f"not ready: {_MODEL_GONE}")
            self.items[item.item_id] = item
        if admission is not None:
            admission.release()
        link.send(("submit", item.item_id, key, deadline, descriptor))
        return item

    def unsendable(self, message, exc: Exception) -> None:
        """A submit the link could not send (its key or input holds what pickle refuses): its item fails, at once."""
        if message[0] != "submit":
            return
        with self._lock:
            item = self.items.pop(message[1], None)
        if item is None:
            return
        self._free_inputs(item)
        item.error = HandlerFailed(f"{type(self.handler).__name__}.decode gave an input (or batch_key a key) that "
                                   f"cannot be sent to the model process ({type(exc).__name__}: {exc}); return "
                                   f"numpy arrays, dicts of them, or plain values")
        if item.on_done is not None:
            item.on_done([item])

    def withdraw(self, item: RemoteItem, error: ServingError | None) -> None:
        """Ask the model process that got `item` to withdraw it (on its own link: a newer model process never saw
        it, and a lost link's items are answered here)."""
        if item.item_id in self.items:
            item.link.send(("withdraw", item.item_id, error_to_wire(error) if error is not None else None))

    # From the link (event loop).

    def on_messages(self, messages: list) -> None:
        finished: dict[Any, list[RemoteItem]] = {}
        freed: list = []
        for message in messages:
            if message[0] != "done":
                continue
            for item_id, descriptor, error, batch_size, queue_seconds, inference_seconds, instance in message[1]:
                output = None
                if descriptor:
                    try:
                        output = unpack(descriptor, self.outputs, copy=True, blocks=freed)
                    except StaleBlock as exc:  # fenced: never someone else's output
                        error = error_to_wire(ServingError(f"internal error: the output was overwritten before it "
                                                           f"was read ({exc})"))
                with self._lock:
                    item = self.items.pop(item_id, None)
                if item is None:
                    continue
                self._free_inputs(item)
                item.state = RUNNING  # done: it ran (or was refused) in the model process
                item.output = output
                item.error = error_from_wire(error) if error is not None else None
                item.batch_size, item.queue_seconds, item.inference_seconds = batch_size, queue_seconds, \
                    inference_seconds
                if instance:
                    item.worker = self._workers.get(instance) or self._workers.setdefault(
                        instance, RemoteWorker(instance, self))
                finished.setdefault(item.on_done, []).append(item)
        if freed and self.link is not None:  # rides with the next submit (within a millisecond)
            self.link.send_later(("free", freed))
        for on_done, items in finished.items():
            if on_done is not None:
                on_done(items)

    def lost(self) -> None:
        """The model process has ended (or its link has): every item still there gets a 503, its input's blocks come
        back, and its outputs arena is unmapped (the model process never hands its blocks out again)."""
        with self._lock:
            items, self.items = list(self.items.values()), {}
            self.link, outputs, self.outputs = None, self.outputs, None
        if outputs is not None:
            outputs.close()
        finished: dict[Any, list[RemoteItem]] = {}
        for item in items:
            self._free_inputs(item)
            item.error = NotReady(_MODEL_GONE)
            finished.setdefault(item.on_done, []).append(item)
        for on_done, done in finished.items():
            if on_done is not None:
                on_done(done)

    def _free_inputs(self, item: RemoteItem) -> None:
        for offset in item.blocks:
            self.arena.free(offset)
        item.blocks = []
