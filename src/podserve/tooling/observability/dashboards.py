"""The two dashboards: one per service (pick it with the variables) and the platform overview, worst first."""

from __future__ import annotations

import json

from podserve import metric_names as m
from podserve.tooling import scaling
from podserve.tooling.conf import Observability
from podserve.tooling.observability.panels import DATASOURCE, Panel, Row, Target, dashboard, datasource_variable, \
    query_variable
from podserve.tooling.observability.queries import ERRORS, HPA_LABEL, MIB, SLO_REQUESTS, Selectors, budget_name, \
    keda_trigger_values, pods_not_created, quantile, recording_name

RATE = "$__rate_interval"


def _rate(metric: str, selector: str) -> str:
    return f"rate({metric}{{{selector}}}[{RATE}])"


def service_dashboard(obs: Observability, sel: Selectors) -> dict:
    """One service: traffic, errors, latency and its parts, batching, saturation, pods, GPU, mesh, grey vs stable."""
    cl = obs.cluster_label
    probe = f"{m.MAX_BATCH_SIZE}{{{cl}=~\"$cluster\""
    variables = [
        datasource_variable(),
        query_variable("cluster", "Cluster", f"label_values({m.MAX_BATCH_SIZE}, {cl})", multi=True,
                       include_all=True, all_value=".*"),
        query_variable("stage", "Stage", f"label_values({probe}}}, stage)", multi=True, include_all=True),
        query_variable("service", "Service", f'label_values({probe}, stage=~"$stage"}}, service)', multi=False,
                       include_all=False),
        query_variable("namespace", "Namespace", f'label_values({probe}, stage=~"$stage", service="$service"}}, '
                       "namespace)", multi=True, include_all=True, hide=2),
        query_variable("pod", "Pod", f'label_values({probe}, stage=~"$stage", service="$service"}}, pod)',
                       multi=True, include_all=True),
    ]
    s = f'{cl}=~"$cluster", stage=~"$stage", service="$service", pod=~"$pod"'
    slo = f"{s}, {SLO_REQUESTS}"
    kube = f'{obs.kube_state_metrics_selector}, {cl}=~"$cluster", namespace=~"$namespace"'
    rollouts = f'{obs.rollouts_selector}, {cl}=~"$cluster", namespace=~"$namespace"'
    keda_service = f'{obs.keda_selector}, {cl}=~"$cluster", namespace=~"$namespace", scaledObject="$service"'
    hpa = f'{kube}, {HPA_LABEL}="{scaling.HPA_PREFIX}$service"'
    mesh = (f'{cl}=~"$cluster", reporter="{obs.istio_reporter}", destination_workload="$service", '
            'destination_workload_namespace=~"$namespace"')
    dcgm = f'{cl}=~"$cluster", {sel.dcgm_filter("$pod", "$namespace")}'
    total = f"sum(rate({m.REQUESTS_TOTAL}{{{slo}}}[{RATE}]))"
    p = {q: f"p{int(q * 100)}" for q in (0.5, 0.95, 0.99)}
    traffic = Row("Traffic and errors", [
        Panel("timeseries", "Requests by status", "reqps", [Target(
            f"sum by (status) ({_rate(m.REQUESTS_TOTAL, s)})", "{{status}}")],
            "Answers per second by HTTP status: 2xx served, 4xx the caller's mistake, 5xx ours.", width=8),
        Panel("timeseries", "Error ratio (5xx)", "percentunit", [
            Target(f"sum(rate({m.REQUESTS_TOTAL}{{{slo}, {ERRORS}}}[{RATE}])) / {total}", "5xx share")],
            f"Share of requests answered 5xx; the platform's availability SLO allows {1 - obs.slo.availability:.4g} "
            "over 30 days, a service may set its own (the overview shows each service's burn rate).", width=8, min=0),
        Panel("timeseries", "Shed (503) and deadline (504) answers per pod", "reqps", [
            Target(f"sum by (pod, status) (rate({m.REQUESTS_TOTAL}{{{s}, "
                   f"status=~\"{m.STATUS_SHED}|{m.STATUS_DEADLINE}\"}}[{RATE}]))", "{{pod}} {{status}}"),
            Target(f"sum by (pod) ({m.REFUSAL_RATE}{{{s}}})", "{{pod}} 503s sent at once, most")],
            "503: a full queue (or not ready); 504: the deadline passed while queued, the request never ran. Past "
            "the door's rate (a share of a core over what a refusal costs the pod), 503s to callers retrying at "
            "once are held back, up to a second.", width=8),
    ])
    latency = Row("Latency", [
        Panel("timeseries", "Latency end to end", "s", [
            Target(quantile(q, m.REQUEST_SECONDS, slo, RATE), name) for q, name in p.items()],
            f"Seconds from request read to response, in the process; the SLO wants {obs.slo.latency_target:.4g} "
            f"under {obs.slo.latency_seconds}s.", width=8),
        Panel("timeseries", "Latency parts: queue wait and inference", "s", [
            Target(quantile(0.5, m.QUEUE_WAIT_SECONDS, s, RATE), "queue wait p50"),
            Target(quantile(0.99, m.QUEUE_WAIT_SECONDS, s, RATE), "queue wait p99"),
            Target(quantile(0.5, m.INFERENCE_SECONDS, s, RATE), "inference p50"),
            Target(quantile(0.99, m.INFERENCE_SECONDS, s, RATE), "inference p99"),
            Target(f"sum({_rate(m.BATCH_FILL_WAIT_SECONDS + '_total', s)}) / "
                   f"sum({_rate(m.QUEUE_WAIT_SECONDS + '_count', s)})", "held for a fuller batch (mean)")],
            "Queue wait grows with load (scale out); inference with the model, the GPU and the batch size. Held "
            "for a fuller batch: the part of the queue wait the batching policy chose (at most one call's fixed "
            "cost, within max_batch_delay_ms).",
            width=8),
        Panel("timeseries", "Mesh view against the server's (p99)", "s", [
            Target(f"histogram_quantile(0.99, sum by (le) (rate(istio_request_duration_milliseconds_bucket"
                   f"{{{mesh}}}[{RATE}]))) / 1000", "mesh p99 (Istio, server side)"),
            Target(quantile(0.99, m.REQUEST_SECONDS, slo, RATE), "server p99")],
            "Istio's sidecar measures from the pod's edge; the gap to the server's own is time in the proxy and "
            "the HTTP queue. Empty where the mesh is not installed.", width=8),
    ])
    batching = Row("Batching and saturation", [
        Panel("timeseries", "Batch size: mean against the limit", "none", [
            Target(f"sum({_rate(m.BATCH_SIZE + '_sum', s)}) / sum({_rate(m.BATCH_SIZE + '_count', s)})", "mean"),
            Target(f"max({m.BATCH_LIMIT}{{{s}}})", "limit"),
            Target(f"max({m.MAX_BATCH_SIZE}{{{s}}})", "max_batch_size")],
            "Inputs per predict call. The limit is max_batch_size, or on the CPU the runs that fit in "
            "max_batch_delay_ms (docs/server.md). Far under the limit under load: raise max_batch_delay_ms or "
            "the traffic is spread too thin.", width=4),
        Panel("timeseries", "Rows run that are padding", "percentunit", [
            Target(f"sum({_rate(m.PADDED_ROWS, s)}) / (sum({_rate(m.PADDED_ROWS, s)}) + "
                   f"sum({_rate(m.BATCH_SIZE + '_sum', s)}))", "padding share of the rows run")],
            "On a GPU every run is padded to one size, max_batch_size (one shape per session, docs/server.md): "
            "the share of the rows the model runs that are copies, not inputs. High while batches are small "
            "(light load); a device near its limit with a high share: lower max_batch_size. Always 0 on the CPU.",
            width=4, min=0, max=1),
        Panel("bargauge", "Batch size distribution", "short", [Target(
            f"sum by (le) ({_rate(m.BATCH_SIZE + '_bucket', s)})", "{{le}}", instant=True, format="heatmap")],
            "Batches per second of each size (Grafana turns the cumulative buckets into one bar per bucket).",
            width=4),
        Panel("timeseries", "Queue depth per pod against capacity", "short", [
            Target(f"sum by (pod) ({m.QUEUE_DEPTH}{{{s}}})", "{{pod}}"),
            Target(f"max(sum by (pod) ({m.QUEUE_CAPACITY}{{{s}}}))", "capacity (queue_size x instances)")],
            "Requests waiting per pod; uneven lines mean uneven balancing. At capacity the pod answers 503.",
            width=4),
        Panel("timeseries", "In flight against the admission limit, per pod", "short", [
            Target(f"sum by (pod) ({m.IN_FLIGHT}{{{s}}})", "{{pod}} in flight"),
            Target(f"sum by (pod) ({m.ADMISSION_LIMIT}{{{s}}})", "{{pod}} admission limit"),
            Target(f"sum by (pod) ({m.REFUSALS_HELD}{{{s}}})", "{{pod}} 503s held back")],
            "Accepted and not yet answered, against what the pod holds before it answers 503 (queue_size per "
            "instance); 503s are held back when callers retry faster than the door sends refusals.", width=4),
        Panel("timeseries", "Request threads: backlog and loop relief, per pod", "short", [
            Target(f"sum by (pod) ({m.HTTP_BACKLOG}{{{s}}})", "{{pod}} waiting for a request thread"),
            Target(f"max by (pod) ({m.LOOP_RELIEF}{{{s}}})", "{{pod}} loop relieved (1)")],
            "Requests and answers waiting for a request thread to parse, decode or encode them. Loop relieved is "
            "1 while requests queue past what the instances take in one run and a core idles (a GPU pod at "
            "load): the event loop then hands even its cheap steps to the request threads. A backlog that grows "
            "while relieved: raise http_threads (0: one per core).", width=4),
    ])
    not_created = " or ".join(pods_not_created(f'{kube}, deployment="$service"', f'{rollouts}, name="$service"'))
    scaling_row = Row("Scaling", [
        Panel("timeseries", "Pods ready against desired", "short", [
            Target(f"sum by (namespace) (kube_deployment_status_replicas_available{{{kube}, deployment=\"$service\"}})"
                   f" or sum by (namespace) (rollout_info_replicas_available{{{rollouts}, name=\"$service\"}})",
                   "available {{namespace}}"),
            Target(f"sum by (namespace) (kube_deployment_spec_replicas{{{kube}, deployment=\"$service\"}})"
                   f" or sum by (namespace) (rollout_info_replicas_desired{{{rollouts}, name=\"$service\"}})",
                   "desired {{namespace}}"),
            Target(f"max by (namespace) (kube_horizontalpodautoscaler_spec_max_replicas{{{hpa}}})",
                   "most (max_replicas) {{namespace}}"),
            Target(not_created, "not created: FailedCreate (quota, admission) {{namespace}}")],
            "Grey and ab from kube-state-metrics (Deployments), production from Argo Rollouts' controller "
            "(Rollouts); desired is what the HPA (KEDA's keda-hpa-<service>) set. A scale-up stops at the most "
            "(alert PodserveScaleUpAtMax) or where the ReplicaSet cannot create pods: 'not created' above 0 is its "
            "FailedCreate, the team's quota or an admission policy (alert PodserveScaleUpRefused). Desired above "
            "available with nothing 'not created': pods exist but wait for a node or are not ready.", width=12),
        Panel("timeseries", "Scaling metric against its target", "short", [
            Target(f"sum by (pod) ({scaling.BACKLOG_SERIES}{{{s}}})", "{{pod}} queued for a lane (mean 1m)"),
            Target(f"{keda_trigger_values(keda_service)} / on (namespace) "
                   f"sum by (namespace) (kube_horizontalpodautoscaler_status_current_replicas{{{hpa}}})",
                   "per pod, as the HPA averages it {{namespace}}"),
            Target(f"max by (namespace) (kube_horizontalpodautoscaler_spec_target_metric{{{hpa}, "
                   f"metric_target_type=\"average\"}})", "target (autoscale_target) {{namespace}}")],
            "What the autoscaler scales on: the requests each pod held queued because every batch lane was busy "
            "(autoscale_metric queue_depth), and KEDA's trigger value (the stage's sum of the metric value.py "
            "chose) over the HPA's pods. Above the target the HPA adds pods, below it removes them after the "
            "stabilisation window.", width=12),
    ])
    pods = Row("Pods and start-up", [
        Panel("stat", "Instances ready", "short", [
            Target(f"sum({m.INSTANCE_READY}{{{s}}})", "ready", instant=True),
            Target(f"count({m.INSTANCE_READY}{{{s}}})", "of", instant=True)],
            "Model instances loaded and warmed up, of all the pods' instances.", width=6),
        Panel("timeseries", "Restarts", "short", [Target(
            f"sum by (pod) (increase(kube_pod_container_status_restarts_total{{{kube}, pod=~\"$pod\", "
            f"container=\"{obs.server_container}\"}}[{RATE}]))", "{{pod}}")],
            "Server container restarts (kube-state-metrics): start-up over budget, liveness or memory.", width=6),
        Panel("timeseries", "Model load and warm-up against the start-up budget", "s", [
            Target(f"max by (pod, model_instance) ({m.MODEL_LOAD_SECONDS}{{{s}}})", "load {{pod}} {{model_instance}}"),
            Target(f"max by (pod, model_instance) ({m.WARMUP_SECONDS}{{{s}}})", "warm-up {{pod}} {{model_instance}}"),
            Target(f"max({m.STARTUP_BUDGET_SECONDS}{{{s}}})", "budget (init_delay_second)")],
            "Seconds each instance took to load and warm up; over the budget Kubernetes restarts the pod.", width=6),
        Panel("timeseries", "Faults of the runtime's own (platform bugs)", "short", [Target(
            f"sum by (pod) (increase({m.RUNTIME_FAULTS}{{{s}}}[{RATE}]))", "{{pod}}")],
            "Errors the server logged as its own bug, not the handler's or the caller's (alert "
            "PodserveRuntimeFault). The pod's log lines with \"fault\": \"runtime\" hold each traceback: send "
            "them to the platform team. Should be 0.", width=6, min=0),
    ])
    offline = Row("Offline workers (Kafka)", [
        Panel("timeseries", "Offline messages", "short", [
            Target(f"sum({_rate(m.MESSAGES_CONSUMED, s)})", "consumed a second"),
            Target(f"sum({_rate(m.MESSAGES_PRODUCED, s)})", "answered (written to the sink) a second"),
            Target(f"sum({_rate(m.MESSAGES_DEAD_LETTERED, s)})", "dead-lettered a second")],
            "A worker's messages: fetched from the source topic, answered on the sink topic, or sent to the "
            "dead-letter topic with their error (alert PodserveDeadLettering). Empty for an online service.",
            width=8, min=0),
        Panel("timeseries", "Consumer lag per pod", "short", [
            Target(f"sum by (pod) ({m.CONSUMER_LAG}{{{s}}})", "{{pod}}")],
            "Messages waiting in the partitions each worker holds: what KEDA scales the workers on (lag_target "
            "each). Growing while nothing is consumed: alert PodserveConsumerStalled.", width=8, min=0),
        Panel("timeseries", "Sink writes retried", "short", [
            Target(f"sum by (pod) ({_rate(m.SINK_RETRIES, s)})", "{{pod}}")],
            "Writes to the sink topic that failed and are being retried: nothing is committed meanwhile, so no "
            "message is lost, but none is answered either.", width=8, min=0),
    ])
    gpu = Row("GPU (dcgm-exporter)", [
        Panel("timeseries", "GPU utilisation per pod", "percent", [Target(
            f"max by (pod) ({sel.dcgm('DCGM_FI_DEV_GPU_UTIL', dcgm)})", "{{pod}}")],
            "Empty where dcgm-exporter does not run (and on CPU pods).", width=12, min=0, max=100),
        Panel("timeseries", "GPU memory per pod against the configured limit", "bytes", [
            Target(f"sum by (pod) ({sel.dcgm('DCGM_FI_DEV_FB_USED', dcgm)}) * {MIB}", "{{pod}} used"),
            Target(f"sum by (pod) ({m.GPU_MEMORY_LIMIT_BYTES}{{{s}}})", "{{pod}} limit (gpu_memory x instances)")],
            "Used frame buffer (dcgm-exporter, MiB) against gpu_memory; 0 limit: none set.", width=12),
    ])
    tracks = Row("Grey against stable", [
        Panel("timeseries", "Error ratio by track", "percentunit", [Target(
            f"sum by (track) (rate({m.REQUESTS_TOTAL}{{{slo}, {ERRORS}}}[{RATE}])) / "
            f"sum by (track) (rate({m.REQUESTS_TOTAL}{{{slo}}}[{RATE}]))", "{{track}}")],
            "The grey canary's errors beside the stable pods' (pick every stage).", width=8),
        Panel("timeseries", "p99 latency by track", "s", [
            Target(quantile(0.99, m.REQUEST_SECONDS, slo, RATE, ("track",)), "{{track}}")], width=8),
        Panel("timeseries", "Requests by track", "reqps", [Target(
            f"sum by (track) ({_rate(m.REQUESTS_TOTAL, s)})", "{{track}}")], width=8),
    ])
    starts = {"name": "Pod starts (deploys and restarts)", "datasource": DATASOURCE, "enable": True,
              "iconColor": "blue", "step": "60s", "useValueForTime": True, "titleFormat": "{{pod}} started",
              "tagKeys": "stage,track",
              "expr": f'max by (pod, stage, track) (process_start_time_seconds{{{cl}=~"$cluster", '
                      f'namespace=~"$namespace", pod=~"$pod", container="{obs.server_container}"}}) * 1000'}
    # The deploy tool keeps its history in a ConfigMap Prometheus cannot see; a rollout shows as a new ReplicaSet.
    rollouts = {"name": "Rollouts (new ReplicaSets)", "datasource": DATASOURCE, "enable": True,
                "iconColor": "purple", "step": "60s", "useValueForTime": True, "titleFormat": "rollout {{replicaset}}",
                "tagKeys": "namespace",
                "expr": f'max by (namespace, replicaset) (kube_replicaset_created{{{kube}, '
                        f'replicaset=~"$service-.*"}}) * 1000'}
    return dashboard("podserve-service", "podserve / service",
                     "One podserve service: pick cluster, stage, service and pods. Built by `make dashboards`.",
                     [traffic, latency, batching, scaling_row, pods, offline, gpu, tracks], variables, [starts, rollouts])


def overview_dashboard(obs: Observability, sel: Selectors) -> dict:
    """Every service's traffic, errors, latency and saturation, worst first."""
    cl = obs.cluster_label
    variables = [
        datasource_variable(),
        query_variable("cluster", "Cluster", f"label_values({m.MAX_BATCH_SIZE}, {cl})", multi=True,
                       include_all=True, all_value=".*"),
        query_variable("stage", "Stage", f'label_values({m.MAX_BATCH_SIZE}{{{cl}=~"$cluster"}}, stage)',
                       multi=True, include_all=True),
    ]
    s = f'{cl}=~"$cluster", stage=~"$stage"'
    slo = f"{s}, {SLO_REQUESTS}"
    key = "service, stage"
    per = f"by ({key})"
    errors = (f"sum {per} (rate({m.REQUESTS_TOTAL}{{{slo}, {ERRORS}}}[{RATE}])) / "
              f"sum {per} (rate({m.REQUESTS_TOTAL}{{{slo}}}[{RATE}]))")
    p99 = quantile(0.99, m.REQUEST_SECONDS, slo, RATE, ("service", "stage"))
    saturation = f"max {per} ({m.QUEUE_DEPTH}{{{s}}} / {m.QUEUE_CAPACITY}{{{s}}})"
    legend = "{{service}} ({{stage}})"
    worst = Row("Worst first", [
        Panel("bargauge", "Requests per second, busiest first", "reqps", [Target(
            f"sort_desc(sum {per} ({_rate(m.REQUESTS_TOTAL, s)}))", legend, instant=True)], width=6, height=10),
        Panel("bargauge", "Error ratio (5xx), worst first", "percentunit", [Target(
            f"sort_desc({errors})", legend, instant=True)], width=6, height=10, min=0, max=1),
        Panel("bargauge", "p99 latency, slowest first", "s", [Target(
            f"sort_desc({p99})", legend, instant=True)], width=6, height=10),
        Panel("bargauge", "Queue saturation, fullest first", "percentunit", [Target(
            f"sort_desc({saturation})", legend, instant=True)], "Fullest instance queue of each service.",
            width=6, height=10, min=0, max=1),
    ])
    health = Row("Error budgets and readiness", [
        Panel("bargauge", "Availability budget burn rate (1h), fastest first", "none", [Target(
            f"sort_desc(max {per} ({recording_name('errors', '1h')}{{{s}}} / {budget_name('errors')}{{{s}}}))", legend,
            instant=True)], "1 spends the 30-day budget in exactly 30 days; the page fires above "
            f"{obs.burn_rates.page[0].factor}.", width=12, height=8),
        Panel("bargauge", "Model instances not ready", "short", [Target(
            f"sort_desc(sum {per} (1 - {m.INSTANCE_READY}{{{s}}}))", legend, instant=True)],
            width=12, height=8),
    ])
    over_time = Row("Over time", [
        Panel("timeseries", "Requests per second by service", "reqps", [Target(
            f"sum {per} ({_rate(m.REQUESTS_TOTAL, s)})", legend)], width=8),
        Panel("timeseries", "Error ratio by service", "percentunit", [Target(errors, legend)], width=8),
        Panel("timeseries", "p99 latency by service", "s", [Target(p99, legend)], width=8),
    ])
    return dashboard("podserve-overview", "podserve / overview",
                     "Every podserve service, worst first. Built by `make dashboards`.",
                     [worst, health, over_time], variables)


def build(obs: Observability, sel: Selectors) -> dict[str, dict]:
    """Every dashboard by file name."""
    return {"podserve-service": service_dashboard(obs, sel), "podserve-overview": overview_dashboard(obs, sel)}


def queries(models: dict[str, dict]) -> list[tuple[str, str, str]]:
    """(dashboard, where in it, expression) of every panel's target and every annotation of `models` (build's)."""
    out = []
    for name, model in models.items():
        for panel in model["panels"]:
            out += [(name, f"{panel['title']} [{target['refId']}]", target["expr"]) for target in panel.get("targets", [])]
        out += [(name, f"annotation {a['name']}", a["expr"]) for a in model["annotations"]["list"] if "expr" in a]
    return out


def render(model: dict) -> str:
    """A dashboard's committed text: sorted keys, two-space indent, a final newline."""
    return json.dumps(model, indent=2, sort_keys=True) + "\n"
