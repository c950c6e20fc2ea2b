"""`POST /api/<service>`: a request's deadline, its two steps around the batch, and its answer.

A request comes here admitted (runtime/http/admission.py: its place taken), with its deadline.
Its `begin` parses the body, runs the handler's `decode` and queues the input for a batch; it does
not wait for the batch. When the batch is done, `finish` runs `encode` and answers. Each step runs
in the event loop while it is measured cheap, else on a request thread (runtime/batching/step_runner.py).

A request's deadline counts from when its first bytes were read. If it passes while the request
waits for a request thread, is being decoded, or waits in its instance's queue, it is answered 504
at that moment: a decode still running goes on, but its input is dropped, never queued; a batch
that has started runs to its end, and its answer waits for it up to the grace past the deadline (then admission's
backstop has answered 504: runtime/http/admission.py). The same goes for a caller who hangs up (499, not sent).

The same route serves in both layouts (docs/processes.md): in one process, `pool` is the model
instances and `admission` the HTTP server's own; in a decoder process, `pool` is the model process
reached through shared memory and `admission` the front process that admitted the request.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from typing import Any, Protocol as Interface

from podserve import errors
from podserve.errors import ClientGone, DeadlineExceeded, HandlerFailed, ServingError
from podserve.handler import Payload, WithContext
from podserve.runtime.batching.batcher import WorkItem
from podserve.runtime.batching.fanout import FanOut
from podserve.runtime.batching.inline_policy import StepCost
from podserve.runtime.batching.step_runner import StepRunner
from podserve.runtime.core.logs import RUNTIME_FAULT, log_request
from podserve.runtime.core.verbs import batch_key_of, call_verb
from podserve.runtime.http.messages import JSON_TYPE, Answer, Exchange, header_problem
from podserve.runtime.protocols import api
from podserve.runtime.protocols.video_route import VideoWork
from podserve.settings import ServingSettings

log = logging.getLogger(__name__)

_RESULTS_JSON = json.JSONEncoder(allow_nan=False)  # one encoder for every answer: NaN is the handler's bug

WAITING, WORKING, SUBMITTED, ANSWERED = range(4)


class Call:
    """One service request between its admission and its answer."""

    __slots__ = ("exchange", "deadline", "state", "item", "payload", "context", "wire", "job", "places")

    def __init__(self, exchange: Exchange, deadline: float, wire: "WireFormat | None" = None):
        self.exchange = exchange
        self.wire = wire  # None: /api/<service>'s own wire format (runtime/protocols/api.py)
        self.job: Any = None  # the wire format's own state
        self.places = 1  # places the request holds against the pod's limit (a v2 request: its batch's rows)
        self.deadline = deadline
        self.state = WAITING
        self.item: WorkItem | None = None
        self.payload: Payload | None = None  # released by its answer, from any thread: a decode holds its own reference
        self.context: tuple = ()  # what encode gets after the output: (context,) when decode returned WithContext


class Settler(Interface):
    """Who admitted a request: it takes more places for it, and settles it once answered (runtime/http/admission.py's
    Admission, or in a decoder process the front that admitted it)."""

    def hold_places(self, exchange: Exchange, held: int, count: int, unit: str, field: str) -> int: ...

    def release_places(self, exchange: Exchange, places: int) -> None: ...

    def submitted(self, exchange: Exchange) -> None: ...

    def settle(self, exchange: Exchange, answer: Answer, seconds: float) -> bool:
        """Give back what the request holds, count it, drop its body, send `answer`; False when it was answered
        already (admission's backstop answered it: runtime/http/admission.py)."""


class ServiceRoute:
    """Serve `POST /api/<service>` from `pool`, answering through `admission`; `begin_turn_seconds` as StepRunner's
    (None, a decoder's: begin at once; the one-process layout, whose loop also serves HTTP, passes its turn)."""

    def __init__(self, route: str, settings: ServingSettings, pool, admission: Settler, runner_threads: int,
                 relief, videos: VideoWork, input_limits: api.InputLimits, step_costs=StepCost,
                 step_clock=time.perf_counter, begin_turn_seconds: float | None = None):
        self.route = route
        self.settings = settings
        self.pool = pool
        self.admission = admission
        self.loop = None
        self._lock = threading.Lock()  # guards Call.state: each call is answered exactly once
        self.runner = StepRunner(runner_threads, relief, self._begin, self._finish_items, self._failed, step_costs,
                                 step_clock, begin_turn_seconds)
        self.videos = videos
        self.input_limits = input_limits

    @property
    def backlog(self) -> int:
        """Requests and answers waiting for a request thread."""
        return self.runner.backlog

    @property
    def busy(self) -> int:
        """Request and video threads running a step now (one stuck in native code stays busy)."""
        return len(self.runner.busy) + len(self.videos.busy)

    @property
    def loop_relieved(self) -> bool:
        return self.runner.loop_relieved

    def start(self, loop) -> None:
        self.loop = loop
        self.runner.start(loop)
        self.videos.start()

    def stop(self, until: float | None = None) -> None:
        """End the request and video threads, waiting for them until the monotonic time `until` (default 5 s)."""
        until = time.monotonic() + 5 if until is None else until
        self.runner.stop(until)
        self.videos.stop(until)

    # In the event loop's thread.

    def start_call(self, exchange: Exchange, deadline: float, wire: "WireFormat | None" = None,
                   invalid: ServingError | None = None, places: int = 1) -> None:
        """Begin an admitted request holding `places`: answer `invalid` at once if given, else arm its deadline and
        run its first step. `wire` reads and answers it instead of /api/<service>'s format (e.g.
        protocols/v2_route.py)."""
        call = Call(exchange, deadline, wire)
        call.places = places
        if invalid is not None:
            call.deadline = exchange.received_at
            self._answer(call, invalid)
            return
        exchange.timer = self.loop.call_later(max(0.0, deadline - time.monotonic()), self._expire, call)
        exchange.on_gone = lambda: self._end_early(call, _GONE)
        if wire is not None and wire.begins_on_thread:
            self.runner.begin_on_thread(call)
        else:
            self.runner.begin(call, len(exchange.body or b""))

    def lower_deadline(self, call: Call, deadline: float) -> None:
        """Move `call`'s deadline earlier (a wire format's own timeout, read from its body), its timer with it: from
        any thread, before the call is submitted."""
        if deadline >= call.deadline:
            return
        call.deadline = deadline
        self.loop.call_soon_threadsafe(self._rearm, call)

    def _rearm(self, call: Call) -> None:
        exchange = call.exchange
        if call.state == ANSWERED or exchange.timer is None:  # answered meanwhile: its timer went with the answer
            return
        exchange.timer.cancel()
        exchange.timer = self.loop.call_later(max(0.0, call.deadline - time.monotonic()), self._expire, call)

    def _expire(self, call: Call) -> None:
        """The deadline passed: answer 504 now, unless its batch has started."""
        self._end_early(call, None)

    def _end_early(self, call: Call, error: ServingError | None) -> None:
        """End `call` with `error` (None: its deadline passed) unless its batch has started: now if it waits for a
        thread or is being decoded (the decode's input is then dropped), by withdrawing it if it is queued."""
        with self._lock:
            state = call.state
            if state in (WAITING, WORKING):
                call.state = ANSWERED
        if state in (WAITING, WORKING):
            self._answer(call, error or _past_deadline(call, "waiting for a request thread" if state == WAITING
                                                       else "while it was decoded (a video: or waited for a video "
                                                            "thread)"))
        elif state == SUBMITTED and call.item is not None and call.item.worker is not None:
            call.item.worker.withdraw(call.item, error)  # if still queued: answered by finish
        elif state == SUBMITTED and isinstance(call.job, FanOut):  # a v2 request's rows, a video's frames
            call.job.withdraw(error)

    # In a request thread, or in the loop's while the step is cheap.

    def stuck_problem(self) -> str | None:
        """Why a thread of this route is stuck, or None: a request thread in one step (a decode, an encode) or a video
        thread on one video for longer than the service's own timeout (`stuck_step_seconds`), never a caller's
        deadline. A thread stuck in native code without the GIL never comes back; one holding it stops the process."""
        now, limit = time.monotonic(), stuck_step_seconds(self.settings)
        for kind, busy in (("request", self.runner.busy), ("video", self.videos.busy)):
            for _job, began in list(busy.values()):
                if now - began > limit:
                    return (f"a {kind} thread has run one step for {now - began:.1f} s, over the service's timeout of "
                            f"{limit:g} s (stuck in native code?)")
        return None

    def is_answered(self, call: Call) -> bool:
        """Whether `call` has its answer (its deadline passed, its caller left): whoever holds it drops it."""
        return call.state == ANSWERED

    def submitting(self, call: Call) -> bool:
        """Mark `call` as handed to the batcher, unless it was answered meanwhile (its deadline passed or its caller
        left while it was decoded): then its input must be dropped. Call right before submitting."""
        with self._lock:
            if call.state != WORKING:
                return False
            call.state = SUBMITTED  # before the batch thread can possibly answer it
        self.admission.submitted(call.exchange)
        return True

    def keep_ids(self, call: Call, payload: Payload) -> None:
        """Keep only `payload`'s ids on `call` for its answer, unless it was answered (payload released) meanwhile."""
        ids = payload.ids_only()
        with self._lock:
            if call.state != ANSWERED:
                call.payload = ids

    def work_done(self, items: list[WorkItem]) -> None:
        """From the batch thread: the loop or a request thread finishes `items`."""
        self.runner.finish(items)

    def hold_places(self, call: Call, count: int, unit: str, field: str) -> bool:
        """The second admission step of a request that became `count` inputs (an N-row tensor, a video's frames, or
        the frames its header claims): hold `count` places from now on (at least one; fewer than it holds gives the
        rest back), or ServingError (400 when it could never fit, naming `field`; 503 when the pod is too full now).
        False when `call` was answered meanwhile (its deadline, its caller gone): it holds nothing, and is dropped."""
        if call.state == ANSWERED:
            return False
        held = call.places
        places = self.admission.hold_places(call.exchange, held, count, unit, field)
        with self._lock:
            if call.state != ANSWERED:
                call.places = places
                return True
        # Answered meanwhile: its answer gave back `held`, not what this took beyond them.
        self.admission.release_places(call.exchange, places - held)
        return False

    def _begin(self, call: Call) -> None:
        with self._lock:
            if call.state != WAITING:
                return
            call.state = WORKING
        if time.monotonic() >= call.deadline:
            self.answer(call, _past_deadline(call, "waiting for a request thread"))
            return
        exchange = call.exchange
        if exchange.abandoned:
            self.answer(call, _GONE)
            return
        try:
            if exchange.oversize:
                if api.body_kind(exchange.headers.get("content-type")) == api.RAW_VIDEO:
                    raise errors.PayloadTooLarge(f"the video is over the limit of {self.settings.max_video_bytes} "
                                                 f"bytes (max_video_bytes); send a shorter or smaller video",
                                                 field="body")
                raise errors.PayloadTooLarge(f"the body is over the limit of {self.settings.max_body_bytes} bytes; "
                                             f"send a smaller image", field="body")
            if call.wire is not None:
                call.wire.begin(self, call)
                return
            handler = self.pool.codec_handler()
            self.pool.ensure_room()
            with self.pool.decoding() as incoming:
                payload = call.payload = api.parse_request(exchange.headers.get("content-type"), exchange.body,
                                                           api.QueryArgs(exchange.query), self.input_limits)
                if payload.video is not None:  # decoded on a video thread, not this one
                    self.videos.begin(self, call, handler)
                    return
                model_input = call_verb(handler.decode, payload)
                self.keep_ids(call, payload)  # the body's tree and bytes go now, not with the answer
                if type(model_input) is WithContext:  # the context stays here; only the input is batched
                    model_input, call.context = model_input.input, (model_input.context,)
                if not self.submitting(call):
                    return
                call.item = self.pool.submit(model_input, batch_key_of(handler, model_input), call.deadline, incoming,
                                             on_done=self.work_done, context=call)
        except ServingError as exc:
            self.answer(call, exc)

    def _finish_items(self, items: list[WorkItem]) -> None:
        for item in items:
            self._finish(item)

    def _finish(self, item: WorkItem) -> None:
        call: Call = item.context
        if call.wire is not None:
            call.wire.finish(self, call, item)
            return
        if item.error is not None:
            self.answer(call, item.error, item)
            return
        video = call.job
        if video is not None and not video.add(item):  # a video's frame: answered once its last frame is in
            return
        if call.exchange.abandoned:
            self.answer(call, _GONE, item)
            return
        handler = self.pool.codec_handler_of(item)
        try:
            if video is not None:
                results = call_verb(handler.encode_video, video.frame_outputs())
            else:
                results = call_verb(handler.encode, item.output, *call.context)
            try:
                body = _RESULTS_JSON.encode(api.success_body(call.payload, results)).encode()
            except (TypeError, ValueError) as exc:
                raise HandlerFailed(f"{type(handler).__name__}.encode returned something JSON cannot hold ({exc}); "
                                    f"return lists, numbers, strings, dicts") from None
        except ServingError as exc:
            self.answer(call, exc, item)
            return
        self.answer(call, Answer(200, body, JSON_TYPE), item)

    def _failed(self, job: Any, exc: Exception) -> None:
        log.exception("unexpected error serving %s", self.route, exc_info=exc, extra=RUNTIME_FAULT)
        error = ServingError(f"internal error: {type(exc).__name__}; see the server log")
        for call in [job] if type(job) is Call else [item.context for item in job]:
            self.answer(call, error)

    # Answering (any thread).

    def answer(self, call: Call, outcome: Answer | ServingError, item: WorkItem | None = None) -> None:
        """Answer `call` with `outcome` unless it is answered already (each call is answered exactly once)."""
        with self._lock:
            if call.state == ANSWERED:
                return
            call.state = ANSWERED
        self._answer(call, outcome, item)

    def _answer(self, call: Call, outcome: Answer | ServingError, item: WorkItem | None = None) -> None:
        failure = None
        if isinstance(outcome, ServingError):
            failure = outcome.message
            answer = call.wire.error_answer(outcome) if call.wire else error_answer(outcome, call.payload)
        else:
            answer = outcome
        exchange = call.exchange
        seconds = time.monotonic() - exchange.received_at
        settled = self.admission.settle(exchange, answer, seconds)
        call.item = None  # no cycles left for the garbage collector: memory stays flat
        if isinstance(call.job, FanOut):
            call.job.release()
        if item is not None:
            item.context = item.input = item.output = None
        payload, call.payload, call.context = call.payload, None, ()  # released with its answer
        if not settled:  # answered already, by admission's backstop (which logged it)
            return
        log_request({"route": self.route, "status": answer.status, **api.ids_of(payload),
                     "total_ms": round(seconds * 1000, 2),
                     "deadline_ms": round(max(0.0, call.deadline - exchange.received_at) * 1000),
                     "queue_ms": round(item.queue_seconds * 1000, 2) if item else None,
                     "infer_ms": round(item.inference_seconds * 1000, 2) if item else None,
                     "batch": item.batch_size if item else None,
                     "instance": item.worker.name if item and item.worker else None,
                     "error": failure})


class WireFormat:
    """Another wire format served on this route's lane (admission, deadlines, request threads, batcher)."""

    #: Whether its first step always runs on a request thread (it may wait, e.g. for places from another process).
    begins_on_thread = False

    def begin(self, route: ServiceRoute, call: Call) -> None:
        """Read `call`'s request and submit its work (raise ServingError to refuse it)."""
        raise NotImplementedError

    def finish(self, route: ServiceRoute, call: Call, item: WorkItem) -> None:
        """One of `call`'s work items is done; answer once every one is."""
        raise NotImplementedError

    def error_answer(self, error: ServingError) -> Answer:
        raise NotImplementedError


def error_answer(error: ServingError, payload: Payload | None = None, close: bool = False) -> Answer:
    """The JSON answer every error gets (runtime/protocols/api.py's error body), with the error's own headers.

    Headers a handler gave its error are checked here: one that cannot be sent (CR or LF in it, not latin-1)
    turns the answer into a 500 naming it, never a split or lost response."""
    for name, value in error.headers.items():
        problem = header_problem(name, value)
        if problem:
            log.error("%s raised with a header that cannot be sent: %s", type(error).__name__, problem)
            error = HandlerFailed(f"the handler's error carried a header that cannot be sent ({problem}); "
                                  f"it was: {error.message}")
            break
    return Answer(error.status, json.dumps(api.error_body(error, payload)).encode(),
                  JSON_TYPE + list(error.headers.items()), close)


_GONE = ClientGone("the caller hung up before its request ran; it was not run")


def stuck_step_seconds(settings: ServingSettings) -> float:
    """How long one step (a decode, an encode, a video's decoding) may run before its thread counts as stuck: the
    service's own timeout (`request_timeout_ms`; for a video the longer of it and `video_decode_timeout_seconds`),
    whatever deadline a caller's headers asked for."""
    return max(settings.request_timeout_ms / 1000.0, settings.video_decode_timeout_seconds)


def _past_deadline(call: Call, where: str) -> DeadlineExceeded:
    waited = time.monotonic() - call.exchange.received_at
    return DeadlineExceeded(f"the request's deadline passed after {waited * 1000:.1f} ms {where}; it was not run")
