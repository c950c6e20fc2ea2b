"""The decoder processes as the front sees them: each admitted request forwarded to one, its answer settled here.

The front (processes/front_process.py) admits a request (runtime/http/admission.py) and hands it here: it goes whole
to the decoder with the least work ahead of it (the requests it holds that are not with the model yet, and the steps
its threads run now; one whose link is over its high-water mark, whose loop is stuck, or that is being replaced gets
none), or waits for one. The
decoder's answer comes back and is settled through admission. A decoder that ends costs the requests it held: each
is answered 502 here and counted (`podserve_requests_lost_total`). A request nobody has answered by its deadline and
grace is answered by admission's backstop, whatever its decoder or the model process is doing; the decoder is told
to drop it.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import socket
import threading
import time
from collections import deque

from prometheus_client import Counter

from podserve import errors
from podserve.errors import DecoderEnded, ServingError
from podserve.runtime.core.logs import log_request
from podserve.runtime.http.admission import Admission
from podserve.runtime.http.messages import Answer, Exchange
from podserve.runtime.processes.child import hand_to_loop
from podserve.runtime.processes.layout import front_frame_cap
from podserve.runtime.processes.pod_state import READY, SLOT_WORD, SLOT_WORDS, PodState, now_ns
from podserve.runtime.processes.transport.handshake import HandshakeError, receive_hello, send_hello
from podserve.runtime.processes.transport.items import error_to_wire
from podserve.runtime.processes.transport.link import open_link
from podserve.runtime.protocols.service_route import error_answer
from podserve.settings import ServingSettings

log = logging.getLogger("podserve.front")

#: A decoder whose event loop has not come round for this long gets no new request (it is busy or stuck in a step; the
#: supervisor decides which).
STALE_DECODER_NS = 500_000_000
#: A decoder whose heartbeat (a thread of its own) is older than this does not count towards the pod's readiness.
ALIVE_DECODER_NS = 3_000_000_000
#: The slot fields routing reads, as word indices (pod_state.SLOT_WORD).
_GENERATION, _STATE, _REPLACE, _LOOP_NS, _BUSY = (SLOT_WORD[name] for name in
                                                  ("generation", "state", "replace", "loop_ns", "busy"))
#: How often requests waiting for a decoder are offered again.
WAITING_LOOK_SECONDS = 0.05


class Forwarded:
    """An admitted request on its way through a decoder, and who holds it."""

    __slots__ = ("rid", "exchange", "deadline", "wire", "decoder", "submitted")

    def __init__(self, rid: int, exchange: Exchange, deadline: float, wire: str | None):
        self.rid, self.exchange, self.deadline, self.wire = rid, exchange, deadline, wire
        self.decoder: "DecoderLink | None" = None
        self.submitted = False  # its inputs are with the model process


class DecoderLink:
    """One decoder process as the front sees it: its link, its slot (and the slot's generation when it connected),
    the requests it holds, and how many of them it has yet to decode."""

    def __init__(self, name: str, slot: int, generation: int):
        self.name, self.slot, self.generation = name, slot, generation
        self.link = None
        self.held: dict[int, Forwarded] = {}
        self.decoding = 0  # held, not yet with the model: its backlog

    def drop(self, rid: int) -> Forwarded | None:
        record = self.held.pop(rid, None)
        if record is not None and not record.submitted:
            self.decoding -= 1
        return record


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

    def _current(self, decoder: DecoderLink) -> bool:
        """Whether `decoder`'s link is open and its slot still the process that connected (not a newer one's)."""
        return (not decoder.link.closed
                and self.state.slot_words[decoder.slot * SLOT_WORDS + _GENERATION] == decoder.generation)

    @property
    def ready_count(self) -> int:
        """Decoders connected and serving: ready, and their heartbeat fresh (one busy in a long step still counts; the
        supervisor replaces one that is hung)."""
        now = now_ns()
        return sum(1 for link in self.links.values()
                   if self._current(link) and self.state.slots[link.slot]["state"] == READY
                   and now - self.state.slots[link.slot]["heartbeat_ns"] < ALIVE_DECODER_NS)

    def idle(self) -> bool:
        return not self.waiting and not any(link.held for link in self.links.values())

    # Forwarding (event loop).

    def forward(self, exchange: Exchange, deadline: float, wire, _invalid=None) -> None:
        """Forward an admitted request (a bad header is its decoder's to answer, as it answers everything else)."""
        record = Forwarded(next(self._ids), exchange, deadline, "v2" if wire is not None else None)
        exchange.on_gone = lambda: self._gone(record)
        decoder = self._least_busy()
        if decoder is None:
            self.waiting.append(record)
            return
        self._send(record, decoder)

    def _least_busy(self) -> DecoderLink | None:
        """The decoder that takes requests with the least ahead of a new one (each request pays this look: the slots
        are read as plain words)."""
        now, best, least = now_ns(), None, None
        for link in self.links.values():
            if self._takes_requests(link, now):
                backlog = self._backlog(link)
                if least is None or backlog < least:
                    best, least = link, backlog
        return best

    def _backlog(self, link: DecoderLink) -> tuple[int, int]:
        """What is ahead of a new request at `link`'s decoder: the requests it has yet to decode and the steps its
        threads run now (one stuck in an encode counts), then everything it holds."""
        return link.decoding + self.state.slot_words[link.slot * SLOT_WORDS + _BUSY], len(link.held)

    def _takes_requests(self, link: DecoderLink, now: int) -> bool:
        words, base = self.state.slot_words, link.slot * SLOT_WORDS
        return (self._current(link) and not link.link.paused and words[base + _STATE] == READY
                and not words[base + _REPLACE] and now - words[base + _LOOP_NS] < STALE_DECODER_NS)

    def _send(self, record: Forwarded, decoder: DecoderLink) -> None:
        exchange = record.exchange
        record.decoder = decoder
        decoder.held[record.rid] = record
        decoder.decoding += 1
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
        """The caller hung up, or admission's backstop answered the request: its decoder stops work on it (a hang-up
        it answers 499, which is counted, not sent; a request answered already it drops)."""
        if record.decoder is not None:
            if record.exchange.settled:
                record.decoder.drop(record.rid)
            record.decoder.link.send(("dropped" if record.exchange.settled else "gone", record.rid))
        elif record in self.waiting:
            self.waiting.remove(record)
            self._settle(record, error_answer(errors.ClientGone("the caller hung up before its request ran; it was "
                                                                "not run")), log_it=True)

    def _settle(self, record: Forwarded, answer: Answer, log_it: bool = False) -> None:
        exchange = record.exchange
        seconds = time.monotonic() - exchange.received_at
        exchange.on_gone = None
        if self.admission.settle(exchange, answer, seconds) and log_it:  # decoders log what they answer; these
            log_request({"route": self.route, "status": answer.status, "total_ms": round(seconds * 1000, 2),
                         "deadline_ms": round(max(0.0, record.deadline - exchange.received_at) * 1000),
                         "decoder": record.decoder.name if record.decoder else None})

    # From the decoders (event loop).

    def _on_messages(self, decoder: DecoderLink, messages: list) -> None:
        for message in messages:
            kind = message[0]
            if kind == "answer":
                _, rid, status, headers, body, close = message
                record = decoder.drop(rid)
                if record is not None:
                    self._settle(record, Answer(status, body, headers, close))
            elif kind == "submitted":
                record = decoder.held.get(message[1])
                if record is not None and not record.submitted:
                    record.submitted = True
                    decoder.decoding -= 1
            elif kind == "hold":
                self._hold(decoder, *message[1:])
            elif kind == "release":
                record = decoder.held.get(message[1])
                if record is not None:
                    self.admission.release_places(record.exchange, message[2])
        if self.waiting:
            self._forward_waiting()

    def _hold(self, decoder: DecoderLink, rid: int, held: int, count: int, unit: str, field: str) -> None:
        record = decoder.held.get(rid)
        try:
            if record is None:
                raise errors.ClientGone("the request was answered already")
            places = self.admission.hold_places(record.exchange, held, count, unit, field)
        except ServingError as exc:
            decoder.link.send(("held", rid, None, error_to_wire(exc)))
            return
        decoder.link.send(("held", rid, places, None))

    def _unsendable(self, decoder: DecoderLink, message, exc: Exception) -> None:
        """A request the link could not carry (over its frame cap): answered here, alone."""
        if message[0] != "request":
            return
        record = decoder.drop(message[1])
        if record is not None:
            self._settle(record, error_answer(ServingError(f"internal error: the request could not be forwarded to "
                                                           f"{decoder.name} ({exc})")), log_it=True)

    def _lost(self, decoder: DecoderLink) -> None:
        """A decoder's link closed: it ended. Every request it held is answered 502 here, and counted."""
        if self.links.get(decoder.slot) is decoder:
            del self.links[decoder.slot]
        held, decoder.held, decoder.decoding = list(decoder.held.values()), {}, 0
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
                decoder = DecoderLink(str(hello["name"]), int(hello["slot"]), int(hello["generation"]))
                send_hello(sock, {"name": "front", "pid": os.getpid()})
            except (HandshakeError, OSError, KeyError, ValueError, TypeError) as exc:
                log.warning("a decoder's handshake failed: %s", exc)
                sock.close()
                continue
            if not hand_to_loop(self.loop, self._connect(decoder, sock)):
                sock.close()
                return

    async def _connect(self, decoder: DecoderLink, sock: socket.socket) -> None:
        decoder.link = await open_link(self.loop, sock, lambda messages: self._on_messages(decoder, messages),
                                       lambda: self._lost(decoder), name=decoder.name,
                                       on_unsendable=lambda message, exc: self._unsendable(decoder, message, exc),
                                       frame_cap=front_frame_cap(self.settings), on_resume=self._forward_waiting)
        old = self.links.get(decoder.slot)
        self.links[decoder.slot] = decoder
        if old is not None:
            old.link.close()
        log.info("%s connected", decoder.name)
        # A decoder is READY once its links are open; look again shortly for the requests that waited for one.
        self.loop.call_later(0.05, self._forward_waiting)
