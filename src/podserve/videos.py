"""Decode an untrusted video into frames sampled at a rate, refusing what is over the limits before decoding it.

PyAV (FFmpeg inside its wheel) demuxes and decodes; it releases the GIL while it does.
The header is read first: the container and codec must be on the allowlists, the
resolution within `max_pixels` (FFmpeg is told the same limit, so a file claiming a huge
size is refused before a frame is decoded) and the claimed duration and sampled frame count
within theirs. While decoding, the same limits hold for what the stream actually holds
(a stream that claims nothing, or less than it holds), and so does a per-video decode
timeout, checked between packets. A stream that breaks mid-way, or ends well before the
duration it claims (a truncated upload), is refused with a 400, never answered with the
frames decoded so far: a moderation verdict on half a video would look like one on all of it.
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


def decode_video(data: bytes, limits: VideoLimits, *, mode: str = "RGB", field: str = "video") -> Iterator[VideoFrame]:
    """Yield the frames of `data` sampled at `limits.fps` (the first frame at or after each 1/fps step), upright
    (rotation metadata applied) and in `mode`; raise InvalidInput naming `field`, the limit and the fix."""
    import av  # imported here: a service that reads no video never loads FFmpeg

    if not data:
        raise InvalidInput(f"'{field}' is empty; send the bytes of an MP4, MOV, WebM, MKV or AVI video", field=field)
    began = time.monotonic()
    try:
        container = av.open(io.BytesIO(data), mode="r",
                            stream_options=[{"max_pixels": str(limits.max_pixels)}] * _STREAM_OPTION_SLOTS)
    except av.FFmpegError as exc:
        raise InvalidInput(f"'{field}' could not be read as a video ({_reason(exc)}); its first bytes are "
                           f"{data[:8]!r}; send a complete MP4, MOV, WebM, MKV or AVI file", field=field) from None
    with container:
        stream = _check_header(container, limits, field)
        stream.thread_type = "AUTO"
        stream.codec_context.thread_count = max(1, limits.threads)
        start = float(stream.start_time * stream.time_base) if stream.start_time is not None else 0.0
        claimed = _claimed_seconds(container, stream)
        index, next_at, timestamp = 0, 0.0, 0.0
        try:
            for packet in container.demux(stream):
                if time.monotonic() - began > limits.timeout_seconds:
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
                    yield VideoFrame(index, round(timestamp, 3), _upright(frame, mode))
                    index += 1
                    next_at = index / limits.fps
        except av.FFmpegError as exc:
            raise InvalidInput(f"'{field}' is corrupt at about {timestamp:.1f} s ({_reason(exc)}); nothing of it is "
                               f"answered: send a complete, valid video", field=field) from None
        if index == 0:
            raise InvalidInput(f"'{field}' holds no frame that could be decoded; send a complete, valid video",
                               field=field)
        if claimed is not None and timestamp + TRUNCATION_SLACK_SECONDS < claimed - 1 / _frame_rate(stream):
            raise InvalidInput(f"'{field}' ends at {timestamp:.1f} s though its header claims {claimed:.1f} s: it "
                               f"looks truncated; nothing of it is answered: send the complete file", field=field)


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
        samples = math.floor(claimed * limits.fps) + 1
        if samples > limits.max_frames:
            raise InvalidInput(f"'{field}' is {claimed:.1f} s long by its header: {samples} frames sampled at "
                               f"{limits.fps:g} per second, over the limit of {limits.max_frames} "
                               f"(max_video_frames); send a shorter video", field=field)
    return stream


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


def _upright(frame, mode: str) -> Image.Image:
    """The frame as a PIL image in `mode`, turned as its rotation metadata says (phone uploads)."""
    image = frame.to_image()
    turn = round((frame.rotation or 0) / 90) % 4  # counterclockwise quarter turns that display it
    if turn:
        image = image.transpose((None, Image.Transpose.ROTATE_90, Image.Transpose.ROTATE_180,
                                 Image.Transpose.ROTATE_270)[turn])
    return image if image.mode == mode else image.convert(mode)


def _reason(exc: Exception) -> str:
    return getattr(exc, "strerror", None) or str(exc)
