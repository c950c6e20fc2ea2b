"""A decoder process of the split layout: the handler's decode and encode for the requests the front forwards.

The front process (runtime/processes/front_process.py) reads each request, admits it and forwards it here
whole; this process runs the service route as one process would (runtime/protocols/service_route.py: the
deadline, parsing, `decode`, videos, the Open Inference Protocol's tensors, `encode`), but submits the
model inputs to the model process through shared memory (runtime/processes/model_client.py) and sends each
answer back to the front, which releases its places, counts it and writes it. A crash here (a decoder
library, a team's native code) costs only the requests this process held: the front answers each of
them, and the supervisor starts another decoder.

    python -m podserve.runtime.processes.decoder_process   (spawned by the supervisor, never by hand)
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import sys
import threading
import time

import prometheus_client
import uvloop

from podserve.errors import HandlerFailed, NotReady, Overloaded
from podserve.routes import service_path
from podserve.runtime.batching.inline_policy import LoopRelief, StepCost
from podserve.runtime.batching.pool import set_aside_start_up_objects
from podserve.runtime.batching.step_runner import request_threads
from podserve.runtime.core import verbs
from podserve.runtime.core.metrics import Metrics
from podserve.runtime.http.deadlines import Budgets
from podserve.runtime.http.messages import Answer
from podserve.runtime.processes import layout
from podserve.runtime.processes.child import Slot, in_thread, start_child
from podserve.runtime.processes.model_client import ModelClient
from podserve.runtime.processes.pod_state import RETIRING
from podserve.runtime.processes.transport.arena import Arena, PeerArena
from podserve.runtime.processes.transport.handshake import HandshakeError, receive_hello, send_hello
from podserve.runtime.processes.transport.items import error_from_wire
from podserve.runtime.processes.transport.link import open_link
from podserve.runtime.protocols import api
from podserve.runtime.protocols.service_route import ServiceRoute, error_answer
from podserve.runtime.protocols.v2_route import V2Route
from podserve.runtime.protocols.video_route import VideoWork

log = logging.getLogger("podserve.decoder")

#: How long a request thread waits for the front to grant more places (a video's frames, a v2 request's rows).
HOLD_TIMEOUT_SECONDS = 10.0
#: A decoder's loop runs a step itself while that kind of step takes at most this much CPU on average (one process:
#: 2 ms of wall time), and hands every step to its request thread for a while after one over STEP_STALL_SECONDS: its
#: loop reads no HTTP and answers no probe, so a hand-off (two thread wake-ups) would cost more than it saves; and
#: CPU time, unlike the wall clock, does not count the time a busy machine left the step waiting for a core.
STEP_INLINE_SECONDS = 0.02
STEP_STALL_SECONDS = 0.2
#: How often a lost link to the front or the model process is tried again (the supervisor is replacing it).
RECONNECT_SECONDS = 0.2
#: How often this decoder gives the pages of its arena's long-free blocks back.
TRIM_SECONDS = 1.0


class ForwardedExchange:
    """A request the front admitted and forwarded here: what the service route reads of it."""

    __slots__ = ("rid", "method", "target", "path", "query", "headers", "body", "version", "received_at",
                 "oversize", "peer", "timer", "on_gone", "gone")

    def __init__(self, rid: int, method: str, path: str, query: str, headers: dict, body: bytes, received_at: float,
                 oversize: bool, peer: str):
        self.rid, self.method, self.path, self.query, self.headers = rid, method, path, query, headers
        self.body, self.received_at, self.oversize, self.peer = body, received_at, oversize, peer
        self.target, self.version = path.encode("latin-1", "replace"), "1.1"
        self.timer = self.on_gone = None
        self.gone = False

    @property
    def abandoned(self) -> bool:
        """The caller hung up (the front said so), or the front itself has gone."""
        return self.gone


class FrontAdmission:
    """The front process that admitted this decoder's requests: answers go back to it, more places come from it."""

    def __init__(self) -> None:
        self.link = None
        self.exchanges: dict[int, ForwardedExchange] = {}
        self._holds: dict[int, tuple[threading.Event, list]] = {}
        self._loop_thread: int | None = None

    def settle(self, exchange: ForwardedExchange, answer: Answer, seconds: float) -> bool:
        """Send `answer` to the front, which settles the request (places, bytes, counts); drop the body here."""
        if exchange.timer is not None:
            exchange.timer.cancel()
        exchange.body = b""
        if self.exchanges.pop(exchange.rid, None) is None or self.link is None:
            return False  # the front has gone, or answered it already (its backstop): nobody to answer
        self.link.send(("answer", exchange.rid, answer.status, list(answer.headers), answer.body, answer.close))
        return True

    def unsendable(self, message, exc: Exception) -> None:
        """An answer the link to the front could not carry (over its frame cap): a 500 naming why goes instead."""
        if message[0] == "answer" and self.link is not None:
            answer = error_answer(HandlerFailed(f"the answer could not be sent ({exc}); return a smaller result from "
                                                f"encode"))
            self.link.send(("answer", message[1], answer.status, list(answer.headers), answer.body, answer.close))

    def hold_places(self, exchange: ForwardedExchange, held: int, count: int, unit: str, field: str) -> int:
        """Ask the front for `count` places in all (a request thread or a video thread waits for its answer)."""
        if threading.get_ident() == self._loop_thread:
            raise RuntimeError("hold_places from the event loop would wait for the loop itself")
        if count == held:
            return held
        waiter, box = threading.Event(), []
        self._holds[exchange.rid] = (waiter, box)
        link = self.link
        if link is None:
            raise NotReady("not ready: this decoder has lost the front; retry shortly")
        link.send(("hold", exchange.rid, held, count, unit, field))
        if not waiter.wait(HOLD_TIMEOUT_SECONDS):
            self._holds.pop(exchange.rid, None)
            raise Overloaded(f"the front did not grant {count} places within {HOLD_TIMEOUT_SECONDS:g} s; retry shortly")
        places, error = box
        if error is not None:
            raise error_from_wire(error)
        return places

    def submitted(self, exchange: ForwardedExchange) -> None:
        """Tell the front the request's inputs are with the model process: it no longer counts towards this
        decoder's backlog (what the front routes by). It rides with the next answer (within a millisecond)."""
        if self.link is not None:
            self.link.send_later(("submitted", exchange.rid))

    def release_places(self, exchange: ForwardedExchange, places: int) -> None:
        if places > 0 and self.link is not None:
            self.link.send(("release", exchange.rid, places))

    def granted(self, rid: int, places: int | None, error) -> None:
        hold = self._holds.pop(rid, None)
        if hold is not None:
            hold[1].extend((places, error))
            hold[0].set()

    def lost(self) -> None:
        """The front has gone: its callers are gone with it; nothing here can be answered."""
        self.link = None
        exchanges, self.exchanges = list(self.exchanges.values()), {}
        for exchange in exchanges:
            exchange.gone = True
            if exchange.on_gone is not None:
                exchange.on_gone()
        for rid in list(self._holds):
            self.granted(rid, None, ("NotReady", "not ready: the front has gone", None, {}, 503, None))


class DecoderProcess:
    """The links to the front and the model process, and the service route between them."""

    def __init__(self, settings, handler, slot: Slot, arena: Arena, metrics: Metrics):
        self.settings, self.slot, self.arena, self.metrics = settings, slot, arena, metrics
        self.name = f"decoder-{slot.index}"
        self.budgets = Budgets(settings)
        self.model = ModelClient(settings, slot, handler, arena)
        self.admission = FrontAdmission()
        route = service_path(settings.service_name)
        limits = api.InputLimits.from_settings(settings, layout.holding_limit(settings), 1,
                                               layout.pod_memory_plan(settings).per_parse)
        # One core is this process's: no core of its own idles for the loop to hand work to, so no relief.
        relief = LoopRelief(1.0, lambda: 0, lambda: 0)
        self.service = ServiceRoute(route, settings, self.model, self.admission, request_threads(settings), relief,
                                    VideoWork(1), limits,
                                    step_costs=lambda: StepCost(STEP_INLINE_SECONDS, STEP_STALL_SECONDS),
                                    step_clock=time.thread_time)
        self.v2 = V2Route(route, settings.service_name, accept=lambda *_: None, probes=self,
                          describe=lambda: self.model.state.info().get("v2") if self.model.ready else None)
        self.v2.begins_on_thread = True  # its second admission step waits for the front's answer
        self.loop: asyncio.AbstractEventLoop | None = None
        self.stopping = False
        self._trimmed = time.monotonic()

    def readiness_problem(self) -> NotReady | None:
        return None if self.model.ready else NotReady(f"not ready: {self.model.status()}")

    async def run(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.metrics.defer_per_turn(self.loop)
        self.admission._loop_thread = threading.get_ident()
        stopping = self.loop.create_future()
        self.loop.add_signal_handler(signal.SIGTERM, lambda: stopping.done() or stopping.set_result(None))
        self.service.start(self.loop)
        self.slot.keep_beating(self.loop, self._publish)
        connecting = asyncio.ensure_future(self._connect_both())
        await asyncio.wait([connecting, stopping], return_when=asyncio.FIRST_COMPLETED)
        if connecting.done():
            log.info("%s: %d objects from start-up set aside from garbage collection", self.name,
                     set_aside_start_up_objects())
        await stopping
        self.stopping = True
        connecting.cancel()
        self.slot.fields["state"] = RETIRING  # the front sends nothing more
        give_up = time.monotonic() + self.settings.request_timeout_ms / 1000.0 + 5
        while self.admission.exchanges and time.monotonic() < give_up:
            await asyncio.sleep(0.02)
        self.service.stop()

    async def _connect_both(self) -> None:
        await self._connect_model()
        await self._connect_front()
        if not self.stopping:
            self.slot.ready()

    def _publish(self, fields) -> None:
        fields["held"] = len(self.admission.exchanges)
        fields["backlog"] = self.service.backlog
        fields["busy"] = self.service.busy  # the front routes by what is ahead of a request here: these and its own
        stuck = self.service.stuck_problem()
        if stuck is not None and not fields["replace"]:
            log.error("%s: %s: asking to be replaced", self.name, stuck)
            fields["replace"] = 1
        elif stuck is None and fields["replace"] and not self.stopping:  # it came back before the supervisor acted
            fields["replace"] = 0
        now = time.monotonic()
        if now - self._trimmed > TRIM_SECONDS:
            self._trimmed = now
            self.arena.trim()

    async def _until_connected(self, handshake, peer: str):
        """`handshake`'s result once it succeeds (tried again every RECONNECT_SECONDS while the supervisor starts
        the peer), or None once this process is stopping."""
        while not self.stopping:
            try:
                return await in_thread(self.loop, handshake)
            except (OSError, HandshakeError) as exc:
                log.debug("%s is not there yet: %s", peer, exc)
                await asyncio.sleep(RECONNECT_SECONDS)
        return None

    async def _connect_model(self) -> None:
        connected = await self._until_connected(self._handshake_model, "the model process")
        if connected is None:
            return
        sock, outputs, generation = connected
        link = await open_link(self.loop, sock, self.model.on_messages, self._model_lost, name="model",
                               on_unsendable=self.model.unsendable, frame_cap=layout.MODEL_FRAME_BYTES)
        self.model.connected(link, outputs, generation)

    def _handshake_model(self) -> tuple[socket.socket, PeerArena, int]:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.connect(os.environ[layout.MODEL_PATH])
            send_hello(sock, {"name": self.name, "pid": os.getpid()}, [self.arena.fd])
            hello, fds = receive_hello(sock, max_fds=1)
            if len(fds) != 1:
                raise HandshakeError("the model process's hello came without this decoder's outputs arena")
            try:
                return sock, PeerArena(fds[0]), int(hello["generation"])
            except (KeyError, TypeError, ValueError) as exc:
                raise HandshakeError(f"the model process's hello is not one: {exc}") from None
        except BaseException:
            sock.close()
            raise

    def _model_lost(self) -> None:
        self.model.lost()
        if not self.stopping:
            log.warning("%s: the model process has gone; reconnecting", self.name)
            self.loop.create_task(self._connect_model())

    async def _connect_front(self) -> None:
        sock = await self._until_connected(self._handshake_front, "the front")
        if sock is None:
            return
        self.admission.link = await open_link(self.loop, sock, self._from_front, self._front_lost, name="front",
                                              on_unsendable=self.admission.unsendable,
                                              frame_cap=layout.front_frame_cap(self.settings))

    def _handshake_front(self) -> socket.socket:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.connect(os.environ[layout.FRONT_PATH])
            send_hello(sock, {"name": self.name, "slot": self.slot.index, "pid": os.getpid(),
                              "generation": int(self.slot.fields["generation"])})
            receive_hello(sock, max_fds=0)
            return sock
        except BaseException:
            sock.close()
            raise

    def _front_lost(self) -> None:
        self.admission.lost()
        if not self.stopping:
            if self.model.state.pod["stopping"]:  # it drained and ended; SIGTERM comes next
                log.info("%s: the front has drained and ended (the pod is stopping)", self.name)
            else:
                log.warning("%s: the front has gone; reconnecting", self.name)
            self.loop.create_task(self._connect_front())

    def _from_front(self, messages: list) -> None:
        for message in messages:
            kind = message[0]
            if kind == "request":
                self._start(*message[1:])
            elif kind in ("gone", "dropped"):  # its caller hung up (answered 499), or the front answered it already
                exchanges = self.admission.exchanges
                exchange = exchanges.pop(message[1], None) if kind == "dropped" else exchanges.get(message[1])
                if exchange is not None and not exchange.gone:
                    exchange.gone = True
                    if exchange.on_gone is not None:
                        exchange.on_gone()
            elif kind == "held":
                self.admission.granted(*message[1:])

    def _start(self, rid: int, method: str, path: str, query: str, headers: dict, body: bytes, received_at: float,
               deadline: float, wire: str | None, oversize: bool, peer: str) -> None:
        exchange = ForwardedExchange(rid, method, path, query, headers, body, received_at, oversize, peer)
        self.admission.exchanges[rid] = exchange
        _budget, invalid = self.budgets.of_request(headers, len(body))
        self.service.start_call(exchange, deadline, self.v2 if wire == "v2" else None, invalid)


def main() -> int:
    settings, handler_class = start_child()
    slot = Slot()
    prometheus_client.disable_created_metrics()
    metrics = Metrics(settings.service_name, live_gauges=False)
    metrics.count_runtime_faults()
    verbs.on_verb_cpu = metrics.observe_verb_cpu
    handler = handler_class()
    handler.max_batch_size = settings.max_batch_size
    handler.load_codec(settings.model_path)
    arena = Arena(layout.pod_arena_sizes(settings).inputs, f"podserve-decoder-{slot.index}-inputs")
    process = DecoderProcess(settings, handler, slot, arena, metrics)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(process.run())
    metrics.flush()
    log.info("%s exited cleanly", process.name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
