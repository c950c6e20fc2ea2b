"""The front process of the split layout: the pod's HTTP server, its admission, and the decoders it forwards to.

It runs platform code only, so what a caller or a team's code does never stops it answering probes:
it reads every request (runtime/http/), admits or refuses it (runtime/http/admission.py:
the pod's places, the paced 503s, pending bodies, connections: pod-wide limits, kept in this one
process), answers the probes, the Open Inference Protocol's health and metadata and /metrics from the
pod's shared state, and forwards each admitted request whole to the decoder process holding the fewest
(runtime/processes/decoder_process.py). The decoder's answer comes back here to be counted and written. When a
decoder ends with requests in hand, each of them is answered 502 here and counted
(`podserve_requests_lost_total`); the supervisor starts another decoder, and the pod stays ready.

    python -m podserve.runtime.processes.front_process   (spawned by the supervisor, never by hand)
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import socket
import sys
import threading
import time
from collections import deque

import prometheus_client
import uvloop
from prometheus_client import CollectorRegistry, Counter, ProcessCollector
from prometheus_client.multiprocess import MultiProcessCollector

from podserve import errors, metric_names as names
from podserve.errors import DeadlineExceeded, DecoderEnded, ServingError
from podserve.routes import service_path
from podserve.runtime.batching.pool import set_aside_start_up_objects
from podserve.runtime.core.lifecycle import GracefulShutdown, Lifecycle
from podserve.runtime.core.logs import configure_logging, log_request
from podserve.runtime.core.metrics import Metrics
from podserve.runtime.http.admission import Admission
from podserve.runtime.http.deadlines import Budgets
from podserve.runtime.http.messages import Answer, Exchange
from podserve.runtime.http.server import raise_open_file_limit
from podserve.runtime.processes import layout
from podserve.runtime.processes.child import Slot, die_with_parent, hand_to_loop
from podserve.runtime.processes.pod_metrics import PodMetrics
from podserve.runtime.processes.pod_state import DECODER, READY, PodState, now_ns
from podserve.runtime.processes.transport.handshake import HandshakeError, receive_hello, send_hello
from podserve.runtime.processes.transport.items import error_to_wire
from podserve.runtime.processes.transport.link import open_link
from podserve.runtime.protocols.control import ControlThread
from podserve.runtime.protocols.probes import Probes
from podserve.runtime.protocols.router import http_server
from podserve.runtime.protocols.service_route import error_answer
from podserve.runtime.protocols.v2_route import V2Route
from podserve.settings import ServingSettings

log = logging.getLogger("podserve.front")

#: A decoder whose event loop has not come round for this long gets no new request (it is busy or stuck in a step; the
#: supervisor decides which).
STALE_DECODER_NS = 500_000_000
#: A decoder whose heartbeat (a thread of its own) is older than this does not count towards the pod's readiness.
ALIVE_DECODER_NS = 3_000_000_000
#: A forwarded request not answered and not handed to the model this long after its deadline is answered 504 here:
#: its decoder's own deadline timer did not (its loop is stuck in a decode, with or without the GIL), and the
#: supervisor replaces such a decoder.
EXPIRE_GRACE_SECONDS = 0.25
#: How often requests waiting for a decoder are offered again.
WAITING_LOOK_SECONDS = 0.05


class Forwarded:
    """An admitted request on its way through a decoder: the places it holds, and who holds it."""

    __slots__ = ("rid", "exchange", "places", "deadline", "wire", "decoder", "timer", "submitted")

    def __init__(self, rid: int, exchange: Exchange, deadline: float, wire: str | None):
        self.rid, self.exchange, self.deadline, self.wire = rid, exchange, deadline, wire
        self.places = 1
        self.decoder: "DecoderLink | None" = None
        self.timer = None
        self.submitted = False  # its inputs are with the model process: its batch answers it


class DecoderLink:
    """One decoder process as the front sees it: its link, its slot, and the requests it holds."""

    def __init__(self, name: str, slot: int, link):
        self.name, self.slot, self.link = name, slot, link
        self.held: dict[int, Forwarded] = {}


class Decoders:
    """Forward admitted requests to the decoders; settle their answers; answer for those that end."""

    def __init__(self, settings: ServingSettings, state: PodState, admission: Admission, route: str, lost: Counter):
        self.settings, self.state, self.admission, self.route, self.lost = settings, state, admission, route, lost
        self.loop: asyncio.AbstractEventLoop | None = None
        self.links: dict[int, DecoderLink] = {}
        self.waiting: deque[Forwarded] = deque()  # admitted while no decoder could take it
        self._ids = itertools.count(1)

    def start(self, loop: asyncio.AbstractEventLoop, listener: socket.socket) -> None:
        self.loop = loop
        threading.Thread(target=self._accept, args=(listener,), name="accept-decoders", daemon=True).start()
        self._look_again()

    def _look_again(self) -> None:
        """Forward what waits whenever a decoder can take it (one that was busy or starting may be free now)."""
        if self.waiting:
            self._forward_waiting()
        self.loop.call_later(WAITING_LOOK_SECONDS, self._look_again)

    @property
    def ready_count(self) -> int:
        """Decoders connected and serving: ready, and their heartbeat fresh (one busy in a long step still counts; the
        supervisor replaces one that is hung)."""
        now = now_ns()
        return sum(1 for link in self.links.values()
                   if not link.link.closed and self.state.slots[link.slot]["state"] == READY
                   and now - self.state.slots[link.slot]["heartbeat_ns"] < ALIVE_DECODER_NS)

    def idle(self) -> bool:
        return not self.waiting and not any(link.held for link in self.links.values())

    # Forwarding (event loop).

    def forward(self, exchange: Exchange, deadline: float, wire: str | None) -> None:
        record = Forwarded(next(self._ids), exchange, deadline, wire)
        exchange.on_gone = lambda: self._gone(record)
        record.timer = self.loop.call_at(self._loop_time(deadline + EXPIRE_GRACE_SECONDS), self._expire, record)
        decoder = self._least_busy()
        if decoder is None:
            self.waiting.append(record)
            return
        self._send(record, decoder)

    def _loop_time(self, monotonic: float) -> float:
        return self.loop.time() + (monotonic - time.monotonic())

    def _least_busy(self) -> DecoderLink | None:
        now = now_ns()
        takers = [link for link in self.links.values() if self._takes_requests(link, now)]
        return min(takers, key=lambda link: len(link.held)) if takers else None

    def _takes_requests(self, link: DecoderLink, now: int) -> bool:
        slot = self.state.slots[link.slot]
        return (not link.link.closed and slot["state"] == READY and not slot["replace"]
                and now - slot["loop_ns"] < STALE_DECODER_NS)

    def _send(self, record: Forwarded, decoder: DecoderLink) -> None:
        exchange = record.exchange
        record.decoder = decoder
        decoder.held[record.rid] = record
        decoder.link.send(("request", record.rid, exchange.method, exchange.path, exchange.query, exchange.headers,
                           exchange.body, exchange.received_at, record.deadline, record.wire, exchange.oversize,
                           exchange.peer))
        exchange.body = b""  # the decoder has it now

    def _forward_waiting(self) -> None:
        while self.waiting:
            decoder = self._least_busy()
            if decoder is None:
                return
            self._send(self.waiting.popleft(), decoder)

    def _gone(self, record: Forwarded) -> None:
        """The caller hung up: its decoder stops work on it (and answers 499, which is counted, not sent)."""
        if record.decoder is not None:
            record.decoder.link.send(("gone", record.rid))
        elif record in self.waiting:
            self.waiting.remove(record)
            self._settle(record, error_answer(errors.ClientGone("the caller hung up before its request ran; it was "
                                                                "not run")), log_it=True)

    def _expire(self, record: Forwarded) -> None:
        """The deadline passed and its decoder has neither answered nor handed the request to the model."""
        record.timer = None
        if record.decoder is None and record in self.waiting:
            self.waiting.remove(record)
            self._settle(record, error_answer(DeadlineExceeded(
                "the request's deadline passed while no decoder process could take it; it was not run")), log_it=True)
        elif record.decoder is not None and not record.submitted \
                and record.decoder.held.pop(record.rid, None) is not None:
            record.decoder.link.send(("gone", record.rid))
            self._settle(record, error_answer(DeadlineExceeded(
                f"the request's deadline passed while {record.decoder.name} was decoding it (its decode is stuck: "
                f"the process is replaced if it does not recover); it was not run")), log_it=True)

    def _settle(self, record: Forwarded, answer: Answer, log_it: bool = False) -> None:
        if record.timer is not None:
            record.timer.cancel()
            record.timer = None
        exchange = record.exchange
        seconds = time.monotonic() - exchange.received_at
        exchange.on_gone = None
        self.admission.settle(exchange, record.places, answer, seconds)
        if log_it:  # decoders log what they answer; these never reached one, or it ended
            log_request({"route": self.route, "status": answer.status, "total_ms": round(seconds * 1000, 2),
                         "deadline_ms": round(max(0.0, record.deadline - exchange.received_at) * 1000),
                         "decoder": record.decoder.name if record.decoder else None})

    # From the decoders (event loop).

    def _on_messages(self, decoder: DecoderLink, messages: list) -> None:
        for message in messages:
            kind = message[0]
            if kind == "answer":
                _, rid, status, headers, body, close = message
                record = decoder.held.pop(rid, None)
                if record is not None:
                    self._settle(record, Answer(status, body, headers, close))
            elif kind == "submitted":
                record = decoder.held.get(message[1])
                if record is not None:
                    record.submitted = True
            elif kind == "hold":
                self._hold(decoder, *message[1:])
            elif kind == "release":
                record = decoder.held.get(message[1])
                if record is not None and message[2] > 0:
                    record.places -= message[2]
                    self.admission.lifecycle.request_finished(message[2])
        if self.waiting:
            self._forward_waiting()

    def _hold(self, decoder: DecoderLink, rid: int, held: int, count: int, unit: str, field: str) -> None:
        record = decoder.held.get(rid)
        if record is None:
            decoder.link.send(("held", rid, None, error_to_wire(errors.ClientGone("the request was answered "
                                                                                  "already"))))
            return
        try:
            record.places = self.admission.hold_places(record.exchange, record.places, count, unit, field)
        except ServingError as exc:
            decoder.link.send(("held", rid, None, error_to_wire(exc)))
            return
        decoder.link.send(("held", rid, record.places, None))

    def _lost(self, decoder: DecoderLink) -> None:
        """A decoder's link closed: it ended. Every request it held is answered 502 here, and counted."""
        if self.links.get(decoder.slot) is decoder:
            del self.links[decoder.slot]
        held, decoder.held = list(decoder.held.values()), {}
        if held:
            log.error("%s ended holding %d request(s); each is answered 502", decoder.name, len(held))
        ended = DecoderEnded(f"the process decoding this request ({decoder.name}) ended before answering it (a crash "
                             f"or a hang in decoding); it was replaced: see the pod's log")
        for record in held:
            self.lost.inc()
            self._settle(record, error_answer(ended), log_it=True)

    # Accepting decoders.

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                sock, _ = listener.accept()
            except OSError:
                return
            try:
                hello, _fds = receive_hello(sock, max_fds=0)
                slot, name = int(hello["slot"]), str(hello["name"])
                send_hello(sock, {"name": "front", "pid": os.getpid()})
            except (HandshakeError, OSError, KeyError, ValueError, TypeError) as exc:
                log.warning("a decoder's handshake failed: %s", exc)
                sock.close()
                continue
            if not hand_to_loop(self.loop, self._connect(name, slot, sock)):
                sock.close()
                return

    async def _connect(self, name: str, slot: int, sock: socket.socket) -> None:
        decoder = DecoderLink(name, slot, None)
        decoder.link = await open_link(self.loop, sock, lambda messages: self._on_messages(decoder, messages),
                                       lambda: self._lost(decoder), name=name)
        old = self.links.get(slot)
        self.links[slot] = decoder
        if old is not None:
            old.link.close()
        log.info("%s connected", name)
        # A decoder is READY once its links are open; look again shortly for the requests that waited for one.
        self.loop.call_later(0.05, self._forward_waiting)


class PodView:
    """The pod's model and decoders as the probes read them (runtime/protocols/probes.py reads a pool the same way)."""

    def __init__(self, state: PodState, decoders: Decoders, settings: ServingSettings):
        self.state, self.decoders, self.settings = state, decoders, settings

    @property
    def ready(self) -> bool:
        return bool(self.state.model["ready"]) and self.decoders.ready_count > 0

    @property
    def instance_count(self) -> int:
        return int(self.state.model["instances"])

    def status(self) -> str:
        model = self.state.model
        if not model["ready"]:
            return self.state.status() or "the model process is starting"
        if not self.decoders.ready_count:
            starting = len(self.state.slots_of(DECODER))
            return f"no decoder process is ready ({starting} starting)"
        return f"{self.instance_count} instance(s) ready; {self.decoders.ready_count} decoder process(es)"

    @property
    def failure(self) -> str | None:
        return self.state.status() if self.state.model["failed"] else None

    def liveness_problem(self) -> str | None:
        """Why the pod is wedged: the model process's batch thread dead or a batch running past stuck_batch_seconds,
        or the model process silent that long."""
        model, stuck = self.state.model, self.settings.stuck_batch_seconds
        if not model["pid"] or not model["heartbeat_ns"]:
            return None
        now = now_ns()
        silent = (now - int(model["heartbeat_ns"])) / 1e9
        if silent > stuck:
            return f"the model process has not stamped its heartbeat for {silent:.0f}s"
        names = self.state.info().get("instances", [])
        for index in range(int(model["instances"])):
            instance = self.state.instances[index]
            started = int(instance["batch_started_ns"])
            if not instance["alive"] or started and (now - started) / 1e9 > stuck:
                name = names[index] if index < len(names) else str(index)
                return f"instance {name}: batch thread is dead or one batch has run over {stuck:g}s"
        return None


def main() -> int:
    die_with_parent()
    configure_logging()
    settings = ServingSettings.from_env()
    slot = Slot()
    state = slot.state
    raise_open_file_limit()
    prometheus_client.disable_created_metrics()
    metrics = Metrics(settings.service_name, live_gauges=False)
    lost = Counter(names.REQUESTS_LOST, "Requests answered 502 because the decoder process holding them ended.",
                   ("service", "reason")).labels(settings.service_name, "decoder_ended")
    lifecycle = Lifecycle()
    route = service_path(settings.service_name)
    metrics.create_series(route, [])  # the model process creates its instances' series
    budgets = Budgets(settings)
    limit = layout.holding_limit(settings)
    refusal = error_answer(errors.Overloaded(f"this pod is full: it already holds {limit} requests (queue_size per "
                                             f"instance); retry shortly, or elsewhere"))
    admission = Admission(route, lambda: limit, lifecycle, metrics, refusal, error_answer,
                          body_budget=layout.pod_memory_plan(settings).bodies)
    decoders = Decoders(settings, state, admission, route, lost)
    view = PodView(state, decoders, settings)
    probes = Probes(view, lifecycle)

    def accept(exchange: Exchange, wire=None) -> None:
        budget, _invalid = budgets.of_request(exchange.headers, len(exchange.body or b""))
        if admission.admit(exchange, budget):  # a bad header is the decoder's to answer, as it answers everything else
            decoders.forward(exchange, exchange.received_at + budget, "v2" if wire is not None else None)

    open_inference = V2Route(route, settings.service_name, accept, probes,
                             describe=lambda: state.info().get("v2") if state.model["ready"] else None)
    registry = CollectorRegistry()
    MultiProcessCollector(registry)
    registry.register(PodMetrics(settings, state, lifecycle, admission, limit))
    ProcessCollector(pid=lambda: int(os.environ[layout.SUPERVISOR_PID]), registry=registry)  # the pod's PID 1
    control = ControlThread(route, metrics, settings.control_queue_size, registry)
    http = socket.socket(fileno=int(os.environ[layout.HTTP_FD]))
    server = http_server(settings, route, metrics, open_inference, probes, control, accept, sock=http,
                         admit_head=lambda exchange: admission.admit_head(exchange,
                                                                          budgets.of_headers(exchange.headers)))
    finish_timeout = settings.request_timeout_ms / 1000.0 + settings.stuck_batch_seconds
    shutdown = GracefulShutdown(server, lifecycle, decoders.idle, settings.drain_seconds, finish_timeout)
    listener = socket.socket(fileno=int(os.environ[layout.FRONT_FD]))

    def started() -> None:
        loop = asyncio.get_running_loop()
        shutdown.install(loop)
        admission.start(loop)
        decoders.start(loop, listener)
        control.start()
        slot.keep_beating(loop)
        slot.ready()
        log.info("front: %d objects from start-up set aside from garbage collection", set_aside_start_up_objects())
        log.info("front of %s on http://%s:%s", settings.service_name, settings.host, server.effective_port)

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(server.serve(on_started=started))
    admission.stop()
    control.stop()
    listener.close()
    log.info("front exited cleanly")
    return 0


if __name__ == "__main__":
    sys.exit(main())
