"""The test broker's own pieces that need no broker."""

from __future__ import annotations

import base64
import uuid

from podserve.testbed import kafka


def test_a_cluster_id_never_starts_with_a_dash(monkeypatch):
    """One random id in 64 began with "-", and `kafka-storage format -t -xyz...` read it as an option: every
    offline test of that session errored ("argument --cluster-id/-t: expected one argument")."""
    dashed = uuid.UUID(bytes=b"\xf8" + bytes(15))  # its base64 begins with "-"
    plain = uuid.UUID(bytes=b"\x01" + bytes(15))
    assert base64.urlsafe_b64encode(dashed.bytes).decode().startswith("-")
    draws = iter([dashed, plain])
    monkeypatch.setattr(kafka.uuid, "uuid4", lambda: next(draws))
    assert kafka.cluster_id() == base64.urlsafe_b64encode(plain.bytes).decode().rstrip("=")
