"""Images and videos mutated as a broken upload or a hostile caller makes them: each decodes, or is refused with
InvalidInput naming its field (a 400), never with another error (a 500, and a fault of the runtime's own).

Seeded (SEED): the same mutants every run, of valid files the test writes itself (the video muxers told to write the
same bytes every time). Found this way, each a 500 before: a TIFF whose strip offsets are typed RATIONAL (a TypeError
inside Pillow; tests/runtime/malformed.py keeps one), an MPEG program stream or an FLV (a ValueError from PyAV), a
Matroska title in Latin-1 (a UnicodeDecodeError; tests/runtime/test_video.py keeps both), a video stream with no codec
context (an AttributeError).
"""

from __future__ import annotations

import io
import random

import numpy as np
import pytest
from PIL import Image
from videos import encode, text_frame

from podserve.errors import InvalidInput
from podserve.images import decode_image
from podserve.videos import VideoLimits, decode_video

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")  # Pillow warns of each tag a mutant broke

SEED = 70
IMAGE_MUTANTS = 6000
VIDEO_MUTANTS = 1500
#: Bytes a mutation writes over a file's own: the edges of the integers its headers hold.
EDGES = [b"\0", b"\xff", b"\x7f", b"\x80", b"\0\0\0\0", b"\xff\xff\xff\xff", b"\x7f\xff\xff\xff", b"\x80\0\0\0",
         b"\0\0\0\x01"]


def mutate(data: bytes, rng: random.Random) -> bytes:
    """`data` with one to four of: a byte replaced, an integer's edge written over it, a span deleted or repeated,
    the end cut off."""
    data = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        if not data:
            break
        at, kind = rng.randrange(len(data)), rng.random()
        if kind < 0.4:
            data[at] = rng.randrange(256)
        elif kind < 0.65:
            edge = rng.choice(EDGES)
            data[at:at + len(edge)] = edge
        elif kind < 0.8:
            del data[at:at + rng.randint(1, 32)]
        elif kind < 0.9:
            data[at:at] = data[at:at + rng.randint(1, 64)]
        else:
            del data[at:]
    return bytes(data)


def images() -> list[bytes]:
    """A small image in every format and mode the accepted formats' decoders branch on."""
    base = Image.fromarray(np.random.default_rng(SEED).integers(0, 256, (37, 53, 3), dtype=np.uint8))
    cases = [("PNG", base, {}), ("PNG", base.convert("P"), {}), ("PNG", base.convert("RGBA"), {}),
             ("PNG", base.convert("I;16"), {}), ("JPEG", base, {}), ("JPEG", base, {"progressive": True}),
             ("JPEG", base.convert("L"), {}), ("JPEG", base.convert("CMYK"), {}), ("WEBP", base, {}),
             ("WEBP", base, {"lossless": True}), ("WEBP", base.convert("RGBA"), {}), ("BMP", base, {}),
             ("BMP", base.convert("P"), {}), ("BMP", base.convert("1"), {}), ("GIF", base, {}),
             ("GIF", base.convert("L"), {"save_all": True, "append_images": [base.convert("L")]}),
             ("TIFF", base, {}), ("TIFF", base, {"compression": "tiff_lzw"}),
             ("TIFF", base, {"compression": "tiff_deflate"}), ("TIFF", base, {"compression": "packbits"}),
             ("TIFF", base, {"compression": "jpeg"}), ("TIFF", base.convert("I;16"), {}),
             ("TIFF", base.convert("F"), {}), ("TIFF", base.convert("1"), {"compression": "group4"})]
    files = []
    for fmt, image, options in cases:
        out = io.BytesIO()
        image.save(out, fmt, **options)
        files.append(out.getvalue())
    return files


def videos() -> list[bytes]:
    """A short video in each accepted container, one with rotation metadata."""
    frames = [text_frame(i % 2 == 1) for i in range(6)]
    return [encode(frames, 2, bitexact=True), encode(frames, 2, rotation=90, bitexact=True),
            encode(frames, 2, fmt="matroska", bitexact=True),
            encode(frames, 2, fmt="webm", codec="libvpx", bitexact=True),
            encode(frames, 2, fmt="avi", codec="mpeg4", bitexact=True)]


def escapes(files: list[bytes], count: int, decode) -> tuple[dict[str, bytes], int]:
    """Each kind of error other than InvalidInput that `decode` raised on `count` mutants of `files` (one mutant
    each), and how many mutants decoded."""
    rng, found, decoded = random.Random(SEED), {}, 0
    for _ in range(count):
        mutant = mutate(rng.choice(files), rng)
        try:
            decode(mutant)
            decoded += 1
        except InvalidInput as exc:
            assert exc.field in ("image", "video"), exc
        except Exception as exc:  # what a caller's bytes must never raise
            found.setdefault(f"{type(exc).__name__}: {str(exc)[:120]}", mutant[:64])
    return found, decoded


def test_every_mutant_image_decodes_or_is_refused_naming_its_field():
    files = images()
    for data in files:
        decode_image(data, max_pixels=1 << 20)
    found, decoded = escapes(files, IMAGE_MUTANTS, lambda data: decode_image(data, max_pixels=1 << 20))
    assert found == {}
    assert 0 < decoded < IMAGE_MUTANTS  # both kinds of outcome were reached


@pytest.mark.parametrize("size", [None, (192, 48)], ids=["full size", "scaled by FFmpeg"])
def test_every_mutant_video_decodes_or_is_refused_naming_its_field(size):
    limits = VideoLimits(fps=2, max_seconds=10, max_frames=30, timeout_seconds=5)
    files = videos()
    for data in files:
        assert len(list(decode_video(data, limits, size=size))) == 6
    found, decoded = escapes(files, VIDEO_MUTANTS, lambda data: list(decode_video(data, limits, size=size)))
    assert found == {}
    assert 0 < decoded < VIDEO_MUTANTS
