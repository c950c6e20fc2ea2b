"""Videos on `/api/<service>`: decoded on their own bounded threads, then fanned out as frames through the batcher.

A request whose payload is a video leaves the request thread at once (`http_threads` is 1 by
default, and image requests need it) for one of the pod's video threads. There PyAV opens it
and checks its header (podserve/videos.py: limits, sampling at `video_fps`, rotation), and the
request takes a place for each sampled frame its header claims (`max_video_frames` when it
claims none) against the pod's limit before any frame is decoded (the second admission step,
`ServiceRoute.hold_places`): a pod too full for it answers 503 without decoding it. Then each
sampled frame is decoded, scaled by FFmpeg to the handler's `video_frame_size`, and handed to
the handler's `decode_frame`; a stream holding more frames than its header claims takes a place
for each one past the claim as it comes (503 when the pod has none left), and one holding fewer
gives the rest back before its frames are submitted to the batcher, where they share batches
with every other request's inputs (runtime/batching/fanout.py). When the last frame's output is in, a
request thread hands them, in order, to the handler's `encode_video` and answers
(ServiceRoute._finish). A video is decoded whole before its frames are submitted, so a video
refused mid-way costs the batcher nothing.

While the video waits for a video thread or is decoded there, its deadline timer answers it 504
at its deadline (and its caller leaving frees it at once); the video thread then drops it, at the
latest after the frame it is decoding, and submits none of its frames.
"""

from __future__ import annotations

import logging
import queue
import threading
import time

from podserve.errors import ClientGone, DeadlineExceeded, HandlerFailed, InvalidInput, ServingError
from podserve.handler import FrameOutput, Handler, WithContext
from podserve.runtime.batching.fanout import FanOut
from podserve.runtime.core.devices import cpu_share
from podserve.runtime.core.lifecycle import join_by
from podserve.runtime.core.logs import RUNTIME_FAULT
from podserve.runtime.core.verbs import batch_key_of, call_verb
from podserve.settings import ServingSettings
from podserve.videos import open_stream

log = logging.getLogger(__name__)


def video_threads(settings: ServingSettings) -> tuple[int, int]:
    """(videos decoded at once, FFmpeg's threads for each), from the pod's CPU share (ServingSettings.video_threads,
    which the memory plan counts too)."""
    return settings.video_threads(cpu_share(settings))


class VideoJob(FanOut):
    """A video's sampled frames on their way through the batcher: their outputs, and each frame's index and time."""

    __slots__ = ("frames",)

    def __init__(self, frames: list[tuple[int, float]]):
        super().__init__(len(frames))
        self.frames = frames

    def frame_outputs(self) -> list[FrameOutput]:
        return [FrameOutput(index, timestamp, output) for (index, timestamp), output in zip(self.frames, self.outputs)]


class VideoWork:
    """The pod's video threads: each decodes one video at a time and submits its frames."""

    def __init__(self, workers: int):
        self._work: queue.SimpleQueue = queue.SimpleQueue()
        self._threads = [threading.Thread(target=self._serve, name=f"video-{i}", daemon=True) for i in range(workers)]
        self.busy: dict[int, tuple[object, float]] = {}  # video thread -> (the call whose video it decodes, since)

    @property
    def backlog(self) -> int:
        return self._work.qsize()

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def stop(self, until: float | None = None) -> None:
        for _ in self._threads:
            self._work.put(None)
        join_by(self._threads, time.monotonic() + 5 if until is None else until)

    def begin(self, route, call, handler: Handler) -> None:
        """In a request thread: refuse a video the handler cannot read, else queue it for a video thread (its deadline
        answers it there, as it answers any request not yet submitted: runtime/protocols/service_route.py)."""
        if not handler.reads_video():
            raise InvalidInput(f"this service ({type(handler).__name__}) does not read videos; send 'image' or "
                               f"'data'", field="video")
        self._work.put((route, call, handler))

    def _serve(self) -> None:
        while True:
            job = self._work.get()
            if job is None:
                return
            route, call, handler = job
            self.busy[threading.get_ident()] = call, time.monotonic()
            try:
                self._decode(route, call, handler)
            except Exception as exc:  # never lose a request to a bug here: answer it
                log.exception("unexpected error decoding a video on %s", route.route, extra=RUNTIME_FAULT)
                route.answer(call, ServingError(f"internal error: {type(exc).__name__}; see the server log"))
            finally:
                del self.busy[threading.get_ident()]

    def _decode(self, route, call, handler: Handler) -> None:
        """Reserve the places the video's header claims, decode it, and submit its frames: unless it is answered
        meanwhile (its deadline passed, its caller left), which drops it here."""
        payload = call.payload
        if payload is None or route.is_answered(call):  # answered while it waited for this thread
            return
        inputs, frames = [], []
        try:
            with open_stream(payload.video, payload.video_limits) as video:
                if not route.hold_places(call, video.claimed_frames, "sampled frames", "video"):
                    return
                for frame in video.frames(size=handler.video_frame_size):
                    if route.is_answered(call):
                        return
                    if time.monotonic() >= call.deadline:  # its timer answers it; this is for a late timer
                        raise _deadline_passed(f"while its video was decoded (at {frame.timestamp:.1f} s)")
                    if call.exchange.abandoned:
                        raise ClientGone("the caller hung up while its video was decoded; it was not run")
                    if frame.index >= call.places and not route.hold_places(  # more frames than its header claims
                            call, frame.index + 1, "sampled frames", "video"):
                        return
                    model_input = call_verb(handler.decode_frame, frame)
                    if type(model_input) is WithContext:
                        raise HandlerFailed(f"{type(handler).__name__}.decode_frame returned WithContext; a frame's "
                                            f"context is its index and timestamp, which encode_video gets")
                    inputs.append(model_input)
                    frames.append((frame.index, frame.timestamp))
            if not route.hold_places(call, len(inputs), "sampled frames", "video"):  # gives back what it did not use
                return
            route.keep_ids(call, payload)  # the video's bytes go now, not with the answer
            route.pool.ensure_room()
            job = call.job = VideoJob(frames)
            if not route.submitting(call):  # answered meanwhile (its deadline, its caller gone): nothing to run
                return
            job.submit(route.pool, inputs, [batch_key_of(handler, i) for i in inputs], call.deadline, route.work_done,
                       call)
        except ServingError as exc:
            route.answer(call, exc)


def _deadline_passed(when: str) -> DeadlineExceeded:
    return DeadlineExceeded(f"the request's deadline passed {when}; it was not run")
