"""The notification: the deploy's result POSTed as JSON; a receiver that is down is logged, never fatal."""

from __future__ import annotations

from receiver import Receiver
from podserve.testbed.processes import free_port
from podserve.tooling.deploy import notify


def test_the_payload_names_the_service_stage_revision_outcome_diagnosis_and_pipeline():
    env = {"CI_PIPELINE_URL": "https://gitlab.example.com/p/-/pipelines/7", "CI_JOB_URL": "https://j/1"}
    body = notify.payload("svc", "hk", 4, "rolled_back", "The server was OOMKilled: ...", env)
    assert body == {"service": "svc", "stage": "hk", "revision": 4, "outcome": "rolled_back",
                    "diagnosis": "The server was OOMKilled: ...", "pipeline": "https://gitlab.example.com/p/-/pipelines/7",
                    "job": "https://j/1", "commit": None}


def test_a_receiver_gets_the_json():
    receiver = Receiver()
    try:
        assert notify.send({"outcome": "serving"}, {notify.URL_VARIABLE: receiver.url}) is True
        assert receiver.bodies == [{"outcome": "serving"}]
    finally:
        receiver.stop()


def test_a_receiver_that_is_down_is_logged_and_not_raised():
    said = []
    delivered = notify.send({"outcome": "serving"}, {notify.URL_VARIABLE: f"http://127.0.0.1:{free_port()}/"},
                            said.append)
    assert delivered is False
    assert len(said) == 1 and "was not delivered" in said[0] and "the deploy's result stands" in said[0]


def test_nothing_is_sent_without_the_variable():
    assert notify.send({"outcome": "serving"}, {}) is False
