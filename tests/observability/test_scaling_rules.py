"""The scaling signal's PromQL (podserve.tooling.scaling) under `promtool test rules`: the recorded per-pod series
as the platform chart renders them, and the sum render's ScaledObject asks KEDA for, on recorded pod series.

Every pod is scraped every 15 s; counters are the runtime's: the queue's wait summed over requests
(podserve_queue_wait_seconds_sum) and the part of it a free lane held a batch open
(podserve_batch_fill_wait_seconds_total), both per second a mean number of requests (Little's law). Prometheus
2.42 (Debian's) selects [t - 1m, t]: five samples, so each expected value below is the slope of the counters.
"""

from __future__ import annotations

import shutil
import subprocess

import yaml

from podserve import metric_names as m
from podserve.tooling import scaling

NAMESPACE, SERVICE = "podserve-like", "svc"
LABELS = {"namespace": NAMESPACE, "stage": "hk", "service": SERVICE}
WAIT, FILL = f"{m.QUEUE_WAIT_SECONDS}_sum", f"{m.BATCH_FILL_WAIT_SECONDS}_total"

#: pod: (queue wait, batch-fill wait) per 15 s scrape, in promtool's notation
PODS = {
    # 60 request-seconds queued per 15 s: 4 requests queued on average, 1 of them held for a fuller batch
    "overloaded": ("0+60x40", "0+15x40"),
    # the same load; its process restarted right after the 2m30 scrape (counters from 0: 60 and 15 at 2m45)
    "restarted": ("0+60x10 60+60x29", "0+15x10 15+15x29"),
    # starts at 5m: one sample at 5m (no rate yet), a full minute of the same load by 6m
    "new": ("_x20 0+60x20", "_x20 0+15x20"),
    # draining from 3m (no new request reaches it, nothing queued), its scrapes end after 7m
    "draining": ("0+60x12 720x15 stale", "0+15x12 180x15 stale"),
    # a light load: every queued second is a lane holding its batch open for more, none for want of a lane
    "light": ("0+15x40", "0+15x40"),
    # the fill counter a little ahead of the observed waits (it counts at the batch's start): never below 0
    "ahead": ("0+10x40", "0+15x40"),
}


def _series(name: str, pod: str, values: str) -> dict:
    inner = ", ".join(f'{k}="{v}"' for k, v in {**LABELS, "pod": pod}.items())
    return {"series": f"{name}{{{inner}}}", "values": values}


def _backlog(at: str, pods: dict[str, float]) -> dict:
    return {"eval_time": at, "expr": scaling.BACKLOG_SERIES,
            "exp_samples": [{"labels": f'{scaling.BACKLOG_SERIES}{{namespace="{NAMESPACE}", pod="{pod}", '
                                       f'service="{SERVICE}", stage="hk"}}', "value": value}
                            for pod, value in pods.items()]}


def _stage_sum(at: str, value: float, series: str = scaling.BACKLOG_SERIES) -> dict:
    """What KEDA asks Prometheus for: the trigger's query exactly as render writes it."""
    return {"eval_time": at, "expr": scaling.query(series, NAMESPACE, SERVICE), "exp_samples": [{"labels": "{}",
                                                                                                  "value": value}]}


def unit_tests() -> dict:
    inputs = [_series(name, pod, values) for pod, (wait, fill) in PODS.items()
              for name, values in ((WAIT, wait), (FILL, fill))]
    inputs.append(_series(m.IN_FLIGHT, "in-flight", "2x20 6x20"))
    return {"rule_files": ["serving.yaml"], "evaluation_interval": "15s", "tests": [{
        "name": "queued for want of a lane, per pod and summed over the stage: reset, new pod, draining pod",
        "interval": "15s", "input_series": inputs,
        "promql_expr_test": [
            # the restart's scrape is inside the window: rate() counts across the reset, the same 3 as its peer
            _backlog("3m", {"overloaded": 3, "restarted": 3, "draining": 3, "light": 0, "ahead": 0}),
            # the new pod has one sample: nothing yet (it counts in the HPA's divisor, not in the sum)
            _backlog("5m", {"overloaded": 3, "restarted": 3, "draining": 0, "light": 0, "ahead": 0}),
            _stage_sum("5m", 6),
            # a minute later the new pod's queue counts in full
            _backlog("6m", {"overloaded": 3, "restarted": 3, "new": 3, "draining": 0, "light": 0, "ahead": 0}),
            _stage_sum("6m", 9),
            # the drained pod's scrapes ended at 7m: a minute later it is gone from the series and the sum
            _backlog("8m15s", {"overloaded": 3, "restarted": 3, "new": 3, "light": 0, "ahead": 0}),
            _stage_sum("8m15s", 9),
            # autoscale_metric = "in_flight": the gauge's mean over the minute, per pod
            _stage_sum("5m", 2, scaling.IN_FLIGHT_SERIES),
            _stage_sum("10m", 6, scaling.IN_FLIGHT_SERIES),
        ]}]}


def _promtool(promtool, chart_rules, tmp_path, rules_text: str | None = None) -> subprocess.CompletedProcess:
    if rules_text is None:
        shutil.copy(chart_rules, tmp_path / "serving.yaml")
    else:
        (tmp_path / "serving.yaml").write_text(rules_text)
    (tmp_path / "scaling.test.yaml").write_text(yaml.safe_dump(unit_tests(), sort_keys=False))
    return subprocess.run([promtool, "test", "rules", "scaling.test.yaml"], capture_output=True, text=True,
                          timeout=120, cwd=tmp_path)


def test_the_scaling_series_count_a_pod_s_shortage_across_resets_new_and_draining_pods(promtool, chart_rules,
                                                                                        tmp_path):
    result = _promtool(promtool, chart_rules, tmp_path)
    assert result.returncode == 0 and "SUCCESS" in result.stdout, result.stdout + result.stderr


def test_the_cases_fail_when_the_batch_fill_wait_is_not_taken_out(promtool, chart_rules, tmp_path):
    """Raw queue time (the policy's hold counted as a shortage) reads the light pod as queued: promtool says so."""
    groups = yaml.safe_load(chart_rules.read_text())
    (rule,) = [r for g in groups["groups"] for r in g["rules"] if r.get("record") == scaling.BACKLOG_SERIES]
    subtracted = f"- sum by (namespace, service, stage, pod) (rate({FILL}[1m]))"
    assert subtracted in rule["expr"]
    rule["expr"] = rule["expr"].replace(subtracted, "- 0")
    result = _promtool(promtool, chart_rules, tmp_path, yaml.safe_dump(groups, sort_keys=False))
    assert result.returncode != 0 and 'pod="light"' in result.stdout + result.stderr, result.stdout + result.stderr
