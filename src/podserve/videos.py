"""Decode an untrusted video into frames sampled at a rate, refusing what is over the limits before decoding it.

PyAV (FFmpeg inside its wheel) demuxes and decodes; it releases the GIL while it does.
The header is read first (`open_stream`, which decodes no frame): the container and codec
must be on the allowlists, the resolution within `max_pixels` (FFmpeg is told the same limit,
so a file claiming a huge size is refused before a frame is decoded) and the claimed duration
and sampled frame count within theirs; the count is known then (`VideoStream.claimed_frames`),
for a caller to reserve room before decoding. Frames are then decoded (`VideoStream.frames`),
each scaled by FFmpeg to a size the caller asks for before it becomes RGB. While decoding,
the same limits hold for what the stream actually holds (a stream that claims nothing, or
less than it holds), and so does a per-video decode timeout, checked between packets. A
stream that breaks mid-way, or ends well before the duration it claims (a truncated upload),
is refused with a 400, never answered with the frames decoded so far: a moderation verdict on
half a video would look like one on all of it.
"""

from __future__ import annotations

import io
import math
import time
from dataclasses import dataclass
from typing import Iterator

from PIL import Image

from podserve.errors import InvalidInput

#: Containers a caller may send (FFmpeg's demuxer names), and what to call them in messages.
ACCEPTED_CONTAINERS = {"mov,mp4,m4a,3gp,3g2,mj2": "MP4/MOV", "matroska,webm": "WebM/MKV", "avi": "AVI"}
#: Video codecs a caller may send (FFmpeg's decoder names).
ACCEPTED_CODECS = ("h264", "hevc", "vp8", "vp9", "av1", "mpeg4")
#: A stream may end this much before the duration its header claims before it is called truncated.
TRUNCATION_SLACK_SECONDS = 1.0
#: Streams FFmpeg is told the pixel limit for at open (a file has one video stream; a few more cost nothing).
_STREAM_OPTION_SLOTS = 8


@dataclass(frozen=True)
class VideoLimits:
    """What one video may cost: the sampling rate and every limit (ServingSettings' video fields)."""

    fps: float = 1.0
    max_seconds: float = 60.0
    max_frames: int = 60
    max_pixels: int = 3840 * 2160
    timeout_seconds: float = 10.0
    threads: int = 1  # FFmpeg's decoding threads for one video


@dataclass(frozen=True)
class VideoFrame:
    """One sampled frame: its place among the samples, its time in the video (seconds) and its pixels (PIL, upright)."""

    index: int
    timestamp: float
    image: Image.Image


def decode_video(data: bytes, limits: VideoLimits, *, mode: str = "RGB", field: str = "video",
                 size: tuple[int, int] | None = None) -> Iterator[VideoFrame]:
    """Yield the frames of `data` sampled at `limits.fps` (the first frame at or after each 1/fps step), upright
    (rotation metadata applied), scaled down to cover `size` (see VideoStream.frames) and in `mode`; raise
    InvalidInput naming `field`, the limit and the fix."""
    with open_stream(data, limits, field) as video:
        yield from video.frames(mode, size)


def open_stream(data: bytes, limits: VideoLimits, field: str = "video") -> "VideoStream":
    """Open `data` and check its header against `limits` (container, codec, resolution, claimed length), decoding
    no frame; raise InvalidInput naming `field`, the limit and the fix. The decode timeout counts from here."""
    import av  # imported here: a service that reads no video never loads FFmpeg

    if not data:
        raise InvalidInput(f"'{field}' is empty; send the bytes of an MP4, MOV, WebM, MKV or AVI video", field=field)
    began = time.monotonic()
    try:
        # Tags are text the file's writer chose: one not in UTF-8 (a recorder's Latin-1 or GBK) must not refuse it
        container = av.open(io.BytesIO(data), mode="r", metadata_errors="replace",
                            stream_options=[{"max_pixels": str(limits.max_pixels)}] * _STREAM_OPTION_SLOTS)
    except ValueError as exc:
        if "stream_options" not in str(exc):
            raise InvalidInput(f"'{field}' could not be read as a video ({exc}); send a complete MP4, MOV, WebM, MKV "
                               f"or AVI file", field=field) from None
        # PyAV: the container names no stream before FFmpeg decodes some (MPEG program streams, FLV), so the pixel
        # limit cannot be set; none of them is a container this server reads
        raise InvalidInput(f"'{field}' is in a container whose streams are found only by decoding them (such as MPEG "
                           f"program stream or FLV), which this server does not read; send "
                           f"{', '.join(ACCEPTED_CONTAINERS.values())}", field=field) from None
    except Exception as exc:  # noqa: BLE001 - FFmpegError, and whatever else PyAV raises on bytes a caller chose
        raise InvalidInput(f"'{field}' could not be read as a video ({_reason(exc)}); its first bytes are "
                           f"{data[:8]!r}; send a complete MP4, MOV, WebM, MKV or AVI file", field=field) from None
    try:
        stream = _check_header(container, limits, field)
    except InvalidInput:
        container.close()
        raise
    except Exception as exc:  # noqa: BLE001 - a header PyAV reads only in part (a stream with no codec context)
        container.close()
        raise InvalidInput(f"'{field}' has a header that could not be read ({type(exc).__name__}: {exc}); send a "
                           f"complete MP4, MOV, WebM, MKV or AVI file", field=field) from None
    except BaseException:
        container.close()
        raise
    return VideoStream(container, stream, limits, field, began)


class VideoStream:
    """A video whose header is within the limits: the sampled frames it claims (`claimed_frames`), then its frames.

    Use it as a context manager (or `close` it): it holds FFmpeg's demuxer and decoder."""

    def __init__(self, container, stream, limits: VideoLimits, field: str, began: float):
        self._container, self._stream, self._limits, self._field, self._began = container, stream, limits, field, began
        self.claimed_seconds = _claimed_seconds(container, stream)
        #: The sampled frames the header claims, or `limits.max_frames` when it claims no length: what a caller
        #: reserves before decoding. An honest stream holds at most this many; one that holds more is refused only
        #: past `max_frames`, so whoever reserved must take a place for each frame past the claim as it comes.
        self.claimed_frames = (limits.max_frames if self.claimed_seconds is None
                               else _sampled_frames(self.claimed_seconds, limits.fps))

    def __enter__(self) -> "VideoStream":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def close(self) -> None:
        self._container.close()

    def frames(self, mode: str = "RGB", size: tuple[int, int] | None = None) -> Iterator[VideoFrame]:
        """Decode and yield the sampled frames, upright and in `mode`. With `size` (width, height), FFmpeg scales
        each one down, keeping its aspect, to the smallest size that covers `size` (as an image's draft does), before
        it becomes RGB: a 4K frame is 25 MB of RGB, its 192x108 cover 62 KB. A frame already within `size` in
        either side is left as it is; `size` is of the upright frame (rotation metadata applied)."""
        import av

        limits, field, stream = self._limits, self._field, self._stream
        stream.thread_type = "AUTO"
        stream.codec_context.thread_count = max(1, limits.threads)
        start = float(stream.start_time * stream.time_base) if stream.start_time is not None else 0.0
        claimed = self.claimed_seconds
        index, next_at, timestamp = 0, 0.0, 0.0
        try:
            for packet in self._container.demux(stream):
                if time.monotonic() - self._began > limits.timeout_seconds:
                    raise InvalidInput(f"'{field}' took over {limits.timeout_seconds:g} s to decode (the per-video "
                                       f"decode timeout, video_decode_timeout_seconds); send a shorter or smaller "
                                       f"video", field=field)
                for frame in packet.decode():
                    if frame.time is None:
                        continue
                    timestamp = frame.time - start
                    if timestamp > limits.max_seconds:
                        raise InvalidInput(f"'{field}' runs past {limits.max_seconds:g} s (max_video_seconds; its "
                                           f"header claims {_claim(claimed)}); send a shorter video", field=field)
                    if timestamp + 1e-6 < next_at:
                        continue
                    if index >= limits.max_frames:
                        raise InvalidInput(f"'{field}' holds more than {limits.max_frames} frames sampled at "
                                           f"{limits.fps:g} per second (max_video_frames); send a shorter video",
                                           field=field)
                    yield VideoFrame(index, round(timestamp, 3), _upright(frame, mode, size, limits.threads))
                    index += 1
                    next_at = index / limits.fps
        except InvalidInput:
            raise
        except Exception as exc:  # noqa: BLE001 - FFmpegError, and whatever else PyAV raises on a caller's bytes
            raise InvalidInput(f"'{field}' is corrupt at about {timestamp:.1f} s ({_reason(exc)}); nothing of it is "
                               f"answered: send a complete, valid video", field=field) from None
        if index == 0:
            raise InvalidInput(f"'{field}' holds no frame that could be decoded; send a complete, valid video",
                               field=field)
        if claimed is not None and timestamp + TRUNCATION_SLACK_SECONDS < claimed - 1 / _frame_rate(stream):
            raise InvalidInput(f"'{field}' ends at {timestamp:.1f} s though its header claims {claimed:.1f} s: it "
                               f"looks truncated; nothing of it is answered: send the complete file", field=field)


def frame_size_problem(size) -> str | None:
    """What is wrong with a handler's `video_frame_size` (None when nothing: None, or two positive ints)."""
    if size is None:
        return None
    if (not isinstance(size, tuple) or len(size) != 2
            or not all(isinstance(side, int) and not isinstance(side, bool) and side > 0 for side in size)):
        return (f"it is {size!r}; set it to (width, height) in pixels, two positive integers such as (192, 48), or "
                f"None for frames at full size")
    return None


def _check_header(container, limits: VideoLimits, field: str):
    """Return the video stream once the container, codec, resolution and claimed length are within the limits."""
    name = container.format.name
    if name not in ACCEPTED_CONTAINERS:
        if name.endswith("_pipe") or name in ("image2", "gif", "apng", "webp_pipe"):
            raise InvalidInput(f"'{field}' is an image ({name.removesuffix('_pipe')}), not a video; send it as "
                               f"'image', or with an image/* Content-Type", field=field)
        raise InvalidInput(f"'{field}' is in the {name!r} container, which this server does not read; send "
                           f"{', '.join(ACCEPTED_CONTAINERS.values())}", field=field)
    if not container.streams.video:
        raise InvalidInput(f"'{field}' holds no video stream; send a video", field=field)
    stream = container.streams.video[0]
    if stream.codec_context is None:
        raise InvalidInput(f"'{field}' holds a video stream whose codec could not be identified; send "
                           f"{', '.join(ACCEPTED_CODECS)}", field=field)
    codec = stream.codec_context.name
    if codec not in ACCEPTED_CODECS:
        raise InvalidInput(f"'{field}' is encoded with {codec!r}, which this server does not decode; send "
                           f"{', '.join(ACCEPTED_CODECS)}", field=field)
    width, height = stream.codec_context.width, stream.codec_context.height
    if width * height > limits.max_pixels:
        raise InvalidInput(f"'{field}' is {width}x{height} = {width * height} pixels a frame, over the limit of "
                           f"{limits.max_pixels} (max_video_pixels); send a smaller video", field=field)
    claimed = _claimed_seconds(container, stream)
    if claimed is not None:
        if claimed > limits.max_seconds:
            raise InvalidInput(f"'{field}' is {claimed:.1f} s long by its header, over the limit of "
                               f"{limits.max_seconds:g} s (max_video_seconds); send a shorter video", field=field)
        samples = _sampled_frames(claimed, limits.fps)
        if samples > limits.max_frames:
            raise InvalidInput(f"'{field}' is {claimed:.1f} s long by its header: {samples} frames sampled at "
                               f"{limits.fps:g} per second, over the limit of {limits.max_frames} "
                               f"(max_video_frames); send a shorter video", field=field)
    return stream


def _sampled_frames(seconds: float, fps: float) -> int:
    """Frames sampled at `fps` from a video `seconds` long, at most (one at 0 s, then one each 1/fps step)."""
    return math.floor(seconds * fps) + 1


def _claimed_seconds(container, stream) -> float | None:
    if container.duration is not None and container.duration > 0:
        return container.duration / 1_000_000
    if stream.duration is not None and stream.duration > 0:
        return float(stream.duration * stream.time_base)
    return None


def _frame_rate(stream) -> float:
    rate = stream.average_rate or stream.guessed_rate
    return float(rate) if rate else 1.0


def _claim(claimed: float | None) -> str:
    return "no length" if claimed is None else f"{claimed:.1f} s"


def _upright(frame, mode: str, size: tuple[int, int] | None = None, threads: int = 1) -> Image.Image:
    """The frame as a PIL image in `mode`, scaled by FFmpeg (on `threads`) to cover `size` (upright width, height;
    None: as it is) and turned as its rotation metadata says (phone uploads)."""
    turn = round((frame.rotation or 0) / 90) % 4  # counterclockwise quarter turns that display it
    if size is None:
        image = frame.to_image()
    else:
        sideways = turn % 2 == 1  # the stored frame's width is the shown frame's height
        shown = (frame.height, frame.width) if sideways else (frame.width, frame.height)
        width, height = covering_size(shown, size)
        if sideways:
            width, height = height, width
        image = frame.to_image(width=width, height=height, threads=max(1, threads))
    if turn:
        image = image.transpose((None, Image.Transpose.ROTATE_90, Image.Transpose.ROTATE_180,
                                 Image.Transpose.ROTATE_270)[turn])
    return image if image.mode == mode else image.convert(mode)


def covering_size(frame: tuple[int, int], size: tuple[int, int]) -> tuple[int, int]:
    """The smallest (width, height) of `frame`'s aspect that covers `size`; `frame` itself when it is no larger."""
    scale = max(size[0] / frame[0], size[1] / frame[1])
    if scale >= 1:
        return frame
    return max(1, round(frame[0] * scale)), max(1, round(frame[1] * scale))


def _reason(exc: Exception) -> str:
    return getattr(exc, "strerror", None) or str(exc)
