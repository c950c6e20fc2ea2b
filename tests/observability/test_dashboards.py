"""The dashboards: committed JSON is what the code builds, valid against Grafana's schemas, and lint-clean."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest

import dashboard_lint as lint
from podserve.tooling.observability.__main__ import CHART, main

SCHEMAS = Path(__file__).resolve().parents[3] / "shared" / "schemas" / "grafana"
NAMES = ("podserve-service", "podserve-overview")


def _schema(name: str) -> dict:
    path = SCHEMAS / f"{name}.jsonschema.json"
    assert path.is_file(), f"{path} is missing: the Grafana schemas live in ../shared/schemas/grafana/"
    return json.loads(path.read_text())


def _errors(schema: dict, definition: str | None, instance) -> list[str]:
    if definition:
        schema = {"$ref": f"#/definitions/{definition}", "definitions": schema["definitions"]}
    validator = jsonschema.Draft7Validator(schema)
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(instance)]


def test_committed_files_are_what_make_dashboards_writes(generated_files):
    for relative, text in generated_files.items():
        path = CHART / relative
        assert path.is_file() and path.read_text(encoding="utf-8") == text, \
            f"{path} is not what the code builds: run `make dashboards` and commit"
    assert main(["--check"]) == 0
    assert sorted(p.stem for p in (CHART / "files" / "dashboards").glob("*.json")) == sorted(NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_dashboard_validates_against_grafana_schemas(models, name):
    model = models[name]
    problems = _errors(_schema("dashboard"), None, model)
    target_schema = _schema("prometheus")
    checked = 0
    for panel in lint.panels(model):
        kind = _schema(panel["type"])
        problems += [f"{panel['title']} options {e}" for e in _errors(kind, "Options", panel["options"])]
        custom = panel["fieldConfig"]["defaults"].get("custom", {})
        if "FieldConfig" in kind["definitions"]:
            problems += [f"{panel['title']} fieldConfig {e}" for e in _errors(kind, "FieldConfig", custom)]
        else:
            assert custom == {}, f"{panel['title']}: a {panel['type']} panel has no custom field config"
        for target in panel["targets"]:
            problems += [f"{panel['title']} target {e}" for e in _errors(target_schema, None, target)]
            checked += 1
    assert problems == []
    assert checked >= 15 if name == "podserve-service" else checked >= 9


def test_schemas_refuse_a_broken_panel(models):
    """The validation can fail: a wrong tooltip mode and a target without expr are refused."""
    panel = json.loads(json.dumps(lint.panels(models["podserve-service"])[0]))
    panel["options"]["tooltip"]["mode"] = "everything"
    assert _errors(_schema("timeseries"), "Options", panel["options"])
    assert _errors(_schema("prometheus"), None, {"refId": "A"})


@pytest.mark.parametrize("name", NAMES)
def test_dashboard_passes_lint_rules(models, name):
    model = models[name]
    problems = (lint.datasource_variable(model) + lint.titles_units_datasources(model) + lint.rate_intervals(model)
                + lint.counters_rated(model))
    if name == "podserve-service":
        problems += lint.filtered_by(model, ("cluster",), ("service", "pod", "namespace"))
    else:
        problems += lint.filtered_by(model, ("cluster", "stage"))
    assert problems == []


def test_lint_rules_catch_what_they_look_for(models):
    """Each rule finds its fault in a dashboard broken on purpose."""
    broken = json.loads(json.dumps(models["podserve-overview"]))
    panel = lint.panels(broken)[0]
    panel["fieldConfig"]["defaults"].pop("unit")
    panel["targets"][0]["expr"] = 'sum(podserve_requests_total{stage=~"$stage"}) + sum(rate(x_total{cluster=~"$cluster", stage=~"$stage"}[5m]))'
    broken["templating"]["list"] = broken["templating"]["list"][1:]
    assert lint.titles_units_datasources(broken) == [f"{panel['title']}: no unit"]
    assert lint.rate_intervals(broken) == [f"{panel['title']}: rate() over [5m] instead of [$__rate_interval]"]
    assert lint.counters_rated(broken) == [f"{panel['title']}: counter podserve_requests_total is used without rate() first"]
    assert len(lint.filtered_by(broken, ("cluster", "stage"))) == 1
    assert lint.datasource_variable(broken)


def test_service_dashboard_has_the_variables_and_panels_the_issue_asks_for(models):
    model = models["podserve-service"]
    assert [v["name"] for v in model["templating"]["list"]] == ["datasource", "cluster", "stage", "service",
                                                                "namespace", "pod"]
    exprs = " ".join(t["expr"] for p in lint.panels(model) for t in p["targets"])
    for needle in ("podserve_requests_total", "histogram_quantile(0.99", "podserve_queue_wait_seconds_bucket",
                   "podserve_inference_seconds_bucket", "podserve_batch_size_bucket", "podserve_max_batch_size",
                   "podserve_batch_limit", "podserve_padded_rows_total",
                   "podserve_queue_depth", "podserve_queue_capacity", "podserve_in_flight_requests",
                   "podserve_http_backlog", "podserve_loop_relief", "podserve_refusal_rate",
                   "podserve_instance_ready", "kube_pod_container_status_restarts_total", "podserve_model_load_seconds",
                   "podserve_warmup_seconds", "podserve_runtime_faults_total", "DCGM_FI_DEV_GPU_UTIL", "DCGM_FI_DEV_FB_USED",
                   "podserve_gpu_memory_limit_bytes", 'istio_request_duration_milliseconds_bucket',
                   'reporter="destination"', "by (track)", 'status=~"503|504"',
                   # the Scaling row: what stopped a scale-up, and the metric against its target
                   "podserve_pod:queue_backlog:mean1m", "keda_scaler_metrics_value",
                   "kube_horizontalpodautoscaler_spec_target_metric", "kube_horizontalpodautoscaler_spec_max_replicas",
                   "rollout_info_replicas_unavailable", "kube_deployment_status_replicas{"):
        assert needle in exprs, needle
    assert any(a.get("expr") for a in model["annotations"]["list"]), "no deploy (pod start) annotation"
