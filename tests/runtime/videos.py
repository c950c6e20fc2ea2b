"""Videos made on the spot with PyAV, for the example model: text lines, turned, cut short and lying about themselves."""

from __future__ import annotations

import io
import struct

import av
import numpy as np
from PIL import Image

from images import text_image

LINE = "serving models"


def text_frame(upside_down: bool, text: str = LINE, size: int = 32) -> np.ndarray:
    """A text line as an RGB array of even width and height (what yuv420p needs)."""
    image = Image.open(io.BytesIO(text_image(text, size=size, upside_down=upside_down))).convert("RGB")
    width, height = image.size
    return np.asarray(image.crop((0, 0, width - width % 2, height - height % 2)))


def encode(frames: list[np.ndarray], rate: int, fmt: str = "mp4", codec: str = "libx264", rotation: int | None = None,
           sink=None, title: str | None = None, bitexact: bool = False) -> bytes:
    """Encode RGB arrays at `rate` frames a second; `sink` (a write-only object) makes a stream that cannot seek,
    so the muxer writes no length into the header; `title`: the container's title tag; `bitexact`: the same bytes
    every time (Matroska writes a random segment UID otherwise)."""
    out_buffer = sink if sink is not None else io.BytesIO()
    height, width = frames[0].shape[:2]
    with av.open(out_buffer, "w", format=fmt, container_options={"fflags": "+bitexact"} if bitexact else None) as out:
        if title is not None:
            out.metadata["title"] = title
        stream = out.add_stream(codec, rate=rate, options={"preset": "ultrafast"} if codec == "libx264" else {})
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        if rotation is not None:
            stream.set_display_rotation(rotation)
        for pixels in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(pixels, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return bytes(sink.data) if sink is not None else out_buffer.getvalue()


def latin1_titled(frames: list[np.ndarray], rate: int) -> bytes:
    """A Matroska video whose title tag is Latin-1, not the UTF-8 the format asks for (as some recorders write it)."""
    placeholder, title = "TTTTTT", "Café £".encode("latin-1")  # the same length: no size field changes
    video = encode(frames, rate, fmt="matroska", title=placeholder)
    assert video.count(placeholder.encode()) == 1 and len(title) == len(placeholder)
    return video.replace(placeholder.encode(), title)


def flipping_video(seconds: int = 10, rate: int = 10, flip_at: float = 5.0, **kwargs) -> bytes:
    """A text line upright until `flip_at` seconds, then upside down."""
    upright, flipped = text_frame(False), text_frame(True)
    return encode([upright if i / rate < flip_at else flipped for i in range(seconds * rate)], rate, **kwargs)


class Unseekable:
    """A sink PyAV cannot seek in: matroska written to it carries no duration."""

    def __init__(self):
        self.data = bytearray()

    def write(self, chunk) -> int:
        self.data += chunk
        return len(chunk)


def sampled_frames_as_png(video: bytes, fps: float = 1.0) -> list[tuple[float, bytes]]:
    """Decode `video` with PyAV here and return (timestamp, PNG) of the first frame at or after each 1/fps step."""
    samples, next_at = [], 0.0
    with av.open(io.BytesIO(video)) as container:
        for frame in container.decode(video=0):
            if frame.time + 1e-6 < next_at:
                continue
            out = io.BytesIO()
            frame.to_image().save(out, "PNG")
            samples.append((round(frame.time, 3), out.getvalue()))
            next_at = len(samples) / fps
    return samples


#: MP4 boxes that state a length, and where it sits after the box's name (version 0 boxes: 32-bit fields).
_DURATION_FIELDS = {b"mvhd": 16, b"tkhd": 20, b"mdhd": 16}


def understated(mp4: bytes, factor: int) -> bytes:
    """`mp4` (from `encode`) with every length its header states divided by `factor`: a header that claims a
    fraction of the frames its stream holds."""
    out = bytearray(mp4)
    for box, offset in _DURATION_FIELDS.items():
        at = out.find(box)
        assert at > 0 and out[at + 4] == 0, f"no version-0 {box!r} box"
        place = at + 4 + offset
        (duration,) = struct.unpack(">I", out[place:place + 4])
        out[place:place + 4] = struct.pack(">I", duration // factor)
    return bytes(out)


def marked_frame(width: int, height: int, marked: bool = True) -> np.ndarray:
    """A black RGB frame, with a white block in its top-left corner (a tenth of each side) when `marked`."""
    pixels = np.zeros((height, width, 3), np.uint8)
    if marked:
        pixels[:height // 10, :width // 10] = 255
    return pixels
