"""The alert rules as the platform chart renders them: `promtool check rules`, and unit tests where every alert
fires on series that should trip it and stays quiet on series that should not (real promtool, Debian's package)."""

from __future__ import annotations

import importlib.util
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from podserve.tooling.observability import rules

RULES_DIR = Path(__file__).resolve().parent / "rules"


def _cases():
    spec = importlib.util.spec_from_file_location("rule_cases", RULES_DIR / "cases.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _subjects(case: dict, keys) -> set:
    """The distinct values of `keys` among a case's input series that carry them all."""
    found = set()
    for item in case["input"]:
        labels = dict(re.findall(r'(\w+)="([^"]*)"', item["series"]))
        if all(k in labels for k in keys):
            found.add(tuple(labels[k] for k in keys))
    return found


def _promtool(promtool, *args, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([promtool, *args], capture_output=True, text=True, timeout=120, cwd=cwd)


def test_promtool_checks_the_rules_the_chart_renders(promtool, chart_rules, obs, selectors):
    result = _promtool(promtool, "check", "rules", str(chart_rules), cwd=chart_rules.parent)
    assert result.returncode == 0, result.stdout + result.stderr
    expected = sum(len(g["rules"]) for g in rules.rule_groups(obs, selectors)["groups"])
    assert f"SUCCESS: {expected} rules found" in result.stdout


def test_the_committed_unit_tests_are_current():
    assert (RULES_DIR / "serving.test.yaml").read_text() == _cases().build(), \
        "serving.test.yaml is stale: run `PYTHONPATH=src python tests/observability/rules/cases.py`"


def test_every_alert_fires_on_its_case_and_stays_quiet_on_the_rest(promtool, chart_rules, tmp_path, obs, selectors):
    shutil.copy(chart_rules, tmp_path / "serving.yaml")
    shutil.copy(RULES_DIR / "serving.test.yaml", tmp_path / "serving.test.yaml")
    result = _promtool(promtool, "test", "rules", "serving.test.yaml", cwd=tmp_path)
    assert result.returncode == 0 and "SUCCESS" in result.stdout, result.stdout + result.stderr
    alerts = {a.name for a in rules.alerts(obs, selectors)}
    for alert in alerts:
        firing = [c for c in _cases().CASES if c["fire"].get(alert)]
        assert firing, f"{alert}: no unit test makes it fire"
        # The same case feeds series that must not trip it: more subjects (label sets an alert of this
        # kind would carry) in its input than alerts expected, and promtool checks there are no others.
        assert any(len(_subjects(c, c["fire"][alert][0].keys())) > len(c["fire"][alert]) for c in firing), \
            f"{alert}: no quiet series beside the one that trips it"
    checked = {t["alertname"] for test in yaml.safe_load((RULES_DIR / "serving.test.yaml").read_text())["tests"]
               for t in test["alert_rule_test"]}
    assert checked == alerts


def test_the_unit_tests_fail_when_a_threshold_is_wrong(promtool, chart_rules, tmp_path):
    """A rule made too lax (saturation at 150% of the queue) no longer fires where it must: promtool says so."""
    text = chart_rules.read_text()
    assert "podserve_queue_capacity) > 0.8" in text
    (tmp_path / "serving.yaml").write_text(text.replace("podserve_queue_capacity) > 0.8", "podserve_queue_capacity) > 1.5"))
    shutil.copy(RULES_DIR / "serving.test.yaml", tmp_path / "serving.test.yaml")
    result = _promtool(promtool, "test", "rules", "serving.test.yaml", cwd=tmp_path)
    assert result.returncode != 0 and "PodserveQueueSaturated" in result.stdout + result.stderr


#: Each limit alert weakened into "replicas differ": the cases must catch it on the quiet series beside it.
WEAKENED = {
    # pods not ready read as pods not created: fires on the pending pods the ReplicaSets did create
    "PodserveScaleUpRefused": lambda expr: re.sub(r" \+ rollout_info_replicas_unavailable\{[^}]*\}", "", expr)
    .replace("kube_deployment_status_replicas{", "kube_deployment_status_replicas_available{"),
    # ScalingLimited without "at its maximum": fires on the HPA limited at its minimum (TooFewReplicas)
    "PodserveScaleUpAtMax": lambda expr: expr.replace(">= on (namespace, horizontalpodautoscaler) max by",
                                                      "> 0 or on (namespace, horizontalpodautoscaler) max by"),
}


@pytest.mark.parametrize("alert", sorted(WEAKENED))
def test_the_limit_alerts_tell_which_limit_stopped_the_scale_up(promtool, chart_rules, tmp_path, alert):
    """Made to read only that replicas differ, each limit alert fires on a stage it must not name: promtool fails."""
    doc = yaml.safe_load(chart_rules.read_text())
    rule = next(r for g in doc["groups"] for r in g["rules"] if r.get("alert") == alert)
    weakened = WEAKENED[alert](rule["expr"])
    assert weakened != rule["expr"], f"{alert}: the rendered expression changed; update WEAKENED"
    rule["expr"] = weakened
    (tmp_path / "serving.yaml").write_text(yaml.safe_dump(doc, sort_keys=False, width=100_000))
    tests = yaml.safe_load((RULES_DIR / "serving.test.yaml").read_text())
    tests["tests"] = [t for t in tests["tests"] if t["name"].startswith("a stage at its limits")]
    (tmp_path / "serving.test.yaml").write_text(yaml.safe_dump(tests, sort_keys=False, width=100_000))
    result = _promtool(promtool, "test", "rules", "serving.test.yaml", cwd=tmp_path)
    assert result.returncode != 0 and alert in result.stdout + result.stderr, result.stdout + result.stderr
