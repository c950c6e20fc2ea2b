"""Videos on `/api/<service>`: decoded on their own bounded threads, then fanned out as frames through the batcher.

A request whose payload is a video leaves the request thread at once (`http_threads` is 1 by
default, and image requests need it): one of the pod's video threads decodes it with PyAV
(podserve/videos.py: limits, sampling at `video_fps`, rotation), calls the handler's
`decode_frame` on each sampled frame, takes a place per frame against the pod's limit (the
second admission step, `ServiceRoute.hold_places`) and submits the frames to the batcher, where
they share batches with every other request's inputs (runtime/fanout.py). When the last frame's
output is in, a request thread hands them, in order, to the handler's `encode_video` and answers
(ServiceRoute._finish). A video is decoded whole before its frames are submitted, so its places
are known exactly and a refused video costs the batcher nothing.
"""

from __future__ import annotations

import logging
import queue
import threading
import time

from podserve.errors import ClientGone, DeadlineExceeded, HandlerFailed, InvalidInput, ServingError
from podserve.handler import FrameOutput, Handler, WithContext
from podserve.runtime.devices import cpu_share
from podserve.runtime.fanout import FanOut
from podserve.runtime.verbs import call_verb
from podserve.settings import ServingSettings

log = logging.getLogger(__name__)


def video_threads(settings: ServingSettings) -> tuple[int, int]:
    """(videos decoded at once, FFmpeg's threads for each), from the pod's CPU share: a video thread per two cores,
    each video's decoder using the cores of its share (on 2 cores: one video at a time on 2 threads)."""
    cores = max(1, int(cpu_share(settings)))
    workers = max(1, cores // 2)
    return workers, max(1, cores // workers)


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

    @property
    def backlog(self) -> int:
        return self._work.qsize()

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        for _ in self._threads:
            self._work.put(None)
        for thread in self._threads:
            thread.join(timeout=5)

    def begin(self, route, call, handler: Handler) -> None:
        """In a request thread: refuse a video the handler cannot read, else queue it for a video thread."""
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
            try:
                self._decode(route, call, handler)
            except Exception as exc:  # never lose a request to a bug here: answer it
                log.exception("unexpected error decoding a video on %s", route.route)
                route.answer(call, ServingError(f"internal error: {type(exc).__name__}; see the server log"))

    def _decode(self, route, call, handler: Handler) -> None:
        inputs, frames = [], []
        try:
            for frame in call.payload.open_video():
                if time.monotonic() >= call.deadline:
                    raise DeadlineExceeded(f"the request's deadline passed while its video was decoded (at "
                                           f"{frame.timestamp:.1f} s); it was not run")
                if call.exchange.abandoned:
                    raise ClientGone("the caller hung up while its video was decoded; it was not run")
                model_input = call_verb(handler.decode_frame, frame)
                if type(model_input) is WithContext:
                    raise HandlerFailed(f"{type(handler).__name__}.decode_frame returned WithContext; a frame's "
                                        f"context is its index and timestamp, which encode_video gets")
                inputs.append(model_input)
                frames.append((frame.index, frame.timestamp))
            call.payload = call.payload.ids_only()  # the video's bytes go now, not with the answer
            route.hold_places(call, len(inputs), "sampled frames", "video")  # the second admission step
            route.pool.ensure_room()
            job = VideoJob(frames)
            call.job = job
            if not route.submitting(call):  # answered meanwhile (its deadline, its caller gone): nothing to run
                return
            job.submit(route.pool, inputs, [handler.batch_key(i) for i in inputs], call.deadline, route.work_done,
                       call)
        except ServingError as exc:
            route.answer(call, exc)
