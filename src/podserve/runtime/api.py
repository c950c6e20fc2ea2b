"""The wire format of `/api/<service>`: request bodies in, response and error bodies out.

Two ways to send a request:
- JSON: `{"postid": ..., "uid": ..., "seqid": ..., "image": "<base64>"}` (or `data`, or
  `video` instead of `image`);
- raw bytes: the encoded image as the body with `Content-Type: application/octet-stream`
  (or `image/*`), the ids as query parameters `?postid=..&uid=..&seqid=..`.
Every answer is `{"postid", "uid", "seqid", "results", "msg"}`; an error also carries
`error` (a code) and `field` (the field at fault, or null). A second protocol (e.g. the
Open Inference Protocol) belongs in a module of its own beside this one.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from typing import Any, Mapping

from podserve.errors import InvalidInput, ServingError, UnsupportedMediaType
from podserve.handler import Payload

ID_FIELDS = ("postid", "uid", "seqid")
INPUT_FIELDS = ("image", "data", "video")
KNOWN_FIELDS = frozenset(ID_FIELDS + INPUT_FIELDS)
RAW_TYPES = ("application/octet-stream", "image/")
_NOT_BASE64 = re.compile(rb"[^A-Za-z0-9+/=\s]")


def parse_json_request(body: bytes, max_image_pixels: int) -> Payload:
    """Return the Payload of a JSON request body, or raise InvalidInput naming the field."""
    if not body:
        raise InvalidInput("the body is empty; send a JSON object such as "
                           '{"postid": "1", "uid": "2", "seqid": "3", "image": "<base64>"}', field="body")
    try:
        document = json.loads(body)
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
    ids = {name: _check_id(name, document.get(name)) for name in ID_FIELDS}
    given = [name for name in INPUT_FIELDS if document.get(name) is not None]
    if len(given) != 1:
        found = f"found {', '.join(given)}" if given else "found none"
        raise InvalidInput(f"send exactly one of 'image', 'data' or 'video' ({found})",
                           field=given[1] if len(given) > 1 else "image")
    image = None
    if given[0] == "image":
        image = _decode_base64(document["image"])
    extra = {k: v for k, v in document.items() if k not in KNOWN_FIELDS}
    return Payload(image=image, data=document.get("data"), video=document.get("video"), extra=extra,
                   max_image_pixels=max_image_pixels, **ids)


def parse_raw_request(body: bytes, args: Mapping[str, str], max_image_pixels: int) -> Payload:
    """Return the Payload of a raw-bytes request: the body is the image, the ids are query parameters."""
    ids = {name: _check_id(name, args.get(name)) for name in ID_FIELDS}
    if not body:
        raise InvalidInput("the body is empty; send the image's bytes", field="image")
    return Payload(image=body, max_image_pixels=max_image_pixels, **ids)


def parse_request(content_type: str | None, body: bytes, args: Mapping[str, str], max_image_pixels: int) -> Payload:
    """Dispatch on Content-Type: JSON (the default) or raw image bytes."""
    mimetype = (content_type or "application/json").split(";", 1)[0].strip().lower()
    if mimetype == "application/json" or mimetype.endswith("+json"):
        return parse_json_request(body, max_image_pixels)
    if mimetype.startswith(RAW_TYPES):
        return parse_raw_request(body, args, max_image_pixels)
    raise UnsupportedMediaType(f"Content-Type {mimetype!r} is not read here; send application/json, or the raw "
                               f"image as application/octet-stream", field="Content-Type")


def ids_of(payload: Payload | None) -> dict[str, Any]:
    if payload is None:
        return dict.fromkeys(ID_FIELDS)
    return {"postid": payload.postid, "uid": payload.uid, "seqid": payload.seqid}


def success_body(payload: Payload, results: Any) -> dict[str, Any]:
    return {**ids_of(payload), "results": results, "msg": "ok"}


def error_body(error: ServingError, payload: Payload | None = None) -> dict[str, Any]:
    return {**ids_of(payload), "results": None, "msg": error.message, "error": error.code, "field": error.field}


def _check_id(name: str, value: Any) -> Any:
    if value is None or (isinstance(value, (str, int)) and not isinstance(value, bool)):
        if isinstance(value, str) and len(value) > 256:
            raise InvalidInput(f"'{name}' is {len(value)} characters long; keep ids under 256", field=name)
        return value
    raise InvalidInput(f"'{name}' must be a string or an integer, not {type(value).__name__}", field=name)


def _decode_base64(value: Any) -> bytes:
    if not isinstance(value, str):
        raise InvalidInput(f"'image' must be a base64 string, not {type(value).__name__}; or send the raw bytes "
                           f"with Content-Type: application/octet-stream", field="image")
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
    raise InvalidInput(f"'image' is not valid base64: {where}; send standard base64 (A-Z a-z 0-9 + / with = "
                       f"padding), or the raw bytes with Content-Type: application/octet-stream", field="image")
