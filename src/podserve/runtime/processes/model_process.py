"""The model process of the split layout: it owns the model instances and runs the batches the decoders send.

It loads the handler's model once per instance (`ins_num_per_gpu` sessions in one process, one CUDA
context per GPU), runs each instance's batcher and batch policy (runtime/batching/pool.py, batcher.py), and does
no per-request work beyond what a batch needs: each decoder writes its inputs into its own shared-memory
arena and sends their descriptors; the batch threads read them in place, and the outputs go back the
same way (runtime/processes/transport/). What it knows (ready or why not, its instances, their queues and running
batches, the model's tensors) it publishes in the pod's shared state for the front's probes and metrics.

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

from podserve.errors import ClientGone, HandlerFailed, Overloaded, ServingError
from podserve.routes import service_path
from podserve.runtime.batching.batcher import WorkItem
from podserve.runtime.batching.pool import InstancePool
from podserve.runtime.core.devices import plan_devices
from podserve.runtime.core.metrics import Metrics
from podserve.runtime.processes import layout
from podserve.runtime.processes.child import Slot, hand_to_loop, start_child
from podserve.runtime.processes.transport.arena import Arena, PeerArena
from podserve.runtime.processes.transport.handshake import HandshakeError, receive_hello, send_hello
from podserve.runtime.processes.transport.items import NoRoom, error_from_wire, error_to_wire, pack, unpack
from podserve.runtime.processes.transport.link import open_link
from podserve.runtime.protocols.v2_route import describe_model

log = logging.getLogger("podserve.model")

#: How often the instances' queues and running batches are published.
PUBLISH_SECONDS = 0.1


class DecoderPeer:
    """One decoder process's link: the items it submitted and the output blocks it has not freed yet."""

    def __init__(self, server: "ModelServer", name: str, inputs: PeerArena):
        self.server, self.name, self.inputs = server, name, inputs
        self.link = None
        self.items: dict[int, WorkItem] = {}
        self.output_blocks: set[int] = set()
        self.closed = False
        self._lock = threading.Lock()  # output_blocks and closed: batch threads add, the loop frees

    def on_messages(self, messages: list) -> None:
        for message in messages:
            kind = message[0]
            if kind == "submit":
                self._submit(*message[1:])
            elif kind == "withdraw":
                item = self.items.get(message[1])
                if item is not None and item.worker is not None:
                    item.worker.withdraw(item, error_from_wire(message[2]) if message[2] else None)
            elif kind == "free":
                with self._lock:
                    for offset in message[1]:
                        if offset in self.output_blocks:
                            self.output_blocks.discard(offset)
                            self.server.outputs.free(offset)

    def _submit(self, item_id: int, key, deadline: float, descriptor: tuple) -> None:
        try:
            value = unpack(descriptor, self.inputs)
            self.items[item_id] = self.server.pool.submit(value, key, deadline, on_done=self.done, context=item_id)
        except ServingError as exc:
            self.items.pop(item_id, None)
            self.link.send(("done", [(item_id, None, error_to_wire(exc), 0, 0.0, 0.0, "")]))
        except Exception as exc:  # a descriptor this process cannot read: the decoder's bug, answered, never lost
            log.exception("could not read item %s from %s", item_id, self.name)
            error = ServingError(f"internal error: the model process could not read the input ({type(exc).__name__})")
            self.link.send(("done", [(item_id, None, error_to_wire(error), 0, 0.0, 0.0, "")]))

    def done(self, items: list[WorkItem]) -> None:
        """From a batch thread: send `items`' outputs (through the outputs arena) or errors back."""
        outputs = self.server.outputs
        replies = []
        for item in items:
            self.items.pop(item.context, None)
            error, descriptor = item.error, None
            if error is None and not self.closed:
                try:
                    descriptor, blocks = pack(item.output, outputs)
                    with self._lock:
                        if self.closed:  # its decoder has gone meanwhile: nobody will free these
                            for offset in blocks:
                                outputs.free(offset)
                            descriptor = None
                        else:
                            self.output_blocks.update(blocks)
                except NoRoom as exc:
                    error = Overloaded(f"the model process's shared memory for outputs is full ({exc}); retry shortly")
            replies.append((item.context, descriptor, error_to_wire(error) if error is not None else None,
                            item.batch_size, item.queue_seconds, item.inference_seconds,
                            item.worker.name if item.worker is not None else ""))
            item.input = item.output = None  # the input is a view of the decoder's arena: let it go at once
        if not self.closed:
            self.link.send(("done", replies))

    def unsendable(self, message, exc: Exception) -> None:
        """A batch's answer the link could not send (an output holding what pickle refuses): each reply goes again,
        those pickle refuses as the handler's failure, so no item is left unanswered."""
        if message[0] != "done":
            return
        replies = []
        for reply in message[1]:
            try:
                pickle.dumps(reply)
                replies.append(reply)
            except Exception:
                failed = HandlerFailed(f"predict gave an output that cannot be sent to the decoder process "
                                       f"({type(exc).__name__}: {exc}); return numpy arrays, dicts of them, or plain "
                                       f"values")
                replies.append((reply[0], None, error_to_wire(failed), *reply[3:]))
        self.link.send(("done", replies))

    def lost(self) -> None:
        """The decoder has gone: withdraw what it queued, free what it never freed."""
        with self._lock:
            self.closed = True
            for offset in self.output_blocks:
                self.server.outputs.free(offset)
            self.output_blocks.clear()
        gone = ClientGone("the decoder process that submitted this input has ended")
        for item in list(self.items.values()):
            if item.worker is not None:
                item.worker.withdraw(item, gone)
        log.info("decoder %s disconnected", self.name)


class ModelServer:
    """Accept decoders, hand their inputs to the pool, publish the pool's state."""

    def __init__(self, pool: InstancePool, slot: Slot, outputs: Arena, listener: socket.socket,
                 settings, loop: asyncio.AbstractEventLoop):
        self.pool, self.slot, self.outputs, self.listener = pool, slot, outputs, listener
        self.settings, self.loop = settings, loop
        self.state = slot.state
        self.peers: set[DecoderPeer] = set()
        self._published_ready = False

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
            try:
                hello, fds = receive_hello(sock, max_fds=1)
                if len(fds) != 1:
                    raise HandshakeError(f"a decoder's hello came with {len(fds)} file descriptors, not its arena's")
                peer = DecoderPeer(self, str(hello.get("name", "decoder")), PeerArena(fds[0]))
                send_hello(sock, {"name": "model", "pid": os.getpid()}, [self.outputs.fd])
            except (HandshakeError, OSError, ValueError) as exc:
                log.warning("a decoder's handshake failed: %s", exc)
                sock.close()
                continue
            if not hand_to_loop(self.loop, self._connect(peer, sock)):
                sock.close()
                return

    async def _connect(self, peer: DecoderPeer, sock: socket.socket) -> None:
        peer.link = await open_link(self.loop, sock, peer.on_messages, lambda: self._lost(peer), name=peer.name,
                                    on_unsendable=peer.unsendable)
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
            fields["alive"] = int(all(thread.is_alive() for thread in worker._threads))
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
        self.loop.call_later(PUBLISH_SECONDS, self._publish)


def main() -> int:
    settings, handler_class = start_child()
    slot = Slot()
    state = slot.state
    state.model["pid"] = os.getpid()
    state.model["generation"] += 1
    state.model["ready"] = state.model["failed"] = 0
    listener = socket.socket(fileno=int(os.environ[layout.MODEL_FD]))
    prometheus_client.disable_created_metrics()
    metrics = Metrics(settings.service_name, live_gauges=False)
    devices = plan_devices(settings)
    pool = InstancePool(handler_class, devices, settings, metrics, more_coming=lambda: state.incoming() > 0)
    metrics.set_limits(settings, pool.names)
    metrics.create_series(service_path(settings.service_name), pool.names)
    outputs = Arena(layout.pod_memory_plan(settings).arena_per_decoder, "podserve-model-outputs")
    async def run() -> None:
        loop = asyncio.get_running_loop()
        stopping = loop.create_future()
        loop.add_signal_handler(signal.SIGTERM, lambda: stopping.done() or stopping.set_result(None))
        server = ModelServer(pool, slot, outputs, listener, settings, loop)
        server.start()
        log.info("model process: %d instance(s) on %s", len(devices), ", ".join(map(str, devices)))
        pool.load_in_background()
        await stopping
        listener.close()
        give_up = time.monotonic() + settings.stuck_batch_seconds
        while not pool.is_idle() and time.monotonic() < give_up:  # the front has drained: finish what is running
            await asyncio.sleep(0.02)

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(run())
    pool.stop()
    log.info("model process exited cleanly")
    return 0


if __name__ == "__main__":
    sys.exit(main())
