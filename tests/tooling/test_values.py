"""value.py fields: defaults, normalised values, the server's settings, and the example's own comments."""

from __future__ import annotations

import dataclasses
import re

from manifest_helpers import REPO
from podserve.settings import ServingSettings
from podserve.tooling import render
from podserve.tooling.conf import load_conf
from podserve.tooling.values import FIELDS, REQUIRED, load_values
from service_files import write_values


def test_left_out_fields_take_their_defaults(tmp_path, conf):
    values = load_values(write_values(tmp_path, remove=("hk_replicas", "max_batch_size", "cpu")), conf)
    assert values["hk_replicas"] == values["replicas"] == 2
    assert values["max_batch_size"] == ServingSettings().max_batch_size
    assert values["cpu"] == 4 and values["autoscale_target"] == values["max_batch_size"]


def test_cpu_quantities_become_cores(tmp_path, conf):
    assert load_values(write_values(tmp_path, cpu="1500m"), conf)["cpu"] == 1.5
    assert load_values(write_values(tmp_path, cpu=2.0), conf)["cpu"] == 2


def test_serving_settings_round_trip_through_the_environment(tmp_path, conf):
    settings = load_values(write_values(tmp_path, cpu="500m", max_batch_delay_ms=2.5), conf).serving_settings()
    assert ServingSettings.from_env(settings.to_env()) == settings
    assert settings.cpu == 0.5 and settings.max_batch_size == 16 and settings.host == "0.0.0.0"


def test_load_values_keeps_its_one_argument_form():
    """`make serve` (serve_local) calls load_values(path) with the repository's conf/."""
    values = load_values(REPO / "value.py")
    assert values["service_name"] == "text-direction" and values["max_batch_size"] == 16


def test_every_field_is_documented_in_the_example_value_py():
    text = (REPO / "value.py").read_text()
    for name in FIELDS:
        assert re.search(rf"^#? ?{name} = .+#", text, re.M), f"value.py does not show and explain {name}"


def test_every_server_setting_a_service_may_set_is_a_field_and_the_platforms_are_not():
    platform_owned = {"host", "port", *ServingSettings.platform_names()}
    derived = ServingSettings.derived_names()
    assert set(derived.values()) <= set(FIELDS)  # memory_bytes is value.py's memory
    assert set(ServingSettings.names()) - platform_owned - set(derived) <= set(FIELDS)
    assert not set(ServingSettings.platform_names()) & set(FIELDS)


def test_the_platforms_http_limits_reach_the_pods_environment_from_conf():
    """conf/platform.yaml's `http` section is every platform-owned setting, and what it says is what pods get."""
    conf = load_conf()
    assert set(dataclasses.asdict(conf.platform.http)) == set(ServingSettings.platform_names())
    changed = dataclasses.replace(conf.platform.http, header_timeout_seconds=7.5, max_connections=321)
    conf = dataclasses.replace(conf, platform=dataclasses.replace(conf.platform, http=changed))
    settings = load_values(REPO / "value.py", conf).serving_settings()
    assert (settings.header_timeout_seconds, settings.max_connections) == (7.5, 321)
    [deployment] = [doc for doc in render.render(REPO / "value.py", stages=["hk"], conf=conf).stages["hk"]
                    if doc["kind"] == "Rollout"]
    env = {item["name"]: item["value"] for item in deployment["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["PODSERVE_HEADER_TIMEOUT_SECONDS"] == "7.5" and env["PODSERVE_MAX_CONNECTIONS"] == "321"
    assert [name for name, field in FIELDS.items() if field.default is REQUIRED] == ["service_name", "username"]
