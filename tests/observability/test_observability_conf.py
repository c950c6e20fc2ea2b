"""conf/observability.yaml: read and checked; a mistake names the key and the fix."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

from podserve.tooling.conf import ConfError, load_observability
from podserve.tooling.observability.__main__ import main

CONF = Path(__file__).resolve().parents[2] / "conf"


def _broken(tmp_path: Path, change) -> Path:
    data = yaml.safe_load((CONF / "observability.yaml").read_text())
    change(data)
    (tmp_path / "observability.yaml").write_text(yaml.safe_dump(data))
    return tmp_path


def test_the_platform_defaults_load(obs):
    assert 0 < obs.slo.availability < 1 and obs.burn_rates.page and obs.burn_rates.ticket


@pytest.mark.parametrize("change, key, says", [
    (lambda d: d["slo"].update(latency_seconds=0.3), "slo.latency_seconds", "bucket bound"),
    (lambda d: d["slo"].update(availability=99.9), "slo.availability", "share between 0 and 1"),
    (lambda d: d["thresholds"].update(queue_saturated_for="5 minutes"), "thresholds.queue_saturated_for", "duration"),
    (lambda d: d["burn_rates"]["page"][0].update(long="an hour"), "burn_rates.page[0].long", "duration"),
    (lambda d: d.pop("cluster_label"), "cluster_label", "is missing"),
    (lambda d: d.update(colour="blue"), "colour", "not a known key"),
])
def test_a_mistake_names_the_key_and_the_fix(tmp_path, change, key, says):
    with pytest.raises(ConfError) as error:
        load_observability(_broken(tmp_path, change))
    assert key in str(error.value) and says in str(error.value)


def test_the_command_exits_2_on_bad_conf(tmp_path, monkeypatch, capsys):
    for name in ("platform", "teams", "regions", "stages"):
        shutil.copy(CONF / f"{name}.yaml", tmp_path / f"{name}.yaml")
    _broken(tmp_path, lambda d: d["slo"].update(latency_seconds=0.3))
    monkeypatch.setattr("podserve.tooling.conf.default_conf_dir", lambda: tmp_path)
    assert main(["--check"]) == 2
    assert "slo.latency_seconds" in capsys.readouterr().err


def test_a_rollout_is_stuck_only_past_the_longest_release_the_platform_allows(obs):
    """PodserveRolloutStuck waits rollout_stuck_for: longer than the most canary steps the platform allows, each
    judged as long as its analysis may take (analysis_template.metrics: slow start and a window, then a measurement
    a window until the sample is full, and once more)."""
    from podserve.tooling import analysis_template as at
    from podserve.tooling.conf import load_conf, load_deploy_policy

    conf, thresholds = load_conf(), at.Thresholds.of(load_deploy_policy().verdict)
    slow_start = int(conf.platform.mesh.slow_start.rstrip("s"))
    (metric, *_) = at.metrics(at.canary("ns", "team", "svc", "hk", thresholds, 15), "http://p", slow_start)
    per_step = slow_start + thresholds.window_seconds + (metric["count"] - 1) * thresholds.window_seconds
    longest = conf.platform.limits.max_canary_steps * per_step
    stuck = obs.thresholds.rollout_stuck_for
    assert stuck.endswith("m") and int(stuck[:-1]) * 60 > longest, (stuck, longest)
