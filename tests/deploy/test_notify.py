"""The notification: the deploy's result POSTed as JSON; a receiver that is down is logged, never fatal."""

from __future__ import annotations

from fake_kube import Deploy
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


TOKEN = "SECRET123abc"


def test_a_url_pasted_without_https_is_a_warning_naming_the_variable_and_never_shows_the_token():
    said = []
    url = f"oapi.dingtalk.com/robot/send?access_token={TOKEN}"
    assert notify.send({"outcome": "serving"}, {notify.URL_VARIABLE: url}, said.append) is False
    (line,) = said
    assert "was not delivered" in line and "must start with https://" in line and notify.URL_VARIABLE in line
    assert TOKEN not in line and "robot" not in line


def test_a_failing_url_is_logged_by_its_scheme_and_host_only():
    """http.client quotes the URL in InvalidURL (a space in it), as urllib does in its errors: only the exception's
    type and the URL's scheme and host are logged, never its user, path or query."""
    receiver, down = Receiver(), free_port()
    try:
        host = receiver.url.rsplit("/", 1)[0]
        cases = {f"{receiver.url}?access_token={TOKEN} x": f"was not delivered (InvalidURL, to {host})",
                 f"http://127.0.0.1:{down}/send?access_token={TOKEN}": f"was not delivered (URLError, to "
                                                                        f"http://127.0.0.1:{down})",
                 f"http://robot:{TOKEN}@127.0.0.1:{down}/": f"was not delivered (URLError, to http://127.0.0.1:{down})"}
        for url, says in cases.items():
            said = []
            assert notify.send({"outcome": "serving"}, {notify.URL_VARIABLE: url}, said.append) is False
            (line,) = said
            assert says in line and "the deploy's result stands" in line, line
            assert TOKEN not in line and "hook" not in line and "send" not in line and "robot" not in line, line
        assert receiver.bodies == []
    finally:
        receiver.stop()


def test_a_notification_that_fails_leaves_no_token_in_the_log_and_the_exit_status_as_it_was(monkeypatch, capsys):
    monkeypatch.setenv(notify.URL_VARIABLE, f"oapi.dingtalk.com/robot/send?access_token={TOKEN}")
    deploy = Deploy(monkeypatch, notify=True)
    assert deploy.apply("v1", "serving") == 0
    assert deploy.apply("v2", "failed", "serving") == 1  # rolled back
    captured = capsys.readouterr()
    assert captured.err.count(f"warning: the notification was not delivered: {notify.URL_VARIABLE}") == 2
    assert TOKEN not in captured.out + captured.err + deploy.output
