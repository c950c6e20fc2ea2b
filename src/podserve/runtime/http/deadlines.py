"""A request's deadline: the server's default, lowered (never raised) by the caller's headers, from its first byte.

A body larger than `max_body_bytes` (only a video may be) also gets its length at the platform's
`min_upload_bytes_per_second` on top, so that a large upload on a slow link is not cut by the deadline an
image needs.
"""

from __future__ import annotations

from podserve.errors import InvalidInput
from podserve.settings import ServingSettings
from podserve.stop_bounds import upload_seconds

#: Headers by which a caller (or Envoy, from the route's timeout) may shorten the deadline.
DEADLINE_HEADERS = ("X-Request-Timeout-Ms", "X-Envoy-Expected-Rq-Timeout-Ms")
_DEADLINE_KEYS = [(header, header.lower()) for header in DEADLINE_HEADERS]


def timeout_seconds(headers: dict[str, str], default_ms: float) -> float:
    """The request's time budget: the server's default, lowered by a header (InvalidInput naming a bad one)."""
    budget = default_ms
    for header, key in _DEADLINE_KEYS:
        raw = headers.get(key)
        if raw is None:
            continue
        try:
            asked = float(raw)
        except ValueError:
            raise InvalidInput(f"header {header}: {raw!r} is not a number of milliseconds", field=header) from None
        if not asked > 0:
            raise InvalidInput(f"header {header}: {raw!r} must be a positive number of milliseconds", field=header)
        budget = min(budget, asked)
    return budget / 1000.0


class Budgets:
    """The time budgets of the requests to one pod (its settings' default deadline and upload rate)."""

    def __init__(self, settings: ServingSettings):
        self.settings = settings

    def of_headers(self, headers: dict[str, str]) -> float:
        """The budget from the headers (the default when they are unreadable: the request is refused later, naming
        why), with a large body's upload time (`upload_seconds`) from its Content-Length."""
        try:
            budget = timeout_seconds(headers, self.settings.request_timeout_ms)
        except InvalidInput:
            budget = self.settings.request_timeout_ms / 1000.0
        raw = headers.get("content-length") or ""
        return budget + self.upload_seconds(int(raw) if raw.isdigit() else 0)

    def of_request(self, headers: dict[str, str], body_length: int) -> tuple[float, InvalidInput | None]:
        """(the budget of a request read whole, the error its headers hold or None)."""
        try:
            return timeout_seconds(headers, self.settings.request_timeout_ms) + self.upload_seconds(body_length), None
        except InvalidInput as exc:
            return self.settings.request_timeout_ms / 1000.0, exc

    def upload_seconds(self, length: int) -> float:
        """The upload-rate rule: a body of `length` bytes over max_body_bytes gets its length at the platform's
        min_upload_bytes_per_second on top of the request's deadline. A chunked body's length is known only as it
        arrives: the front end extends its body deadline by the same rule chunk by chunk
        (HttpLimits.min_upload_bytes_per_second), never by the largest video's up front, which would let a chunk
        flood hold the pod's body budget for minutes."""
        return upload_seconds(self.settings, length)
