"""Malformed requests of every kind, each with the status and field the server must answer with."""

from __future__ import annotations

import base64
import io
import struct
import zlib

from images import text_image
from PIL import Image

MAX_BODY = 256 * 1024
#: TIFF's tag number of StripOffsets, and its field type number of RATIONAL (TIFF 6.0, section 2).
STRIP_OFFSETS, TIFF_RATIONAL = 273, 5


def png_claiming(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims width x height pixels: a decompression bomb's calling card."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def tiff_with_rational_strip_offsets() -> bytes:
    """A small TIFF whose StripOffsets tag is typed RATIONAL: Pillow 13 reads the offset as an IFDRational and its
    seek raises TypeError, none of the errors Pillow documents for a bad file (found by mutating valid images)."""
    out = io.BytesIO()
    Image.new("RGB", (8, 8), (200, 30, 30)).save(out, "TIFF")
    data = bytearray(out.getvalue())
    ifd = struct.unpack_from("<I", data, 4)[0]  # little-endian: Pillow writes "II*\0"
    for entry in range(ifd + 2, ifd + 2 + 12 * struct.unpack_from("<H", data, ifd)[0], 12):
        if struct.unpack_from("<H", data, entry)[0] == STRIP_OFFSETS:
            struct.pack_into("<H", data, entry + 2, TIFF_RATIONAL)
            return bytes(data)
    raise AssertionError("Pillow wrote a TIFF without StripOffsets")


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


GOOD_PNG = text_image("malformed")
JSON = {"Content-Type": "application/json"}
RAW = {"Content-Type": "application/octet-stream"}

#: name -> (request kwargs for the service route, expected status, field named in the error or None)
CASES: dict[str, tuple[dict, int, str | None]] = {
    "not json": ({"data": b'{"image": ', "headers": JSON}, 400, "body"),
    "json list": ({"data": b"[1, 2]", "headers": JSON}, 400, "body"),
    "json string": ({"data": b'"image"', "headers": JSON}, 400, "body"),
    "empty body": ({"data": b"", "headers": JSON}, 400, "body"),
    "not utf-8": ({"data": b'{"image": "\xff\xfe"}', "headers": JSON}, 400, "body"),
    "nested too deep": ({"data": b"[" * 100_000, "headers": JSON}, 400, "body"),
    "no input": ({"json": {"postid": "1"}}, 400, "image"),
    "two inputs": ({"json": {"image": b64(GOOD_PNG), "data": [1]}}, 400, "data"),
    "data instead of image": ({"json": {"data": [1, 2, 3]}}, 400, "image"),
    "postid is an object": ({"json": {"postid": {"a": 1}, "image": b64(GOOD_PNG)}}, 400, "postid"),
    "uid is a bool": ({"json": {"uid": True, "image": b64(GOOD_PNG)}}, 400, "uid"),
    "seqid too long": ({"json": {"seqid": "x" * 300, "image": b64(GOOD_PNG)}}, 400, "seqid"),
    "image is a number": ({"json": {"image": 12345}}, 400, "image"),
    "image bad base64 char": ({"json": {"image": "iVBOR$$w0KGgo="}}, 400, "image"),
    "image bad padding": ({"json": {"image": "iVBORw0KGgoA"[:-1]}}, 400, "image"),
    "image empty": ({"json": {"image": ""}}, 400, "image"),
    "image is text": ({"json": {"image": b64(b"hello, I am not an image at all")}}, 400, "image"),
    "image truncated": ({"json": {"image": b64(GOOD_PNG[: len(GOOD_PNG) // 2])}}, 400, "image"),
    "image bomb": ({"json": {"image": b64(png_claiming(60_000, 60_000))}}, 400, "image"),
    "image TIFF that trips Pillow": ({"json": {"image": b64(tiff_with_rational_strip_offsets())}}, 400, "image"),
    "image bomb raw": ({"data": png_claiming(100_000, 100_000), "headers": RAW}, 400, "image"),
    "raw garbage": ({"data": b"\x00\x01garbage" * 10, "headers": RAW}, 400, "image"),
    "raw empty": ({"data": b"", "headers": RAW}, 400, "image"),
    "wrong content type": ({"data": b"image=abc", "headers": {"Content-Type": "text/plain"}}, 415, "Content-Type"),
    "body over limit": ({"data": b"x" * (MAX_BODY + 10), "headers": RAW}, 413, "body"),
    "postid integer of 5000 digits": ({"data": b'{"postid": ' + b"7" * 5000 + b', "image": "aGk="}', "headers": JSON},
                                      400, "postid"),
    "uid integer of 300 digits": ({"data": b'{"uid": ' + b"7" * 300 + b', "image": "aGk="}', "headers": JSON},
                                  400, "uid"),
    "seqid float overflow": ({"data": b'{"seqid": 1e999, "image": "aGk="}', "headers": JSON}, 400, "seqid"),
    "NaN in data": ({"data": b'{"data": [1, NaN]}', "headers": JSON}, 400, "data"),
    "Infinity in an extra field": ({"data": b'{"image": "aGk=", "scale": -Infinity}', "headers": JSON}, 400, "scale"),
    "huge integer deep in data": ({"data": b'{"data": [[[' + b"1" * 4400 + b']]]}', "headers": JSON}, 400, "data"),
    "deadline NaN": ({"json": {"image": b64(GOOD_PNG)}, "headers": {"X-Request-Timeout-Ms": "nan"}},
                     400, "X-Request-Timeout-Ms"),
    "deadline not a number": ({"json": {"image": b64(GOOD_PNG)}, "headers": {"X-Request-Timeout-Ms": "soon"}},
                              400, "X-Request-Timeout-Ms"),
    "deadline negative": ({"json": {"image": b64(GOOD_PNG)}, "headers": {"X-Request-Timeout-Ms": "-5"}},
                          400, "X-Request-Timeout-Ms"),
}

#: (method, path, expected status) for requests that miss the service route.
ROUTE_CASES = [("POST", "/api/no-such-service", 404), ("GET", "/api/example", 405), ("POST", "/api/ping", 405),
               ("GET", "/nothing/here", 404), ("DELETE", "/metrics", 405)]
