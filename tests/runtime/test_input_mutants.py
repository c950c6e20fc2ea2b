"""Inputs mutated as a broken upload or a hostile caller makes them, read in-process: images, videos, JSON bodies (or
Kafka messages) and Open Inference Protocol bodies. Each is read, or refused with a typed error naming its field (a
4xx, or a dead letter), never with another error (a 500 and a fault of the runtime's own online; offline, a worker
that exits and reads the same message again on restart); and a refusal can always be written back.

Seeded (SEED): the same mutants every run, of valid inputs the test writes itself (the video muxers told to write the
same bytes every time). Found this way, each a 500 before: a TIFF whose strip offsets are typed RATIONAL (a TypeError
inside Pillow; tests/runtime/malformed.py keeps one), an MPEG program stream or an FLV (a ValueError from PyAV), a
Matroska title in Latin-1 (a UnicodeDecodeError; tests/runtime/test_video.py keeps both), a video stream with no codec
context (an AttributeError); and a message whose refusal quotes a lone surrogate, which its dead letter could not
encode (tests/offline/test_stream.py keeps one).
"""

from __future__ import annotations

import base64
import io
import json
import random
import struct

import numpy as np
import pytest
from PIL import Image
from videos import encode, text_frame

from podserve.errors import InvalidInput, ServingError
from podserve.images import decode_image
from podserve.runtime.offline import records
from podserve.runtime.protocols import api, v2
from podserve.testbed.topics import StandInMessage
from podserve.videos import VideoLimits, decode_video

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")  # Pillow warns of each tag a mutant broke

SEED = 70
IMAGE_MUTANTS = 6000
VIDEO_MUTANTS = 1500
BODY_MUTANTS = 20000
#: Bytes a mutation writes over a file's own: the edges of the integers its headers hold.
EDGES = [b"\0", b"\xff", b"\x7f", b"\x80", b"\0\0\0\0", b"\xff\xff\xff\xff", b"\x7f\xff\xff\xff", b"\x80\0\0\0",
         b"\0\0\0\x01"]


#: What a mutation splices into a JSON body: its grammar, the numbers Python cannot hold, escapes with no UTF-8.
JSON_TOKENS = [b'"', b"\\", b"\\u", b"\\ud800", b"\\udc00", b"{", b"}", b"[", b"]", b",", b":", b"1e999", b"-0",
               b"NaN", b"Infinity", b"9" * 5000, b"\xff", b"\xc3", b"\0", b"null", b"true", b'"image"', b'"data"',
               b'"video"', b'"postid"', b"[" * 2000, b"=="]


def mutate(data: bytes, rng: random.Random, tokens: list[bytes] = EDGES) -> bytes:
    """`data` with one to four of: a byte replaced, a token (by default an integer's edge) written over it, a span
    deleted or repeated, the end cut off."""
    data = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        if not data:
            break
        at, kind = rng.randrange(len(data)), rng.random()
        if kind < 0.4:
            data[at] = rng.randrange(256)
        elif kind < 0.65:
            token = rng.choice(tokens)
            data[at:at + len(token)] = token
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


def escapes(files: list[bytes], count: int, decode, refused=lambda exc: None,
            tokens: list[bytes] = EDGES) -> tuple[dict[str, bytes], int]:
    """Each kind of error other than a ServingError that `decode`, or `refused` given the ServingError, raised on
    `count` mutants of `files` (one mutant each), and how many mutants were read."""
    rng, found, decoded = random.Random(SEED), {}, 0
    for _ in range(count):
        mutant = mutate(rng.choice(files), rng, tokens)
        try:
            try:
                decode(mutant)
                decoded += 1
            except ServingError as exc:
                refused(exc)
        except Exception as exc:  # what a caller's bytes must never raise
            found.setdefault(f"{type(exc).__name__}: {str(exc)[:120]}", mutant[:64])
    return found, decoded


def named(*fields: str):
    """A refusal check: the error is InvalidInput naming one of `fields`."""
    def check(exc: ServingError) -> None:
        assert isinstance(exc, InvalidInput) and exc.field in fields, exc
    return check


def test_every_mutant_image_decodes_or_is_refused_naming_its_field():
    files = images()
    for data in files:
        decode_image(data, max_pixels=1 << 20)
    found, decoded = escapes(files, IMAGE_MUTANTS, lambda data: decode_image(data, max_pixels=1 << 20),
                             named("image"))
    assert found == {}
    assert 0 < decoded < IMAGE_MUTANTS  # both kinds of outcome were reached


@pytest.mark.parametrize("size", [None, (192, 48)], ids=["full size", "scaled by FFmpeg"])
def test_every_mutant_video_decodes_or_is_refused_naming_its_field(size):
    limits = VideoLimits(fps=2, max_seconds=10, max_frames=30, timeout_seconds=5)
    files = videos()
    for data in files:
        assert len(list(decode_video(data, limits, size=size))) == 6
    found, decoded = escapes(files, VIDEO_MUTANTS, lambda data: list(decode_video(data, limits, size=size)),
                             named("video"))
    assert found == {}
    assert 0 < decoded < VIDEO_MUTANTS


def test_every_mutant_json_body_parses_or_is_refused_and_the_refusal_can_be_written_back():
    """As `POST /api/<service>` reads a body and the offline worker a message; the refusal as the HTTP answer's JSON
    and as the message's dead letter."""
    image = base64.b64encode(b"\x89PNG\r\n\x1a\n" + bytes(40)).decode()
    bodies = [json.dumps(body).encode() for body in (
        {"postid": "1", "uid": "u", "seqid": 3, "image": image}, {"postid": 12, "data": [1.5, 2, [3, 4], {"a": 1}]},
        {"postid": "v", "video": image, "extra": {"k": [None, True, False, "s"]}})]
    bodies.append(b'{"postid": "p", "image": "aGk=", "\\udc00x": 1e999}')  # a field no UTF-8 can name

    def write_back(exc: ServingError) -> None:
        json.dumps(api.error_body(exc), allow_nan=False).encode()
        records.dead_letter(StandInMessage(7, b"{}"), exc)

    found, parsed = escapes(bodies, BODY_MUTANTS, lambda body: api.success_body(api.parse_json_request(body, 1 << 20),
                                                                                 {"angle": 0}),
                            write_back, JSON_TOKENS)
    assert found == {}
    assert 0 < parsed < BODY_MUTANTS


def test_every_mutant_open_inference_body_reads_or_is_refused():
    specs = {"x": v2.TensorSpec("x", "FP32", (-1, 4)), "ids": v2.TensorSpec("ids", "INT64", (-1, 2))}
    tensors = struct.pack("<8f", *range(8)) + struct.pack("<4q", 1, 2, 3, 4)
    header = json.dumps({"id": "r", "parameters": {"timeout": 1000}, "outputs": [
        {"name": "y", "parameters": {"binary_data": True}}], "inputs": [
        {"name": "x", "shape": [2, 4], "datatype": "FP32", "parameters": {"binary_data_size": 32}},
        {"name": "ids", "shape": [2, 2], "datatype": "INT64", "parameters": {"binary_data_size": 32}}]}).encode()
    in_json = json.dumps({"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]},
                                     {"name": "ids", "shape": [1, 2], "datatype": "INT64", "data": [[1, 2]]}]}).encode()
    # The binary body's header length as it was sent: a mutant of the body moves what it points at.
    headers = ({"inference-header-content-length": str(len(header))}, {})

    def read(body: bytes) -> None:
        """Read as a binary body, else as JSON; the first refusal when neither reads."""
        refusals = []
        for each in headers:
            try:
                v2.read_infer(body, each, specs, {"y": v2.TensorSpec("y", "FP32", (-1, 4))})
                return
            except ServingError as exc:
                refusals.append(exc)
        raise refusals[0]

    found, read_whole = escapes([header + tensors, in_json], BODY_MUTANTS // 2, read, tokens=JSON_TOKENS)
    assert found == {}
    assert 0 < read_whole < BODY_MUTANTS // 2
