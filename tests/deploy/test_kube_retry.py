"""Reads retry with back-off on a 429, 5xx or unreachable server; writes never do (issue 26). No cluster: a stub of the
official client's two calls the tool uses (param_serialize, call_api), answering from a script."""

from __future__ import annotations

import pytest

from podserve.tooling.deploy import kube
from podserve.tooling.deploy.errors import ClusterError
from podserve.tooling.deploy.kube import CONFIGMAPS, Kube


class Answer:
    def __init__(self, status: int, body: bytes):
        self.status, self.body = status, body

    def read(self) -> bytes:
        return self.body


class ScriptedApi:
    """Answers each call with the next scripted status (a body for 200), counting the calls."""

    def __init__(self, *statuses: int):
        self.statuses, self.calls = list(statuses), []

    def param_serialize(self, method, path, **_):
        return method, path, {}, None, None

    def call_api(self, method, url, **_):
        self.calls.append(method)
        status = self.statuses.pop(0)
        if status == 0:
            raise ConnectionResetError("connection reset by peer")
        return Answer(status, b'{"metadata": {"name": "h"}}' if status == 200 else b'{"message": "etcd timeout"}')


@pytest.fixture(autouse=True)
def no_pauses(monkeypatch):
    monkeypatch.setattr(kube, "READ_RETRY_PAUSES", (0, 0, 0, 0))


def test_a_read_is_retried_through_5xx_429_and_a_reset_connection():
    api = ScriptedApi(503, 0, 429, 200)
    assert Kube(api).get(CONFIGMAPS, "n", "h") == {"metadata": {"name": "h"}}
    assert api.calls == ["GET"] * 4


def test_a_read_gives_up_after_the_pauses_with_the_server_s_answer():
    api = ScriptedApi(*[500] * 5)
    with pytest.raises(ClusterError) as raised:
        Kube(api).get(CONFIGMAPS, "n", "h")
    assert raised.value.status == 500 and "etcd timeout" in raised.value.message and len(api.calls) == 5


def test_a_write_is_never_retried_and_a_404_read_is_an_answer():
    api = ScriptedApi(503)
    with pytest.raises(ClusterError):
        Kube(api).apply({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "s", "namespace": "n"}})
    assert api.calls == ["PATCH"]
    api = ScriptedApi(404)
    assert Kube(api).get(CONFIGMAPS, "n", "h") is None and api.calls == ["GET"]
