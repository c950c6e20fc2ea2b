"""`POST /api/<service>`: admission at the door, deadlines, and the request threads that decode and answer.

A request read by the HTTP server (runtime/httpserver.py) comes here in the event loop's
thread. It is refused at once (503, Retry-After) when the pod already holds as many requests
as it may (`queue_size` per instance); otherwise it is counted, its deadline is armed, and it
is begun.

Its `begin` parses the body, runs the handler's `decode` and queues the input for a batch;
it does not wait for the batch. When the batch is done, the batch thread hands the item back,
and `finish` runs `encode` and answers. Each step runs in the loop itself while it is measured
cheap (runtime/inline_policy.py), and otherwise on a request thread: a slow `decode` never
holds the loop, and a fast one costs no thread hand-off. So a handful of threads serve any
number of requests in flight, whatever the batching does.

A request's deadline counts from when its first bytes were read. If it passes while the
request waits for a request thread or in its instance's queue, or while its video waits for a
video thread or is decoded there, the loop answers 504 at that moment and the request is never
run; a batch that has started is never abandoned.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
from typing import Any
from urllib.parse import parse_qsl

from podserve import errors
from podserve.errors import ClientGone, DeadlineExceeded, HandlerFailed, InvalidInput, Overloaded, ServingError
from podserve.handler import Payload, WithContext
from podserve.runtime import api
from podserve.runtime.batcher import WorkItem
from podserve.runtime.devices import cpu_share
from podserve.runtime.fanout import FanOut
from podserve.runtime.httpserver import JSON_TYPE, Answer, Exchange, header_problem
from podserve.runtime.inline_policy import INLINE_BODY_BYTES, LoopRelief, StepCost
from podserve.runtime.lifecycle import Lifecycle
from podserve.runtime.logs import log_request
from podserve.runtime.metrics import Metrics
from podserve.runtime.pool import InstancePool
from podserve.runtime.refusals import RefusalCost, RefusalPacer
from podserve.runtime.verbs import call_verb
from podserve.runtime.video_route import VideoWork, video_threads
from podserve.settings import ServingSettings

log = logging.getLogger(__name__)

#: Headers by which a caller (or Envoy, from the route's timeout) may shorten the deadline.
DEADLINE_HEADERS = ("X-Request-Timeout-Ms", "X-Envoy-Expected-Rq-Timeout-Ms")
_DEADLINE_KEYS = [(header, header.lower()) for header in DEADLINE_HEADERS]
_RESULTS_JSON = json.JSONEncoder(allow_nan=False)  # one encoder for every answer: NaN is the handler's bug

WAITING, WORKING, SUBMITTED, ANSWERED, DECODING_VIDEO = range(5)
#: States in which the deadline timer (or the caller leaving) answers a call at once: one that waits for a request
#: thread, and a video that waits for a video thread or is being decoded there (which then drops it).
_ENDS_EARLY = (WAITING, DECODING_VIDEO)


class Call:
    """One service request between the door and its answer."""

    __slots__ = ("exchange", "deadline", "state", "item", "payload", "context", "protocol", "job", "places")

    def __init__(self, exchange: Exchange, deadline: float, protocol: "Protocol | None" = None):
        self.exchange = exchange
        self.protocol = protocol  # None: /api/<service>'s own wire format (runtime/api.py)
        self.job: Any = None  # the protocol's own state
        self.places = 1  # places the request holds against the pod's limit (a v2 request: its batch's rows)
        self.deadline = deadline
        self.state = WAITING
        self.item: WorkItem | None = None
        self.payload: Payload | None = None
        self.context: tuple = ()  # what encode gets after the output: (context,) when decode returned WithContext


class ServiceRoute:
    """Serve `POST /api/<service>` from `pool` on `threads` request threads."""

    def __init__(self, route: str, settings: ServingSettings, pool: InstancePool, lifecycle: Lifecycle,
                 metrics: Metrics):
        self.route = route
        self.settings = settings
        self.pool = pool
        self.lifecycle = lifecycle
        self.metrics = metrics
        self.loop = None
        self._refusals: RefusalPacer | None = None
        self._admitted = 0  # requests admitted at the door so far (event loop only)
        self._steps_cpu = 0.0  # CPU seconds of the handler's steps the loop ran itself: not the door's HTTP work
        self._work: queue.SimpleQueue = queue.SimpleQueue()  # a Call to begin, [WorkItem] to answer, None to stop
        self._lock = threading.Lock()  # guards Call.state: each call is answered exactly once
        self._begin_cost, self._finish_cost = StepCost(), StepCost()
        self._relief = LoopRelief(cpu_share(settings), lambda: lifecycle.in_flight, pool.lanes_take)
        self._threads = [threading.Thread(target=self._serve, name=f"request-{i}", daemon=True)
                         for i in range(request_threads(settings))]
        workers, ffmpeg_threads = video_threads(settings)
        self.videos = VideoWork(workers)
        self.input_limits = api.InputLimits.from_settings(settings, pool.holding_limit(), ffmpeg_threads)
        self._refusal = error_answer(Overloaded(
            f"this pod is full: it already holds {pool.holding_limit()} requests (queue_size per instance); retry "
            f"shortly, or elsewhere"))

    @property
    def backlog(self) -> int:
        """Requests and answers waiting for a request thread."""
        return self._work.qsize()

    @property
    def loop_relieved(self) -> bool:
        """Whether the event loop now hands even cheap steps to the request threads (inline_policy.LoopRelief)."""
        return self._relief.wanted

    @property
    def refusals_held(self) -> int:
        """503s decided and held back by the pacing (runtime/refusals.py)."""
        return self._refusals.held if self._refusals is not None else 0

    @property
    def refusal_rate(self) -> float:
        """Refusals per second the door now sends at once: a share of a core over what one costs (runtime/refusals.py)."""
        return self._refusals.rate if self._refusals is not None else 0.0

    def start(self, loop) -> None:
        self.loop = loop
        self._refusals = RefusalPacer(loop, cost=RefusalCost(lambda: self._admitted, lambda: self._steps_cpu))
        self._refusals.start()
        self._relief.start(loop)
        for thread in self._threads:
            thread.start()
        self.videos.start()

    def stop(self) -> None:
        self._relief.stop()
        if self._refusals is not None:
            self._refusals.stop()
        for _ in self._threads:
            self._work.put(None)
        for thread in self._threads:
            thread.join(timeout=5)
        self.videos.stop()

    # In the event loop's thread.

    def admit_head(self, exchange: Exchange) -> bool:
        """At a request's headers: refuse it now when the pod is full (503, paced), before its body is read."""
        if self.lifecycle.in_flight < self.pool.holding_limit():
            return True
        self.metrics.observe_request(self.route, Overloaded.status, 0.0)
        self._refusals.refuse(exchange, self._refusal, self.budget_seconds(exchange.headers))
        return False

    def budget_seconds(self, headers: dict[str, str]) -> float:
        """The request's time budget from its headers (the default when they are unreadable: accept says why), and
        the time a large body (a video) may take to arrive (`upload_seconds`)."""
        try:
            budget = _timeout_seconds(headers, self.settings.request_timeout_ms)
        except InvalidInput:
            budget = self.settings.request_timeout_ms / 1000.0
        raw = headers.get("content-length") or ""
        return budget + self.upload_seconds(int(raw) if raw.isdigit() else 0)

    def upload_seconds(self, length: int) -> float:
        """The upload-rate rule: a body of `length` bytes over max_body_bytes (only a video may be) gets its length
        at the platform's min_upload_bytes_per_second on top of the request's deadline, so a large upload on a slow
        link is not cut by the deadline an image needs. A chunked body's length is known only as it arrives: the
        front end extends its body deadline by the same rule chunk by chunk (HttpLimits.min_upload_bytes_per_second),
        never by the largest video's up front, which would let a chunk flood hold the pod's body budget for minutes."""
        if length <= self.settings.max_body_bytes:
            return 0.0
        return length / self.settings.min_upload_bytes_per_second

    def body_limit(self, exchange: Exchange) -> int:
        """The largest body of a request to this route: a raw video's max_video_bytes; a JSON body as large as a
        base64 video's (an image's or data's is held to max_body_bytes once read); anything else max_body_bytes."""
        kind = api.body_kind(exchange.headers.get("content-type"))
        if kind == api.RAW_VIDEO:
            return self.settings.max_video_bytes
        if kind == api.JSON:
            return self.settings.largest_body_bytes()
        return self.settings.max_body_bytes

    def accept(self, exchange: Exchange, protocol: "Protocol | None" = None) -> None:
        """Refuse when full (503, paced: runtime/refusals.py); otherwise count the request, arm its deadline and
        queue it. `protocol` reads and answers it instead of /api/<service>'s wire format (e.g. runtime/v2_route)."""
        try:
            budget, invalid = _timeout_seconds(exchange.headers, self.settings.request_timeout_ms), None
            budget += self.upload_seconds(len(exchange.body or b""))
        except InvalidInput as exc:
            budget, invalid = self.settings.request_timeout_ms / 1000.0, exc
        if self.lifecycle.in_flight >= self.pool.holding_limit():
            self.metrics.observe_request(self.route, Overloaded.status, 0.0)
            self._refusals.refuse(exchange, self._refusal, budget)
            return
        self.lifecycle.request_started()
        self._admitted += 1
        if invalid is not None:
            self._answer(Call(exchange, 0.0, protocol), invalid)
            return
        call = Call(exchange, exchange.received_at + budget, protocol)
        exchange.timer = self.loop.call_later(max(0.0, call.deadline - time.monotonic()), self._expire, call)
        exchange.on_gone = lambda: self._end_early(call, _GONE, _GONE)
        if self._begin_cost.cheap and len(exchange.body or b"") <= INLINE_BODY_BYTES and not self._relief.wanted:
            self._run_in_loop(call)
        else:
            self._work.put(call)

    def lower_deadline(self, call: Call, deadline: float) -> None:
        """Move `call`'s deadline earlier (a protocol's own timeout, read from its body), its timer with it: from any
        thread, before the call is submitted."""
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
        """The deadline passed: answer 504 now unless the request is being decoded on a request thread or its batch
        has started."""
        self._end_early(call, _waited_past_deadline(call), queued_error=None)

    def _end_early(self, call: Call, error: ServingError, queued_error: ServingError | None) -> None:
        """End `call` with `error` if it has not started or its video is with a video thread (which drops it), or with
        `queued_error` (None: the batcher's deadline error) if it waits in its instance's queue. One being decoded on
        a request thread, or whose batch has started, runs to its end."""
        with self._lock:
            state = call.state
            if state in _ENDS_EARLY:
                call.state = ANSWERED
        if state in _ENDS_EARLY:
            self._answer(call, error)
        elif state == SUBMITTED and call.item is not None and call.item.worker is not None:
            call.item.worker.withdraw(call.item, queued_error)  # if still queued: answered by finish
        elif state == SUBMITTED and isinstance(call.job, FanOut):  # a v2 request's rows, a video's frames
            call.job.withdraw(queued_error)

    # In a request thread, or in the loop's while the step is cheap.

    def _serve(self) -> None:
        work = self._work
        while True:
            job = work.get()
            if job is None:
                return
            self._run(job)

    def _run_in_loop(self, job: "Call | list[WorkItem]") -> None:
        """`_run` in the event loop's thread, its CPU counted apart from the loop's HTTP work (runtime/refusals.py)."""
        cpu = time.thread_time()
        self._run(job)
        self._steps_cpu += time.thread_time() - cpu

    def _run(self, job: "Call | list[WorkItem]") -> None:
        """Begin a call or finish a batch's items, timing the step; never raise."""
        begins = type(job) is Call
        began = time.perf_counter()
        try:
            if begins:
                self._begin(job)
            else:
                for item in job:
                    self._finish(item)
        except Exception as exc:  # never lose a request to a bug here: answer it
            log.exception("unexpected error serving %s", self.route)
            error = ServingError(f"internal error: {type(exc).__name__}; see the server log")
            for call in [job] if begins else [item.context for item in job]:
                self._answer_once(call, error)
        seconds = time.perf_counter() - began
        if begins:
            self._begin_cost.observe(seconds)
        else:
            self._finish_cost.observe(seconds / len(job))

    def _begin(self, call: Call) -> None:
        with self._lock:
            if call.state != WAITING:
                return
            call.state = WORKING
        if time.monotonic() >= call.deadline:
            self._answer_once(call, _waited_past_deadline(call))
            return
        exchange = call.exchange
        if exchange.abandoned:
            self._answer_once(call, _GONE)
            return
        try:
            if exchange.oversize:
                if api.body_kind(exchange.headers.get("content-type")) == api.RAW_VIDEO:
                    raise errors.PayloadTooLarge(f"the video is over the limit of {self.settings.max_video_bytes} "
                                                 f"bytes (max_video_bytes); send a shorter or smaller video",
                                                 field="body")
                raise errors.PayloadTooLarge(f"the body is over the limit of {self.settings.max_body_bytes} bytes; "
                                             f"send a smaller image", field="body")
            if call.protocol is not None:
                call.protocol.begin(self, call)
                return
            handler = self.pool.decoder()
            self.pool.ensure_room()
            with self.pool.admit() as incoming:
                call.payload = api.parse_request(exchange.headers.get("content-type"), exchange.body,
                                                 QueryArgs(exchange.query), self.input_limits)
                if call.payload.video is not None:  # decoded on a video thread, not this one
                    self.videos.begin(self, call, handler)
                    return
                model_input = call_verb(handler.decode, call.payload)
                if type(model_input) is WithContext:  # the context stays here; only the input is batched
                    model_input, call.context = model_input.input, (model_input.context,)
                call.state = SUBMITTED  # before the batch thread can possibly answer it
                call.item = self.pool.submit(model_input, handler.batch_key(model_input), call.deadline, incoming,
                                             on_done=self._work_done, context=call)
        except ServingError as exc:
            self._answer_once(call, exc)

    def hold_places(self, call: Call, count: int, unit: str, field: str) -> bool:
        """The second admission step of a request that became `count` inputs (an N-row tensor, a video's frames, or
        the frames its header claims): hold `count` places against the pod's limit from now on (at least one: fewer
        than it holds gives the rest back), or refuse it (400 when it could never fit, naming `field`; 503 when the
        pod is too full now). False when `call` was answered meanwhile (its deadline, its caller gone): it holds
        nothing any more, and its holder drops it."""
        limit = self.pool.holding_limit()
        if count > limit:
            raise InvalidInput(f"{count} {unit} are more than this pod holds at once ({limit}: queue_size per "
                               f"instance); send at most {limit} {unit} a request", field=field)
        with self._lock:  # the answer gives back `call.places` once it is ANSWERED: never change them after
            if call.state == ANSWERED:
                return False
            extra = max(1, count) - call.places
            if extra > 0 and self.lifecycle.in_flight + extra > limit:
                raise Overloaded(f"this pod cannot hold {count} {unit} now ({self.lifecycle.in_flight} of "
                                 f"{limit} places taken, {call.places} of them by this request); retry shortly, "
                                 f"or send fewer {unit}")
            if extra > 0:
                self.lifecycle.request_started(extra)
            elif extra < 0:
                self.lifecycle.request_finished(-extra)
            call.places += extra
        return True

    def step(self, call: Call, state: int) -> bool:
        """Move `call` on to `state` (from any thread), unless it was answered meanwhile: then False, and whoever
        holds it drops it."""
        with self._lock:
            if call.state == ANSWERED:
                return False
            call.state = state
        return True

    def _work_done(self, items: list[WorkItem]) -> None:
        """From the batch thread: the loop or a request thread answers `items`."""
        if self._finish_cost.cheap and not self._relief.wanted:
            try:
                self.loop.call_soon_threadsafe(self._run_in_loop, items)
                return
            except RuntimeError:  # the loop has closed (a shutdown past its finish timeout)
                pass
        self._work.put(items)

    def _finish(self, item: WorkItem) -> None:
        call: Call = item.context
        if call.protocol is not None:
            call.protocol.finish(self, call, item)
            return
        if item.error is not None:
            self._answer_once(call, item.error, item)
            return
        video = call.job
        if video is not None and not video.add(item):  # a video's frame: answered once its last frame is in
            return
        if call.exchange.abandoned:
            self._answer_once(call, _GONE, item)
            return
        try:
            if video is not None:
                results = call_verb(item.worker.handler.encode_video, video.frame_outputs())
            else:
                results = call_verb(item.worker.handler.encode, item.output, *call.context)
            try:
                body = _RESULTS_JSON.encode(api.success_body(call.payload, results)).encode()
            except (TypeError, ValueError) as exc:
                raise HandlerFailed(f"{type(item.worker.handler).__name__}.encode returned something JSON cannot "
                                    f"hold ({exc}); return lists, numbers, strings, dicts") from None
        except ServingError as exc:
            self._answer_once(call, exc, item)
            return
        self._answer_once(call, Answer(200, body, JSON_TYPE), item)

    # Answering (any thread).

    def _answer_once(self, call: Call, outcome: Answer | ServingError, item: WorkItem | None = None) -> None:
        with self._lock:
            if call.state == ANSWERED:
                return
            call.state = ANSWERED
        self._answer(call, outcome, item)

    def _answer(self, call: Call, outcome: Answer | ServingError, item: WorkItem | None = None) -> None:
        failure = None
        if isinstance(outcome, ServingError):
            failure = outcome.message
            answer = call.protocol.error_answer(outcome) if call.protocol else error_answer(outcome, call.payload)
        else:
            answer = outcome
        exchange = call.exchange
        # Not held any more, and counted, before the answer can reach the caller: its next request must find the
        # room free, and /metrics read once it has its answer counts it.
        self.lifecycle.request_finished(call.places)
        seconds = time.monotonic() - exchange.received_at
        self.metrics.observe_request(self.route, answer.status, seconds)
        exchange.answer(answer)
        call.item = None  # no cycles left for the garbage collector: memory stays flat
        if isinstance(call.job, FanOut):
            call.job.release()
        call.context = ()
        if item is not None:
            item.context = item.input = item.output = None
        payload, call.payload, call.context = call.payload, None, ()  # released with its answer
        log_request({"route": self.route, "status": answer.status, **api.ids_of(payload),
                     "total_ms": round(seconds * 1000, 2),
                     "deadline_ms": round(max(0.0, call.deadline - exchange.received_at) * 1000),
                     "queue_ms": round(item.queue_seconds * 1000, 2) if item else None,
                     "infer_ms": round(item.inference_seconds * 1000, 2) if item else None,
                     "batch": item.batch_size if item else None,
                     "instance": item.worker.name if item and item.worker else None,
                     "error": failure})


class Protocol:
    """Another wire format served on this route's lane (admission, deadlines, request threads, batcher)."""

    def begin(self, route: "ServiceRoute", call: Call) -> None:
        """In a request thread: read `call`'s request and submit its work (raise ServingError to refuse it)."""
        raise NotImplementedError

    def finish(self, route: "ServiceRoute", call: Call, item: WorkItem) -> None:
        """In a request thread: one of `call`'s work items is done; answer once every one is."""
        raise NotImplementedError

    def error_answer(self, error: ServingError) -> Answer:
        raise NotImplementedError


def error_answer(error: ServingError, payload: Payload | None = None, close: bool = False) -> Answer:
    """The JSON answer every error gets (runtime/api.py's error body), with the error's own headers.

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


def _waited_past_deadline(call: Call) -> DeadlineExceeded:
    waited = time.monotonic() - call.exchange.received_at
    where = ("while its video waited for a video thread or was decoded" if call.state == DECODING_VIDEO
             else "waiting for a request thread")
    return DeadlineExceeded(f"the request's deadline passed after {waited * 1000:.1f} ms {where}; it was not run")


def request_threads(settings: ServingSettings) -> int:
    """`http_threads`, or when 0 one per CPU core of the pod.

    One is the default: Python code holding the GIL runs one thread at a time anyway, and a
    second request thread contending for it cost throughput, CPU and thread switches at every
    concurrency measured (bench/optimisations.json). More pay only for a `decode` that spends
    its time in code releasing the GIL (large photos, I/O).
    """
    return settings.http_threads or max(1, int(cpu_share(settings)))


class QueryArgs:
    """The query string's parameters (the first value of each), parsed only when one is asked for."""

    def __init__(self, query: str):
        self.query, self._parsed = query, None

    def get(self, name: str, default: Any = None) -> Any:
        if self._parsed is None:
            self._parsed = {}
            for key, value in parse_qsl(self.query, keep_blank_values=True):
                self._parsed.setdefault(key, value)
        return self._parsed.get(name, default)


def _timeout_seconds(headers: dict[str, str], default_ms: float) -> float:
    """Return the request's time budget: the server's default, lowered (never raised) by a header."""
    budget = default_ms
    for header, key in _DEADLINE_KEYS:
        raw = headers.get(key)
        if raw is None:
            continue
        try:
            asked = float(raw)
        except ValueError:
            raise InvalidInput(f"header {header}: {raw!r} is not a number of milliseconds", field=header) from None
        if not asked > 0:
            raise InvalidInput(f"header {header}: {raw!r} must be a positive number of milliseconds", field=header)
        budget = min(budget, asked)
    return budget / 1000.0
