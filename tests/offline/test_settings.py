"""The worker's settings: value.py -> environment -> the worker, and clear errors when one is missing."""

from __future__ import annotations

import subprocess
import sys

import pytest

from kafka_workers import REPO
from podserve.offline_settings import BOOTSTRAP_ENV, LOCAL_KAFKA_BOOTSTRAP, OfflineSettings
from podserve.settings import SettingsError
from podserve.tooling.serve_local import ENTRY_POINTS, local_environment
from podserve.tooling.values import load_values

EXAMPLE = REPO / "examples" / "offline" / "value.py"


def test_the_example_becomes_the_workers_environment_with_the_local_broker_by_default():
    env = local_environment(str(EXAMPLE), {})
    assert env[BOOTSTRAP_ENV] == LOCAL_KAFKA_BOOTSTRAP
    settings = OfflineSettings.from_env(env)
    assert (settings.source_topic, settings.sink_topic, settings.dead_letter_topic, settings.consumer_group) == \
        ("like.text-lines", "like.text-directions", "like.text-lines-dead", "like.text-direction-offline")
    assert local_environment(str(EXAMPLE), {BOOTSTRAP_ENV: "kafka:9092"})[BOOTSTRAP_ENV] == "kafka:9092"
    assert ENTRY_POINTS[load_values(EXAMPLE)["mode"]] == "podserve.runtime.offline"
    assert BOOTSTRAP_ENV not in OfflineSettings(kafka_bootstrap="x:1", source_topic="a").to_env()  # never rendered


def test_grey_reads_its_own_stream_with_its_own_group_and_writes_its_own_topics():
    grey = load_values(EXAMPLE).worker_settings(grey=True)
    assert (grey.source_topic, grey.consumer_group, grey.sink_topic, grey.dead_letter_topic) == \
        ("like.grey.text-lines", "like.grey.text-direction-offline", "like.grey.text-directions", "like.grey.text-lines-dead")


@pytest.mark.parametrize("env, says", [
    ({}, f"{BOOTSTRAP_ENV} is not set"),
    ({BOOTSTRAP_ENV: "k:9092", "PODSERVE_SOURCE_TOPIC": "a b"}, "PODSERVE_SOURCE_TOPIC='a b' must be a Kafka name"),
    ({BOOTSTRAP_ENV: "k:9092", "PODSERVE_SOURCE_TOPIC": "a", "PODSERVE_CONSUMER_GROUP": "g",
      "PODSERVE_DEAD_LETTER_TOPIC": "d"}, "set exactly one of PODSERVE_SINK_TOPIC and PODSERVE_SINK_FILE"),
])
def test_a_missing_or_bad_setting_is_named(env, says):
    with pytest.raises(SettingsError, match=says.replace("[", r"\[")):
        OfflineSettings.from_env(env)


def test_the_worker_exits_2_naming_what_is_missing():
    done = subprocess.run([sys.executable, "-m", "podserve.runtime.offline"], capture_output=True, text=True,
                          timeout=60, cwd=REPO, env={"PYTHONPATH": str(REPO / "src"), "PATH": "/usr/bin:/bin"})
    assert done.returncode == 2 and f"Error: {BOOTSTRAP_ENV} is not set" in done.stderr
