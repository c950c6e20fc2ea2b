"""The platform's Kafka access is rendered from conf/teams.yaml (one team list): each team's two principals, their
prefixed ACLs and nothing else; the Secret and the worker's env carry the principal from the cluster, never the repo.
On the real broker: tests/offline/test_kafka_acls.py."""

from __future__ import annotations

import subprocess
import sys

import pytest

from manifest_helpers import REPO
from podserve import kafka_access
from podserve.offline_settings import OfflineSettings
from podserve.settings import ServingSettings
from podserve.tooling import kafka_acls
from podserve.tooling.conf import load_conf


def test_every_team_of_conf_has_a_production_and_a_grey_principal_and_only_its_own_prefixes():
    conf = load_conf()
    bindings = kafka_acls.bindings(conf)
    assert {b.principal for b in bindings} == {f"User:{t}{s}" for t in conf.teams for s in ("", "-grey")}
    for binding in bindings:
        team, grey = kafka_access.owner(binding.principal.removeprefix("User:"))
        assert binding.prefix.startswith(f"{team}.")  # never another team's prefix
        if grey:  # grey reads, writes, creates and joins only its own stream: never production's topics (any branch)
            assert binding.prefix == f"{team}.grey."
    # team names hold no dots: no team's prefix is another's (a prefixed ACL on "like." covers nothing of "likes.")
    prefixes = {b.prefix for b in bindings if not b.prefix.endswith(".grey.")}
    assert all(not a.startswith(b) for a in prefixes for b in prefixes if a != b)


def test_show_prints_the_acls_as_kafka_acls_would_be_told_them():
    done = subprocess.run([sys.executable, "-m", "podserve.tooling.kafka_acls", "show"], capture_output=True,
                          text=True, cwd=REPO, timeout=60)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert len(lines) == len(kafka_acls.bindings(load_conf()))
    assert ("kafka-acls.sh --add --allow-principal User:imo-grey --operation WRITE --resource-pattern-type prefixed "
            "--topic imo.grey.") in lines
    assert not any("User:imo-grey --operation WRITE" in line and line.endswith("--topic imo.") for line in lines)


def test_the_secret_holds_the_principal_for_the_worker_and_keda_and_nothing_reaches_the_pod_s_values():
    doc = kafka_acls.secret("podserve-imo-grey", "imo-grey", "s3cret")
    assert doc["metadata"]["name"] == kafka_access.CREDENTIALS_SECRET
    assert doc["stringData"]["username"] == "imo-grey" and doc["stringData"]["password"] == "s3cret"
    assert doc["stringData"]["tls"] == "enable" and kafka_acls.secret("n", "u", "p", "SASL_PLAINTEXT")["stringData"]["tls"] == "disable"
    keda = kafka_acls.trigger_authentication("podserve-imo-grey")["spec"]["secretTargetRef"]
    assert {ref["name"] for ref in keda} == {kafka_access.CREDENTIALS_SECRET}
    assert {ref["parameter"]: ref["key"] for ref in keda} == {"username": "username", "password": "password",
                                                             "sasl": "sasl", "tls": "tls"}
    assert kafka_acls.worker_namespaces(load_conf(), "hk") == {
        **{f"podserve-{t}": t for t in load_conf().teams}, **{f"podserve-{t}-grey": f"{t}-grey" for t in load_conf().teams}}
    settings = OfflineSettings(source_topic="imo.a", consumer_group="imo.g", sink_topic="imo.b",
                               dead_letter_topic="imo.c", kafka_bootstrap="b:9092", kafka_username="imo",
                               kafka_password="s3cret", kafka_security_protocol="SASL_SSL")
    assert not any(name.startswith("PODSERVE_KAFKA_") for name in settings.to_env())  # never rendered or logged
    assert settings.client_config() == {"bootstrap.servers": "b:9092", "security.protocol": "SASL_SSL",
                                        "sasl.mechanism": "SCRAM-SHA-512", "sasl.username": "imo",
                                        "sasl.password": "s3cret"}
    for field, env in (("kafka_username", kafka_access.USERNAME_ENV), ("kafka_password", kafka_access.PASSWORD_ENV),
                       ("kafka_security_protocol", kafka_access.SECURITY_PROTOCOL_ENV)):
        assert ServingSettings.env_name(field) == env  # the worker reads what the manifests and the Secret give


def test_a_refusal_names_the_topic_the_principal_the_error_and_what_is_granted():
    assert kafka_access.refusal("topic", "teamb.x", "imo", "TOPIC_AUTHORIZATION_FAILED") == (
        "Kafka refused topic 'teamb.x' to principal 'User:imo': TOPIC_AUTHORIZATION_FAILED; the platform grants team "
        "'imo' only topics 'imo.*' and consumer groups 'imo.*'")
    grey = kafka_access.refusal("consumer group", "imo.text-direction", "imo-grey", "GROUP_AUTHORIZATION_FAILED")
    assert "to principal 'User:imo-grey'" in grey and "consumer groups 'imo.grey.*'" in grey


def test_a_team_whose_name_ends_in_the_grey_suffix_is_refused_naming_why(tmp_path):
    """Team 'like-grey' would authenticate as team like's grey principal (and like's grey as it): conf refuses it."""
    import shutil

    import yaml

    from podserve.tooling.conf import ConfError

    conf = tmp_path / "conf"
    shutil.copytree(REPO / "conf", conf)
    teams = yaml.safe_load((conf / "teams.yaml").read_text())
    teams["teams"]["like" + kafka_access.GREY_USER_SUFFIX] = teams["teams"]["like"]
    (conf / "teams.yaml").write_text(yaml.safe_dump(teams))
    with pytest.raises(ConfError, match=r"'like-grey' must not end in '-grey': its Kafka principal would be team "
                                        r"'like''s grey one"):
        load_conf(conf)

