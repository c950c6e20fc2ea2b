"""The model process of the split layout: it owns the model instances and runs the batches the decoders send.

It loads the handler's model once per instance (`ins_num_per_gpu` sessions in one process, one CUDA
context per GPU), runs each instance's batcher and batch policy (runtime/batching/pool.py, batcher.py), and does
no per-request work beyond what a batch needs: each decoder writes its inputs into its own shared-memory
arena and sends their descriptors; the batch threads read them in place, and the outputs go back the
same way, each decoder's into an output arena of its own, so that one decoder that stops reading fills only its
share (runtime/processes/transport/). What it knows (ready or why not, its instances, their queues and running
batches, the model's tensors) it publishes in the pod's shared state for the front's probes and metrics.

A decoder's output blocks are freed only when that decoder says it has read them; when its link is lost, its arena
is dropped whole, never handed out again, so nothing it may still be reading is overwritten. Inputs read in place
are fenced: a batch whose input block was freed under it (its decoder's generation moved on) answers an error, not
another request's result.

    python -m podserve.runtime.processes.model_process   (spawned by the supervisor, never by hand)
"""

from __future__ import annotations

import asyncio
import logging
import os
import pickle
import signal
import socket
import sys
import threading
import time

import prometheus_client
import uvloop

from podserve.errors import ClientGone, DeadlineExceeded, HandlerFailed, Overloaded, ServingError
from podserve.routes import service_path
from podserve.runtime.batching.batcher import WorkItem
from podserve.runtime.batching.pool import InstancePool
from podserve.runtime.core.devices import plan_devices
from podserve.runtime.core.metrics import Metrics
from podserve.runtime.processes import layout
from podserve.runtime.processes.child import Slot, hand_to_loop, start_child
from podserve.runtime.processes.transport.arena import Arena, PeerArena, StaleBlock
from podserve.runtime.processes.transport.handshake import HandshakeError, receive_hello, send_hello
from podserve.runtime.processes.transport.items import (NoRoom, error_from_wire, error_to_wire, fenced, pack,
                                                        unpack)
from podserve.runtime.processes.transport.link import FrameTooLarge, open_link
from podserve.runtime.protocols.v2_route import describe_model
from podserve.stop_bounds import STOP_SECONDS

log = logging.getLogger("podserve.model")

#: How often the instances' queues and running batches are published.
PUBLISH_SECONDS = 0.1
#: How often the output arenas give the pages of their long-free blocks back.
TRIM_SECONDS = 1.0


class DecoderPeer:
    """One decoder process's link: the items it submitted, their input blocks, and its own outputs arena with the
    blocks it has not freed yet."""

    def __init__(self, server: "ModelServer", name: str, inputs: PeerArena, outputs: Arena):
        self.server, self.name, self.inputs, self.outputs = server, name, inputs, outputs
        self.link = None
        self.items: dict[int, WorkItem] = {}
        self.fences: dict[int, list] = {}  # item id -> its input blocks (offset, generation), read in place
        self.output_blocks: set[int] = set()
        self.closed = False
        self._lock = threading.Lock()  # output_blocks, closed and the outputs arena: batch threads add, the loop frees

    def on_messages(self, messages: list) -> None:
        for message in messages:
            kind = message[0]
            if kind == "submit":
                self._submit(*message[1:])
            elif kind == "withdraw":
                item = self.items.get(message[1])
                if item is not None and item.worker is not None:
                    item.worker.withdraw(item, error_from_wire(message[2]) if message[2] else None)
                elif item is None:  # answered already (its answer is on its way), or never got: answered either way
                    error = error_from_wire(message[2]) if message[2] else DeadlineExceeded(
                        "the request's deadline passed while it was queued; it was not run")
                    self.link.send(("done", [(message[1], None, error_to_wire(error), 0, 0.0, 0.0, "")]))
            elif kind == "free":
                with self._lock:
                    for offset, generation in message[1]:
                        if offset in self.output_blocks and not self.closed:
                            self.output_blocks.discard(offset)
                            self.outputs.free(offset, generation)

    def _submit(self, item_id: int, key, deadline: float, descriptor: tuple) -> None:
        fence: list = []
        try:
            value = unpack(descriptor, self.inputs, blocks=fence)
            self.fences[item_id] = fence
            self.items[item_id] = self.server.pool.submit(value, key, deadline, on_done=self.done, context=item_id)
        except (ServingError, StaleBlock) as exc:
            self.items.pop(item_id, None)
            self.fences.pop(item_id, None)
            if isinstance(exc, StaleBlock):
                exc = ServingError(f"internal error: the input was freed before the model process read it ({exc})")
            self.link.send(("done", [(item_id, None, error_to_wire(exc), 0, 0.0, 0.0, "")]))
        except Exception as exc:  # a descriptor this process cannot read: the decoder's bug, answered, never lost
            log.exception("could not read item %s from %s", item_id, self.name)
            error = ServingError(f"internal error: the model process could not read the input ({type(exc).__name__})")
            self.link.send(("done", [(item_id, None, error_to_wire(error), 0, 0.0, 0.0, "")]))

    def done(self, items: list[WorkItem]) -> None:
        """From a batch thread: send `items`' outputs (through this decoder's outputs arena) or errors back."""
        replies = []
        for item in items:
            self.items.pop(item.context, None)
            fence = self.fences.pop(item.context, ())
            error, descriptor = item.error, None
            if error is None and not fenced(self.inputs, fence):
                error = ServingError("internal error: the input was freed by its decoder while the batch ran (the "
                                     "decoder's link was lost); it was not answered from it")
            if error is None and not self.closed:
                try:
                    with self._lock:  # lost() drops the arena under it: never packed into a closed one
                        if not self.closed:
                            descriptor, blocks = pack(item.output, self.outputs)
                            self.output_blocks.update(blocks)
                except NoRoom as exc:
                    error = Overloaded(f"the model process's shared memory for this decoder's outputs is full ({exc}): "
                                       f"it has not read its earlier ones; retry shortly")
            replies.append((item.context, descriptor, error_to_wire(error) if error is not None else None,
                            item.batch_size, item.queue_seconds, item.inference_seconds,
                            item.worker.name if item.worker is not None else ""))
            item.input = item.output = None  # the input is a view of the decoder's arena: let it go at once
        if not self.closed:
            self.link.send(("done", replies))

    def stop_reading(self) -> None:
        """This decoder does not read its answers (its link is over its high-water mark): take nothing new from it."""
        if self.link is not None and self.link.transport is not None:
            self.link.transport.pause_reading()

    def read_again(self) -> None:
        if self.link is not None and self.link.transport is not None:
            self.link.transport.resume_reading()

    def unsendable(self, message, exc: Exception) -> None:
        """A batch's answer the link could not send (an output holding what pickle refuses): each reply goes again,
        those pickle refuses as the handler's failure, so no item is left unanswered."""
        if message[0] != "done":
            return
        replies = []
        for reply in message[1]:
            try:
                if len(pickle.dumps(reply)) > layout.MODEL_FRAME_BYTES // 2:
                    raise FrameTooLarge(self.name, "done", len(pickle.dumps(reply)), layout.MODEL_FRAME_BYTES)
                replies.append(reply)
            except Exception as why:
                failed = HandlerFailed(f"predict gave an output that cannot be sent to the decoder process "
                                       f"({type(why).__name__}: {why}); return numpy arrays, dicts of them, or plain "
                                       f"values")
                replies.append((reply[0], None, error_to_wire(failed), *reply[3:]))
        self.link.send(("done", replies))

    def lost(self) -> None:
        """The decoder's link is lost: withdraw what it queued, and drop its outputs arena whole (never handed out
        again: the decoder may still read what is there until it unmaps it, and the kernel frees the pages then)."""
        with self._lock:
            self.closed = True
            self.output_blocks.clear()
            self.outputs.close()
        gone = ClientGone("the decoder process that submitted this input has ended")
        for item in list(self.items.values()):
            if item.worker is not None:
                item.worker.withdraw(item, gone)
        log.info("decoder %s disconnected", self.name)


class ModelServer:
    """Accept decoders, hand their inputs to the pool, publish the pool's state."""

    def __init__(self, pool: InstancePool, slot: Slot, listener: socket.socket, settings,
                 loop: asyncio.AbstractEventLoop):
        self.pool, self.slot, self.listener = pool, slot, listener
        self.settings, self.loop = settings, loop
        self.state = slot.state
        self.generation = int(self.state.model["generation"])
        self.output_bytes = layout.pod_arena_sizes(settings).outputs
        self.peers: set[DecoderPeer] = set()
        self._published_ready = False
        self._trimmed = time.monotonic()

    def start(self) -> None:
        threading.Thread(target=self._accept, name="accept-decoders", daemon=True).start()
        self.slot.keep_beating(self.loop)
        self.loop.call_soon(self._publish)

    def _accept(self) -> None:
        """Accept decoders (a thread: the handshake passes file descriptors, which asyncio does not)."""
        while True:
            try:
                sock, _ = self.listener.accept()
            except OSError:
                return
            outputs = None
            try:
                hello, fds = receive_hello(sock, max_fds=1)
                if len(fds) != 1:
                    raise HandshakeError(f"a decoder's hello came with {len(fds)} file descriptors, not its arena's")
                name = str(hello.get("name", "decoder"))
                inputs = PeerArena(fds[0])
                outputs = Arena(self.output_bytes, f"podserve-model-outputs-{name}")
                peer = DecoderPeer(self, name, inputs, outputs)
                send_hello(sock, {"name": "model", "pid": os.getpid(), "generation": self.generation}, [outputs.fd])
            except (HandshakeError, OSError, ValueError) as exc:
                log.warning("a decoder's handshake failed: %s", exc)
                if outputs is not None:
                    outputs.close()
                sock.close()
                continue
            if not hand_to_loop(self.loop, self._connect(peer, sock)):
                sock.close()
                return

    async def _connect(self, peer: DecoderPeer, sock: socket.socket) -> None:
        peer.link = await open_link(self.loop, sock, peer.on_messages, lambda: self._lost(peer), name=peer.name,
                                    on_unsendable=peer.unsendable, frame_cap=layout.MODEL_FRAME_BYTES,
                                    on_pause=peer.stop_reading, on_resume=peer.read_again)
        self.peers.add(peer)
        log.info("decoder %s connected", peer.name)

    def _lost(self, peer: DecoderPeer) -> None:
        self.peers.discard(peer)
        peer.lost()

    def _publish(self) -> None:
        """Publish readiness, the queues and the running batches in the shared state."""
        model, pool = self.state.model, self.pool
        model["heartbeat_ns"] = time.monotonic_ns()
        for index, worker in enumerate(pool.workers[:len(self.state.instances)]):
            fields = self.state.instances[index]
            fields["queue_depth"] = worker.depth
            started = worker.batch_started
            fields["batch_started_ns"] = int(started * 1e9) if started is not None else 0
            fields["alive"] = int(worker.threads_alive)
        if not self._published_ready:
            self.state.set_status(pool.status())
            if pool.failure:
                model["failed"] = 1
            elif pool.ready:
                self.state.set_info({"instances": pool.names, "v2": describe_model(pool.workers[0].handler)})
                model["instances"] = len(pool.workers)
                model["lanes_take"] = pool.lanes_take()
                model["ready"] = 1
                self.slot.ready()
                self._published_ready = True
                self.state.set_status(pool.status())
        if time.monotonic() - self._trimmed > TRIM_SECONDS:
            self._trimmed = time.monotonic()
            for peer in self.peers:
                peer.outputs.trim()
        self.loop.call_later(PUBLISH_SECONDS, self._publish)


def main() -> int:
    settings, handler_class = start_child()
    slot = Slot()
    state = slot.state
    state.model["pid"] = os.getpid()
    state.model["generation"] += 1
    state.model["ready"] = state.model["failed"] = state.model["instances"] = 0
    state.instances[:] = 0  # what the process before it published (a batch it died in) says nothing now
    listener = socket.socket(fileno=int(os.environ[layout.MODEL_FD]))
    prometheus_client.disable_created_metrics()
    metrics = Metrics(settings.service_name, live_gauges=False)
    metrics.count_runtime_faults()
    devices = plan_devices(settings)
    pool = InstancePool(handler_class, devices, settings, metrics, more_coming=lambda: state.incoming() > 0)
    metrics.set_limits(settings, pool.names)
    metrics.create_series(service_path(settings.service_name), pool.names)

    async def run() -> None:
        loop = asyncio.get_running_loop()
        stopping = loop.create_future()
        loop.add_signal_handler(signal.SIGTERM, lambda: stopping.done() or stopping.set_result(None))
        server = ModelServer(pool, slot, listener, settings, loop)
        server.start()
        log.info("model process: %d instance(s) on %s", len(devices), ", ".join(map(str, devices)))
        pool.load_in_background()
        await stopping
        listener.close()  # the front has drained: every request is answered; what still runs ends below

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(run())
    pool.stop(timeout=STOP_SECONDS)
    log.info("model process exited cleanly")
    return 0


if __name__ == "__main__":
    sys.exit(main())
