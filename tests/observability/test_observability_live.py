"""Every dashboard query and every rule expression, through a real Prometheus scraping real servers under load.

Real: four server processes started as `make serve` starts them (value.py's settings, the example
model, small queues), a real Prometheus (Debian's package) scraping each every second with the
labels the rendered PodMonitor gives a pod, and evaluating the chart's rendered rules. Three (hk and
grey) take a burst that overloads them; the fourth, alone in stage ab, one ordinary burst from a
single caller (no 503, 504 or 500, no batch held open), and every dashboard query must return data
for it alone too.
Simulated (see podserve.testbed): Kubernetes itself (no pods, so the PodMonitor's labels are
static target labels), the mesh and the GPUs. So Istio, dcgm-exporter and kube-state-metrics
series do not exist here: queries over them are checked only for syntax (Prometheus parses
them) and for using the metric and label names those exporters document.
"""

from __future__ import annotations

import dataclasses
import re
import time

import pytest

from podserve import metric_names as m
from podserve.testbed.prometheus import Prometheus
from podserve.testbed.served_pods import BUSY_SETTINGS, REPO, send_traffic, start_pods, stop_pods
from podserve.testbed.server_logs import runtime_faults
from podserve.tooling.conf import load_conf
from podserve.tooling.observability import dashboards, rules
from podserve.tooling.observability.queries import expand
from podserve.tooling.values import load_values

SELECTOR = re.compile(r"([a-zA-Z_:][a-zA-Z0-9_:]*)\s*\{([^{}]*)\}")
MATCHER = re.compile(r'(\w+)\s*(?:=~|!~|!=|=)\s*"')
# Names the exporters document (Istio standard metrics; dcgm-exporter's default counters; kube-state-metrics;
# Argo Rollouts' and KEDA's controllers).
DOCUMENTED = {
    "istio": ({"istio_requests_total", "istio_request_duration_milliseconds_bucket"},
              {"reporter", "destination_workload", "destination_workload_namespace", "destination_service",
               "response_code", "response_flags", "source_workload", "le"}),
    "dcgm": ({"DCGM_FI_DEV_GPU_UTIL", "DCGM_FI_DEV_FB_USED", "DCGM_FI_DEV_FB_FREE"},
             {"gpu", "UUID", "pod", "namespace", "container", "exported_pod", "exported_namespace"}),
    "kube": ({"kube_pod_status_ready", "kube_deployment_spec_replicas", "kube_deployment_status_replicas_available",
              "kube_deployment_status_replicas", "kube_pod_container_status_restarts_total", "kube_replicaset_created",
              "kube_horizontalpodautoscaler_status_condition", "kube_horizontalpodautoscaler_status_desired_replicas",
              "kube_horizontalpodautoscaler_status_current_replicas", "kube_horizontalpodautoscaler_spec_max_replicas",
              "kube_horizontalpodautoscaler_spec_target_metric"},
             {"namespace", "pod", "container", "deployment", "condition", "status", "replicaset",
              "horizontalpodautoscaler", "metric_name", "metric_target_type"}),
    "rollouts": ({"rollout_info", "rollout_info_replicas_desired", "rollout_info_replicas_available",
                  "rollout_info_replicas_unavailable"},
                 {"namespace", "name", "phase", "strategy", "traffic_router"}),
    # KEDA v2.21 pkg/metricscollector/prommetrics.go
    "keda": ({"keda_scaler_metrics_value"}, {"namespace", "metric", "scaledObject", "scaler", "triggerIndex", "type"}),
}
SCRAPE_SECONDS, INTERVAL_SECONDS = 1.0, 9.0   # $__rate_interval = 10s


def _source(name: str) -> str:
    if name in m.OFFLINE_METRICS:
        return "offline"  # an offline worker's: tests/offline/test_offline_observability.py
    if name.startswith(("podserve_", "podserve:")) or name == "process_start_time_seconds":
        return "ours"
    if name.startswith("istio_"):
        return "istio"
    if name.startswith("DCGM_"):
        return "dcgm"
    if name.startswith("kube_"):
        return "kube"
    if name.startswith("rollout_"):
        return "rollouts"
    if name.startswith("keda_"):
        return "keda"
    raise AssertionError(f"{name}: a metric of no known exporter")


def _check_documented(expr: str, platform_labels: set[str]) -> list[str]:
    problems = []
    for name, matchers in SELECTOR.findall(expr):
        source = _source(name)
        if source in ("ours", "offline"):
            continue
        metrics, labels = DOCUMENTED[source]
        if name not in metrics:
            problems.append(f"{name} is not a documented {source} metric")
        for label in MATCHER.findall(matchers):
            if label not in labels | platform_labels:
                problems.append(f"{name}: label {label} is not documented for {source}")
    return problems


#: The stage of the pod that serves only one ordinary burst.
QUIET_STAGE = "ab"


@pytest.fixture(scope="module")
def live(tmp_path_factory, chart_rules):
    """Pods, Prometheus, and the time right after a bounded burst of good, bad, overload and deadline requests
    (and, to the quiet pod, one ordinary burst)."""
    workdir = tmp_path_factory.mktemp("live")
    pods = start_pods(workdir, {"hk": 2, "grey": 1, QUIET_STAGE: 1})
    busy = [pod for pod in pods if pod.stage != QUIET_STAGE]
    prom = None
    try:
        prom = Prometheus(workdir / "prometheus", [p.target for p in pods], [chart_rules],
                          scrape_interval="1s").start()
        prom.wait_for(m.MAX_BATCH_SIZE)
        quiet = send_traffic([pod for pod in pods if pod.stage == QUIET_STAGE], 3, 1)
        assert quiet[200] > 0 and 503 not in quiet, f"the quiet pod's burst should be ordinary: {quiet}"
        counts = send_traffic(busy, 4, 3) + send_traffic(busy, 6, 24)
        time.sleep(3)  # three more scrapes and rule evaluations
        yield prom, pods, counts, time.time()
    finally:
        if prom is not None:
            prom.stop()
        stop_pods(pods)


def test_the_burst_brought_every_kind_of_answer(live):
    prom, pods, counts, at = live
    print(f"burst answers by status: {dict(sorted(counts.items()))}")
    for status in (200, 400, 503, 504):
        assert counts[status] > 0, f"no {status} in the burst: {counts}"
    seen = {r["metric"]["status"] for r in prom.query(f"sum by (status) ({m.REQUESTS_TOTAL})", at)}
    assert {"200", "400", "503", "504"} <= seen


def test_the_burst_hit_no_fault_of_the_runtime_s_own(live):
    """Its 5 ms deadlines end requests mid-decode, its overload refuses them at the door, its bad bodies fail their
    parse: however each was answered, no pod logged a fault of its own (the runtime's RUNTIME_FAULT records)."""
    _, pods, _, _ = live
    faults = {pod.name: runtime_faults(pod.program.log_path.read_text(errors="replace")) for pod in pods}
    assert not any(faults.values()), faults


def test_a_busy_pod_s_scrape_stays_far_under_the_caps_every_pod_monitor_carries(live):
    """Issue 68: one scrape of a pod after the burst (every route, status and origin seen) brings a quarter of
    conf/platform.yaml monitoring.scrape_sample_limit at most, and no series more labels than scrape_label_limit less
    the target's own (the test bed's Prometheus holds both caps: a scrape past either fails whole)."""
    prom, pods, _, at = live
    monitoring = load_conf().platform.monitoring
    scraped = {r["metric"]["instance"]: float(r["value"][1]) for r in prom.query("scrape_samples_scraped", at)}
    series = prom.api("series", **{"match[]": '{job!=""}', "start": f"{at - 60:.3f}", "end": f"{at:.3f}"})
    labels = max(len(s) for s in series)  # __name__ included, as Prometheus counts them for label_limit
    print(f"samples per scrape: {sorted(scraped.values())} (cap {monitoring.scrape_sample_limit}); "
          f"most labels on a series: {labels} (cap {monitoring.scrape_label_limit})")
    assert len(scraped) == len(pods) and 0 < max(scraped.values()) <= monitoring.scrape_sample_limit / 4
    assert labels <= monitoring.scrape_label_limit * 3 // 4


def test_limits_are_exported_and_our_label_is_model_instance(live, obs):
    prom, pods, _, at = live
    settings = dataclasses.replace(load_values(REPO / "value.py").serving_settings(), **BUSY_SETTINGS)
    expected = {m.MAX_BATCH_SIZE: settings.max_batch_size, m.QUEUE_CAPACITY: settings.queue_size,
                m.REQUEST_TIMEOUT_SECONDS: settings.request_timeout_ms / 1000,
                m.STARTUP_BUDGET_SECONDS: settings.init_delay_second,
                m.GPU_MEMORY_LIMIT_BYTES: settings.gpu_memory * 1024 ** 3 if settings.gpu_num else 0,
                f'{m.SLO_OBJECTIVE}{{slo="availability"}}': settings.slo_availability}
    for name, value in expected.items():
        result = prom.query(name, at)
        assert {r["metric"]["pod"] for r in result} == {p.name for p in pods}, name
        assert all(float(r["value"][1]) == value for r in result), (name, result)
    ready = prom.query(m.INSTANCE_READY, at)
    labels = ready[0]["metric"]
    assert m.INSTANCE_LABEL in labels and "exported_instance" not in labels
    assert labels["instance"].startswith("127.0.0.1:")  # Prometheus' own label, untouched
    for key in ("namespace", "pod", "container", "endpoint", "job", "team", "stage", "track", obs.cluster_label):
        assert key in labels, f"the PodMonitor's label {key} is missing: {labels}"


@pytest.mark.parametrize("stage", [".*", QUIET_STAGE], ids=["every pod", "the pod after one ordinary burst"])
def test_every_dashboard_query_parses_and_ours_return_data(live, models, obs, stage):
    """Over every pod, and over the quiet pod alone: a series a query reads must exist before what it counts has
    happened (the quiet pod has refused nothing and held no batch open), or the panel shows no data."""
    prom, _, _, at = live
    variables = {"cluster": ".*", "stage": stage, "namespace": ".*", "pod": ".*", "service": "text-direction"}
    platform_labels = {"job", "instance", obs.cluster_label}
    empty, problems, ours, queries = [], [], 0, dashboards.queries(models)
    for dashboard, title, expr in queries:
        query = expand(expr, variables, INTERVAL_SECONDS, SCRAPE_SECONDS, 300)
        result = prom.query(query, at)  # raises QueryError if Prometheus cannot parse it
        sources = {_source(n) for n, _ in SELECTOR.findall(expr)}
        if sources == {"offline"}:
            continue  # no worker here: tests/offline/test_offline_observability.py
        if sources == {"ours"}:
            ours += 1
            if not result:
                empty.append(f"{dashboard}: {title}: {query}")
        else:
            problems += [f"{dashboard}: {title}: {p}" for p in _check_documented(expr, platform_labels)]
    assert empty == [] and problems == []
    assert ours >= 30
    print(f"{len(queries)} dashboard queries parsed; {ours} over our metrics returned data")


def test_every_dashboard_variable_finds_values(live, models):
    prom, _, _, _ = live
    for model in models.values():
        for variable in model["templating"]["list"]:
            if variable["type"] != "query":
                continue
            match = re.fullmatch(r"label_values\((.+), (\w+)\)", variable["query"])
            assert match, variable["query"]
            selector = expand(match.group(1), {"cluster": ".*", "stage": ".*", "service": "text-direction"}, 9, 1)
            values = prom.api(f"label/{match.group(2)}/values", **{"match[]": selector})
            assert values, f"variable {variable['name']} would list nothing: {variable['query']}"


def test_every_rule_parses_and_ours_return_data(live, obs, selectors):
    prom, _, _, at = live
    groups = rules.rule_groups(obs, selectors)["groups"]
    for rule in (r for g in groups for r in g["rules"] if "record" in r):
        assert prom.query(rule["expr"], at), f"recording rule {rule['record']} returned nothing"
        assert prom.query(rule["record"], at), f"Prometheus did not record {rule['record']}"
    platform_labels = {"job", "instance", obs.cluster_label}
    for alert in rules.alerts(obs, selectors):
        prom.query(alert.expr, at)  # parses
        if alert.source == "server":
            assert prom.query(alert.probe, at), f"{alert.name}: {alert.probe} returned nothing"
        elif alert.source != "offline":  # a worker's: tests/offline/test_offline_observability.py
            assert _check_documented(alert.expr, platform_labels) == [], alert.name
    loaded = prom.api("rules")["groups"]
    health = {r["name"]: (r["health"], r.get("lastError")) for g in loaded for r in g["rules"]}
    assert len(health) == sum(len(g["rules"]) for g in groups)
    assert all(h == "ok" for h, _ in health.values()), health


def test_the_overload_puts_the_shedding_alerts_on_their_way(live):
    """503s and 504s over 1% of requests: Prometheus has the alerts pending (they fire after `for`)."""
    prom, _, _, _ = live
    states = {a["labels"]["alertname"]: a["state"] for a in prom.api("alerts")["alerts"]}
    assert states.get("PodserveShedding") in ("pending", "firing"), states
    assert states.get("PodserveDeadlinesMissed") in ("pending", "firing"), states


def test_the_preview_draws_real_data(live, models, tmp_path):
    """What `make dashboards` draws: the overview's PNG from this Prometheus, every panel with data."""
    from podserve.testbed.previews import dashboard_variables, make_fetch
    from podserve.tooling.observability import preview

    prom, _, _, at = live
    fetch = make_fetch(prom, dashboard_variables(prom), at - 20, at, 2.0)
    path = tmp_path / "overview.png"
    found = preview.draw(models["podserve-overview"], fetch, path)
    assert path.read_bytes().startswith(b"\x89PNG") and path.stat().st_size > 10_000
    assert found and all(n > 0 for n in found.values()), found
