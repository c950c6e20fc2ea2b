"""The worker's wire format: a source message in, a result or a dead letter out.

A source message's value is the same JSON body as `POST /api/<service>` (ids plus one of
`image` (base64), `data` or `video`). A result is `{"postid", "uid", "seqid", "results"}`,
keyed like its input. A dead letter is the original message, value and key unchanged (so it
can be replayed as it is), with the error in its headers (`podserve-error`,
`podserve-error-message`, `podserve-error-field`) and where it came from
(`podserve-source-topic`, `-partition`, `-offset`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from podserve.errors import ServingError
from podserve.handler import Payload
from podserve.runtime.protocols import api

ERROR_HEADER = "podserve-error"
MESSAGE_HEADER = "podserve-error-message"
FIELD_HEADER = "podserve-error-field"
SOURCE_HEADERS = ("podserve-source-topic", "podserve-source-partition", "podserve-source-offset")


@dataclass(frozen=True)
class Outgoing:
    """One record for the sink or the dead-letter topic: key, value, headers."""

    key: bytes | None
    value: bytes
    headers: tuple[tuple[str, bytes], ...] = ()


def parse(value: bytes | None, limits: "api.InputLimits | int") -> Payload:
    """Return the Payload of a message value, or raise InvalidInput naming the field (as the HTTP route does)."""
    return api.parse_json_request(value or b"", limits)


def result(key: bytes | None, payload: Payload, results: Any) -> Outgoing:
    """The sink record of one input: keyed like it, with its ids and results (TypeError if not JSON-able)."""
    body = {**api.ids_of(payload), "results": results}
    return Outgoing(key, json.dumps(body, allow_nan=False).encode())


def dead_letter(message, error: ServingError) -> Outgoing:
    """The dead-letter record of a poison `message` (a confluent_kafka Message): itself, with the error in headers."""
    headers = [(ERROR_HEADER, error.code.encode()), (MESSAGE_HEADER, _text(getattr(error, "detail", error.message))[:4096])]
    if error.field:
        headers.append((FIELD_HEADER, _text(str(error.field))))
    headers += [(name, str(value).encode())
                for name, value in zip(SOURCE_HEADERS, (message.topic(), message.partition(), message.offset()))]
    return Outgoing(message.key(), message.value() or b"", tuple(headers))


def _text(value: str) -> bytes:
    """UTF-8 of an error's message or field, which may quote the caller's JSON: a lone surrogate there (valid JSON,
    `"\\udc00"`) has no UTF-8, and is written as its escape instead of failing the worker on its message."""
    return value.encode("utf-8", "backslashreplace")


def headers_dict(headers) -> dict[str, str]:
    """A message's headers (a list of (name, bytes) or None) as a dict of strings, for readers and tests."""
    return {name: (value or b"").decode(errors="replace") for name, value in (headers or [])}
