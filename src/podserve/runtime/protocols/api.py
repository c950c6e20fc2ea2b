"""The wire format of `/api/<service>`: request bodies in, response and error bodies out.

Two ways to send a request:
- JSON: `{"postid": ..., "uid": ..., "seqid": ..., "image": "<base64>"}` (or `data`, or
  `video` instead of `image`);
- raw bytes: the encoded image as the body with `Content-Type: application/octet-stream`
  (or `image/*`), or the video with `video/*`, the ids as query parameters `?postid=..&uid=..&seqid=..`.
A video has a body limit of its own (`max_video_bytes`, before base64); any other body
`max_body_bytes`.
Every answer is `{"postid", "uid", "seqid", "results", "msg"}`; an error also carries
`error` (a code) and `field` (the field at fault, or null). A second protocol (e.g. the
Open Inference Protocol) belongs in a module of its own beside this one.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import re
import string
import sys
from dataclasses import dataclass, field
from typing import Any, Mapping
from urllib.parse import parse_qsl

import pybase64

from podserve import memory_plan
from podserve.errors import InvalidInput, PayloadTooLarge, ServingError, UnsupportedMediaType
from podserve.handler import Payload
from podserve.settings import ServingSettings
from podserve.videos import VideoLimits

ID_FIELDS = ("postid", "uid", "seqid")
INPUT_FIELDS = ("image", "data", "video")
KNOWN_FIELDS = frozenset(ID_FIELDS + INPUT_FIELDS)
RAW_TYPES = ("application/octet-stream", "image/")
VIDEO_TYPE = "video/"
JSON, RAW_IMAGE, RAW_VIDEO = "json", "image", "video"


@dataclass(frozen=True)
class InputLimits:
    """What a request's input may be: the image and body limits, and a video's (ServingSettings' fields)."""

    max_image_pixels: int = ServingSettings.max_image_pixels
    max_body_bytes: int = 10 * 1024 * 1024
    max_video_bytes: int = 32 * 1024 * 1024
    video: VideoLimits = field(default_factory=VideoLimits)
    #: The most parsing one JSON body may take (podserve/memory_plan.py's per_parse; 0: no limit).
    max_parse_bytes: int = 0

    @classmethod
    def from_settings(cls, settings, holding_limit: int, video_threads: int = 1,
                      max_parse_bytes: int = 0) -> "InputLimits":
        """The limits of `settings`; a video's sampled frames never more than the pod holds (`holding_limit`), a
        body's parsing never more than `max_parse_bytes` (the pod's memory plan)."""
        return cls(settings.max_image_pixels, settings.max_body_bytes, settings.max_video_bytes, VideoLimits(
            fps=settings.video_fps, max_seconds=settings.max_video_seconds,
            max_frames=min(settings.max_video_frames, holding_limit), max_pixels=settings.max_video_pixels,
            timeout_seconds=settings.video_decode_timeout_seconds, threads=video_threads), max_parse_bytes)


def body_kind(content_type: str | None) -> str | None:
    """What a body of this Content-Type holds: JSON, a raw image, a raw video, or None (not read here)."""
    mimetype = (content_type or "application/json").split(";", 1)[0].strip().lower()
    if mimetype == "application/json" or mimetype.endswith("+json"):
        return JSON
    if mimetype.startswith(VIDEO_TYPE):
        return RAW_VIDEO
    if mimetype.startswith(RAW_TYPES):
        return RAW_IMAGE
    return None


def body_limit(settings, content_type: str | None) -> int:
    """The largest body of a request to the service route: a raw video's max_video_bytes; a JSON body as large as a
    base64 video's (an image's or data's is held to max_body_bytes once read); anything else max_body_bytes."""
    kind = body_kind(content_type)
    if kind == RAW_VIDEO:
        return settings.max_video_bytes
    if kind == JSON:
        return settings.largest_body_bytes()
    return settings.max_body_bytes


def _limits(limits: "InputLimits | int") -> InputLimits:
    return InputLimits(max_image_pixels=limits) if isinstance(limits, int) else limits


_BASE64_ALPHABET = (string.ascii_letters + string.digits + "+/=").encode()
_WHITESPACE = string.whitespace.encode()  # what base64 decoders skip and `\s` matches
_NOT_BASE64 = re.compile(b"[^" + re.escape(_BASE64_ALPHABET + _WHITESPACE) + b"]")
#: A JSON body over max_body_bytes is let in only as a video's: beside its base64 string it may hold at most this many
#: bytes that base64 text does not (braces, quotes, commas, colons...). Those bytes bound how many JSON values a
#: body holds, and each value costs tens of bytes once parsed: a 40 MiB body of `{},` made the pod hold 1.1 GB
#: while it was parsed, to be refused afterwards.
VIDEO_JSON_OTHER_BYTES = 64 * 1024
#: What a base64 string in JSON is written with: its alphabet, line breaks and the backslashes of escapes (`\n`, `\/`).
_BASE64_IN_JSON = _BASE64_ALPHABET + _WHITESPACE + b"\\"


def parse_json_request(body: bytes, limits: InputLimits | int) -> Payload:
    """Return the Payload of a JSON request body, or raise InvalidInput naming the field (PayloadTooLarge: 413).

    The front end reads a JSON body as large as a base64 video's; one over max_body_bytes that is not a video is
    refused 413, whatever else is wrong with it."""
    limits = _limits(limits)
    other = len(body.translate(None, _BASE64_IN_JSON)) if limits.max_parse_bytes or \
        len(body) > limits.max_body_bytes else 0
    if len(body) > limits.max_body_bytes:
        if other > VIDEO_JSON_OTHER_BYTES:
            raise PayloadTooLarge(f"the body is {len(body)} bytes, over the limit of {limits.max_body_bytes} "
                                  f"(max_body_bytes); only a video's JSON may be larger, and beside its base64 string "
                                  f"it holds {other} bytes of other JSON (at most {VIDEO_JSON_OTHER_BYTES}); send an "
                                  f"image or data under the limit, or a video with little more than its ids",
                                  field="body")
    if limits.max_parse_bytes and memory_plan.json_parse_bytes(len(body), other) > limits.max_parse_bytes:
        cost = memory_plan.json_parse_bytes(len(body), other)
        raise PayloadTooLarge(f"the body holds about {other:,} JSON values and would take about {cost >> 20} MiB to "
                              f"parse; this pod parses at most {limits.max_parse_bytes >> 20} MiB at once (memory in "
                              f"value.py, shared by the parses it runs at once); send images and videos as base64 "
                              f"strings, and fewer values", field="body")
    try:
        return _parse_json_request(body, limits)
    except InvalidInput:
        if len(body) > limits.max_body_bytes and b'"video"' not in body:
            raise _body_too_large(len(body), limits, "image or data") from None
        raise


def _body_too_large(size: int, limits: InputLimits, what: str) -> PayloadTooLarge:
    return PayloadTooLarge(f"the body is {size} bytes, over the limit of {limits.max_body_bytes} (max_body_bytes; "
                           f"a video may be larger); send a smaller {what}", field="body")


def _parse_json_request(body: bytes, limits: InputLimits) -> Payload:
    if not body:
        raise InvalidInput("the body is empty; send a JSON object such as "
                           '{"postid": "1", "uid": "2", "seqid": "3", "image": "<base64>"}', field="body")
    unreadable: list[_Unreadable] = []
    try:
        document = _loads(body, unreadable)
    except UnicodeDecodeError as exc:
        raise InvalidInput(f"the body is not UTF-8: byte {exc.start} is {body[exc.start:exc.start + 1]!r}; "
                           f"send UTF-8 JSON", field="body") from None
    except json.JSONDecodeError as exc:
        raise InvalidInput(f"the body is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno} "
                           f"(char {exc.pos})", field="body") from None
    except RecursionError:
        raise InvalidInput("the body's JSON is nested too deeply", field="body") from None
    if not isinstance(document, dict):
        raise InvalidInput(f"the body must be a JSON object, not a {type(document).__name__}", field="body")
    if unreadable:
        _refuse_unreadable(document, unreadable[0])
    ids = {name: _check_id(name, document.get(name)) for name in ID_FIELDS}
    given = [name for name in INPUT_FIELDS if document.get(name) is not None]
    if len(given) != 1:
        found = f"found {', '.join(given)}" if given else "found none"
        raise InvalidInput(f"send exactly one of 'image', 'data' or 'video' ({found})",
                           field=given[1] if len(given) > 1 else "image")
    image = video = None
    if given[0] == "video":
        video = _decode_base64(document["video"], "video")
        _check_video_size(len(video), limits, "video")
    elif len(body) > limits.max_body_bytes:  # the front end let it in as the size of a video's JSON
        raise _body_too_large(len(body), limits, given[0])
    elif given[0] == "image":
        image = _decode_base64(document["image"], "image")
    extra = {k: v for k, v in document.items() if k not in KNOWN_FIELDS}
    return Payload(image=image, data=document.get("data"), video=video, extra=extra,
                   max_image_pixels=limits.max_image_pixels, video_limits=limits.video, **ids)


def parse_raw_request(body: bytes, args: Mapping[str, str], limits: InputLimits | int, video: bool = False) -> Payload:
    """Return the Payload of a raw-bytes request: the body is the image (or the video), the ids query parameters."""
    limits = _limits(limits)
    ids = {name: _check_id(name, args.get(name)) for name in ID_FIELDS}
    field = "video" if video else "image"
    if not body:
        raise InvalidInput(f"the body is empty; send the {field}'s bytes", field=field)
    if video:
        _check_video_size(len(body), limits, "body")
        return Payload(video=body, max_image_pixels=limits.max_image_pixels, video_limits=limits.video, **ids)
    if len(body) > limits.max_body_bytes:
        raise PayloadTooLarge(f"the body is {len(body)} bytes, over the limit of {limits.max_body_bytes} "
                              f"(max_body_bytes); send a smaller image", field="body")
    return Payload(image=body, max_image_pixels=limits.max_image_pixels, **ids)


def parse_request(content_type: str | None, body: bytes, args: Mapping[str, str],
                  limits: InputLimits | int) -> Payload:
    """Dispatch on Content-Type: JSON (the default), raw image bytes or raw video bytes."""
    kind = body_kind(content_type)
    if kind == JSON:
        return parse_json_request(body, limits)
    if kind is not None:
        return parse_raw_request(body, args, limits, video=kind == RAW_VIDEO)
    mimetype = (content_type or "").split(";", 1)[0].strip().lower()
    raise UnsupportedMediaType(f"Content-Type {mimetype!r} is not read here; send application/json, the raw "
                               f"image as application/octet-stream, or the raw video as video/*", field="Content-Type")


def _check_video_size(size: int, limits: InputLimits, field: str) -> None:
    if size > limits.max_video_bytes:
        raise PayloadTooLarge(f"the video is {size} bytes, over the limit of {limits.max_video_bytes} "
                              f"(max_video_bytes); send a shorter or smaller video", field=field)


def ids_of(payload: Payload | None) -> dict[str, Any]:
    if payload is None:
        return dict.fromkeys(ID_FIELDS)
    return {"postid": payload.postid, "uid": payload.uid, "seqid": payload.seqid}


def success_body(payload: Payload, results: Any) -> dict[str, Any]:
    return {**ids_of(payload), "results": results, "msg": "ok"}


def error_body(error: ServingError, payload: Payload | None = None) -> dict[str, Any]:
    return {**ids_of(payload), "results": None, "msg": error.message, "error": error.code, "field": error.field}


class _Unreadable(str):
    """A number in the body that cannot be read as one (too many digits, out of range, NaN): kept as its text
    while parsing, so that the 400 can name the field it is in."""

    reason = ""


def _unreadable(found: list, text: str, reason: str) -> _Unreadable:
    marker = _Unreadable(text if len(text) <= 24 else f"{text[:12]}...{text[-6:]}")
    marker.reason = reason
    found.append(marker)
    return marker


def _loads(body: bytes, found: list) -> Any:
    """json.loads, with every number it cannot hold (NaN, Infinity, 1e999, an integer over Python's digit limit)
    replaced by an _Unreadable marker listed in `found`. Floats are checked as they are read (~0.1 µs each; a body
    with none pays nothing); integers only when int() refused one."""
    hooks: dict = {"parse_constant": lambda name: _unreadable(found, name, "is not a JSON number"),
                   "parse_float": _read_float(found)}
    try:
        return json.loads(body, **hooks)
    except json.JSONDecodeError:
        raise
    except ValueError:  # an integer with more digits than int() reads (sys.get_int_max_str_digits)
        hooks["parse_int"] = read_int(found)
        return json.loads(body, **hooks)


def _read_float(found: list):
    def read(text: str):
        value = float(text)
        return value if math.isfinite(value) else _unreadable(found, text, "is out of range for a 64-bit float")
    return read


def read_int(found: list):
    """json.loads's parse_int: an integer int() refuses for its digits becomes a marker listed in `found`."""
    limit = sys.get_int_max_str_digits() or 4300

    def read(text: str):
        digits = len(text) - text.startswith("-")
        if digits > limit:
            return _unreadable(found, text, f"is an integer of {digits} digits (at most {limit})")
        return int(text)
    return read


def field_holding(parts: dict, marker: _Unreadable) -> str:
    """The key of `parts` whose value holds `marker` (an unreadable number `read_int` kept), or "body"."""
    def holds(value: Any) -> bool:
        if value is marker:
            return True
        if isinstance(value, dict):
            return any(holds(v) for v in value.values())
        if isinstance(value, list):
            return any(holds(v) for v in value)
        return False
    try:
        return next((name for name, value in parts.items() if holds(value)), "body")
    except RecursionError:
        return "body"


def _refuse_unreadable(document: dict, marker: _Unreadable) -> None:
    """Raise InvalidInput naming the top-level field that holds `marker`."""
    field = field_holding(document, marker)
    raise InvalidInput(f"'{field}' holds {marker!s}, which {marker.reason}; send ids as strings and numbers "
                       f"that fit a 64-bit float", field=field)


def _check_id(name: str, value: Any) -> Any:
    if value is None or (isinstance(value, (str, int)) and not isinstance(value, bool)):
        if isinstance(value, str) and len(value) > 256:
            raise InvalidInput(f"'{name}' is {len(value)} characters long; keep ids under 256", field=name)
        if isinstance(value, int) and abs(value) >= 10 ** 256:
            raise InvalidInput(f"'{name}' is an integer of {len(str(abs(value)))} digits; keep ids under 256 "
                               f"characters", field=name)
        return value
    raise InvalidInput(f"'{name}' must be a string or an integer, not {type(value).__name__}", field=name)


def _decode_base64(value: Any, field: str = "image") -> bytes:
    raw_type = "application/octet-stream" if field == "image" else "video/mp4 (or the video's own type)"
    if not isinstance(value, str):
        raise InvalidInput(f"'{field}' must be a base64 string, not {type(value).__name__}; or send the raw bytes "
                           f"with Content-Type: {raw_type}", field=field)
    try:  # SIMD: 2 µs for the callers' mix's 22 KB average, the standard library's 63 (bench/optimisations.json)
        return pybase64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        pass  # it refuses a superset of what the standard library's strict mode does: that one decides
    raw = value.encode("ascii", errors="replace")
    try:
        return base64.b64decode(raw, validate=True)
    except (binascii.Error, ValueError):
        pass
    bad = _NOT_BASE64.search(raw)
    if bad is not None:
        where = f"character {bad.start()} ({value[bad.start()]!r}) is not base64"
    else:
        unwrapped = b"".join(raw.split())  # line-wrapped base64 (as `base64` prints it) is fine
        try:
            return base64.b64decode(unwrapped, validate=True)
        except (binascii.Error, ValueError):
            where = f"its length without whitespace ({len(unwrapped)}) is not padded to a multiple of 4"
    raise InvalidInput(f"'{field}' is not valid base64: {where}; send standard base64 (A-Z a-z 0-9 + / with = "
                       f"padding), or the raw bytes with Content-Type: {raw_type}", field=field)


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
