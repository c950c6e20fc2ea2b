"""The alert rules' unit tests, written out for `promtool test rules` as serving.test.yaml.

    PYTHONPATH=src python tests/observability/rules/cases.py   # rewrite serving.test.yaml

Each group feeds series that should trip some alerts and series that should not, and names
exactly which alerts fire, with which labels, at which time (every other series stays quiet).
The expected annotations are the rules' own templates filled in, so a changed description
only needs this script re-run; a changed firing/quiet outcome needs the cases below changed.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
OUT = HERE / "serving.test.yaml"
RULES = HERE.parents[2] / "charts" / "podserve-platform" / "files" / "alerts" / "serving.yaml"

HK = {"namespace": "podserve-like", "stage": "hk"}
KSM = {"job": "kube-state-metrics", "namespace": "podserve-like"}
ARGO = {"job": "argo-rollouts/argo-rollouts", "namespace": "podserve-like"}


def series(name: str, labels: dict, values: str) -> dict:
    inner = ", ".join(f'{k}="{v}"' for k, v in labels.items())
    return {"series": f"{name}{{{inner}}}", "values": values}


def requests(service: str, status: str, values: str, **extra) -> dict:
    return series("podserve_requests_total", {**HK, "service": service, "route": f"/api/{service}",
                                              "status": status, "pod": f"{service}-0", **extra}, values)


def latency(service: str, bucket: str, fast: str, total: str) -> list[dict]:
    labels = {**HK, "service": service, "route": f"/api/{service}", "status": "200", "pod": f"{service}-0"}
    return [series("podserve_request_duration_seconds_bucket", {**labels, "le": bucket}, fast),
            series("podserve_request_duration_seconds_count", labels, total)]


def svc(service: str) -> dict:
    return {**HK, "service": service}


def pod(service: str, name: str) -> dict:
    return {**HK, "service": service, "pod": name}


def offline(service: str) -> dict:
    """An offline worker's series: its pod's labels and its source topic (metric_names.MESSAGE_LABELS)."""
    return {**pod(service, f"{service}-0"), "topic": "lines"}


def hpa(service: str, *, limited: str, desired: str, most: int) -> list[dict]:
    """kube-state-metrics' series of KEDA's HPA of `service`: its ScalingLimited condition (status true), desired
    replicas and maxReplicas."""
    labels = {**KSM, "horizontalpodautoscaler": f"keda-hpa-{service}"}
    return [series("kube_horizontalpodautoscaler_status_condition",
                   {**labels, "condition": "ScalingLimited", "status": "true"}, limited),
            series("kube_horizontalpodautoscaler_status_desired_replicas", labels, desired),
            series("kube_horizontalpodautoscaler_spec_max_replicas", labels, f"{most}x25")]


# (interval, input series, eval time, {alert: [label sets expected to fire]}); alerts not named are
# checked too, with no alert expected, where the group lists them under "quiet".
CASES = [
    {"name": "burn rates: 2% errors pages and tickets, 0.5% tickets only (but pages a service whose value.py asks "
             "for 99.99%), 0.02% stays quiet; same for latency",
     "interval": "1m",
     "input": [requests("flaky", "200", "0+1000x130"), requests("flaky", "500", "0+20x130"),
               requests("simmering", "200", "0+1000x130"), requests("simmering", "500", "0+5x130"),
               requests("healthy", "200", "0+1000x130"), requests("healthy", "500", "0+0.2x130"),
               requests("strict", "200", "0+1000x130"), requests("strict", "500", "0+5x130"),
               series("podserve_slo_objective", {**svc("strict"), "pod": "strict-0", "slo": "availability"},
                      "0.9999x130"),
               series("podserve_slo_objective", {**svc("simmering"), "pod": "simmering-0", "slo": "availability"},
                      "0x130"),
               *latency("sluggish", "0.5", "0+700x130", "0+1000x130"),
               *latency("brisk", "0.5", "0+999.9x130", "0+1000x130")],
     "eval": "2h",
     "fire": {"PodserveAvailabilityBudgetBurn": [svc("flaky"), svc("strict")],
              "PodserveAvailabilityBudgetBurnSlow": [svc("flaky"), svc("simmering"), svc("strict")],
              "PodserveLatencyBudgetBurn": [svc("sluggish")],
              "PodserveLatencyBudgetBurnSlow": [svc("sluggish")]}},
    {"name": "a full queue for minutes; a quarter-full one stays quiet",
     "interval": "1m",
     "input": [series("podserve_queue_depth", {**pod("busy", "busy-0"), "model_instance": "cpu-0"}, "4x20"),
               series("podserve_queue_capacity", {**pod("busy", "busy-0"), "model_instance": "cpu-0"}, "4x20"),
               series("podserve_queue_depth", {**pod("calm", "calm-0"), "model_instance": "cpu-0"}, "1x20"),
               series("podserve_queue_capacity", {**pod("calm", "calm-0"), "model_instance": "cpu-0"}, "4x20")],
     "eval": "10m",
     "fire": {"PodserveQueueSaturated": [pod("busy", "busy-0")]}},
    {"name": "5% answered 503 and 504 for minutes; 0.1% stays quiet",
     "interval": "1m",
     "input": [requests("shedding", "200", "0+1000x20"), requests("shedding", "503", "0+50x20"),
               requests("shedding", "504", "0+50x20"),
               requests("coping", "200", "0+1000x20"), requests("coping", "503", "0+1x20"),
               requests("coping", "504", "0+1x20")],
     "eval": "15m",
     "fire": {"PodserveShedding": [svc("shedding")], "PodserveDeadlinesMissed": [svc("shedding")],
              "PodserveAvailabilityBudgetBurn": [svc("shedding")]}},  # 10% errors: a page, too
    {"name": "an instance not ready for 15 minutes; a ready one stays quiet",
     "interval": "1m",
     "input": [series("podserve_instance_ready", {**pod("stuck", "stuck-0"), "model_instance": "gpu0-0"}, "0x20"),
               series("podserve_instance_ready", {**pod("fine", "fine-0"), "model_instance": "gpu0-0"}, "1x20")],
     "eval": "15m",
     "fire": {"PodserveInstanceNotReady": [{**pod("stuck", "stuck-0"), "model_instance": "gpu0-0"}]}},
    {"name": "load + warm-up at 92% of the budget; 18% stays quiet",
     "interval": "1m",
     "input": [series("podserve_model_load_seconds", {**pod("heavy", "heavy-0"), "model_instance": "gpu0-0"}, "50x5"),
               series("podserve_warmup_seconds", {**pod("heavy", "heavy-0"), "model_instance": "gpu0-0"}, "5x5"),
               series("podserve_startup_budget_seconds", pod("heavy", "heavy-0"), "60x5"),
               series("podserve_model_load_seconds", {**pod("light", "light-0"), "model_instance": "gpu0-0"}, "10x5"),
               series("podserve_warmup_seconds", {**pod("light", "light-0"), "model_instance": "gpu0-0"}, "1x5"),
               series("podserve_startup_budget_seconds", pod("light", "light-0"), "60x5")],
     "eval": "2m",
     "fire": {"PodserveStartupNearBudget": [pod("heavy", "heavy-0")]}},
    {"name": "one fault of the server's own at 6m fires for its 10m window; quiet: a pod without one, a fault at 3m",
     "interval": "1m",
     "input": [series("podserve_runtime_faults_total", pod("buggy", "buggy-0"), "0x5 1x20"),
               series("podserve_runtime_faults_total", pod("sound", "sound-0"), "0x25"),
               series("podserve_runtime_faults_total", pod("mended", "mended-0"), "0x2 1x23")],
     "eval": "14m",
     "fire": {"PodserveRuntimeFault": [pod("buggy", "buggy-0")]}},
    {"name": "an offline worker dead-lettering 10% of its messages; 1% and a worker with no message stay quiet",
     "interval": "1m",
     "input": [series("podserve_messages_consumed_total", offline("poisoned"), "0+100x20"),
               series("podserve_messages_dead_lettered_total", offline("poisoned"), "0+10x20"),
               series("podserve_messages_consumed_total", offline("clean"), "0+100x20"),
               series("podserve_messages_dead_lettered_total", offline("clean"), "0+1x20"),
               series("podserve_messages_consumed_total", offline("idle"), "0x20"),
               series("podserve_messages_dead_lettered_total", offline("idle"), "0x20")],
     "eval": "16m",
     "fire": {"PodserveDeadLettering": [svc("poisoned")]}},
    {"name": "an offline worker with messages waiting that consumes none; one consuming and one caught up stay quiet",
     "interval": "1m",
     "input": [series("podserve_consumer_lag", offline("stuck"), "50x20"),
               series("podserve_messages_consumed_total", offline("stuck"), "7x20"),
               series("podserve_consumer_lag", offline("busy"), "50x20"),
               series("podserve_messages_consumed_total", offline("busy"), "0+30x20"),
               series("podserve_consumer_lag", offline("done"), "0x20"),
               series("podserve_messages_consumed_total", offline("done"), "7x20")],
     "eval": "16m",
     "fire": {"PodserveConsumerStalled": [pod("stuck", "stuck-0")]}},
    {"name": "GPU memory at 93% of gpu_memory; 49% and a pod with no limit stay quiet",
     "interval": "1m",
     "input": [series("DCGM_FI_DEV_FB_USED", {"namespace": "podserve-like", "pod": "full-0", "gpu": "0"}, "1900x20"),
               series("podserve_gpu_memory_limit_bytes", {**pod("full", "full-0"), "model_instance": "gpu0-0"},
                      "2147483648x20"),
               series("DCGM_FI_DEV_FB_USED", {"namespace": "podserve-like", "pod": "roomy-0", "gpu": "0"}, "1000x20"),
               series("podserve_gpu_memory_limit_bytes", {**pod("roomy", "roomy-0"), "model_instance": "gpu0-0"},
                      "2147483648x20"),
               series("DCGM_FI_DEV_FB_USED", {"namespace": "podserve-like", "pod": "free-0", "gpu": "0"}, "9000x20"),
               series("podserve_gpu_memory_limit_bytes", {**pod("free", "free-0"), "model_instance": "gpu0-0"},
                      "0x20")],
     "eval": "15m",
     "fire": {"PodserveGpuMemoryNearLimit": [pod("full", "full-0")]}},
    {"name": "kube-state-metrics: a pod not ready, a Deployment short of pods, a restart loop; healthy ones quiet",
     "interval": "1m",
     "input": [series("kube_pod_status_ready", {**KSM, "pod": "sick-0", "condition": "true"}, "0x40"),
               series("kube_pod_status_ready", {**KSM, "pod": "well-0", "condition": "true"}, "1x40"),
               series("kube_pod_status_ready", {**KSM, "namespace": "other-team", "pod": "theirs-0",
                                                "condition": "true"}, "0x40"),
               series("kube_deployment_spec_replicas", {**KSM, "deployment": "short"}, "2x40"),
               series("kube_deployment_status_replicas_available", {**KSM, "deployment": "short"}, "1x40"),
               series("kube_deployment_spec_replicas", {**KSM, "deployment": "whole"}, "2x40"),
               series("kube_deployment_status_replicas_available", {**KSM, "deployment": "whole"}, "2x40"),
               series("kube_pod_container_status_restarts_total", {**KSM, "pod": "loop-0", "container": "server"},
                      "0+1x40"),
               series("kube_pod_container_status_restarts_total", {**KSM, "pod": "steady-0", "container": "server"},
                      "1x40")],
     "eval": "35m",
     "fire": {"PodservePodNotReady": [{"namespace": "podserve-like", "pod": "sick-0"}],
              "PodserveReplicasMismatch": [{"namespace": "podserve-like", "deployment": "short"}],
              "PodserveRestartLoop": [{**KSM, "pod": "loop-0", "container": "server"}]}},
    {"name": "Argo Rollouts: a Rollout short of pods, one paused past rollout_stuck_for; completed ones quiet",
     "interval": "1m",
     "input": [series("rollout_info_replicas_desired", {**ARGO, "name": "short"}, "3x60"),
               series("rollout_info_replicas_available", {**ARGO, "name": "short"}, "2x60"),
               series("rollout_info_replicas_desired", {**ARGO, "name": "whole"}, "3x60"),
               series("rollout_info_replicas_available", {**ARGO, "name": "whole"}, "3x60"),
               series("rollout_info", {**ARGO, "name": "paused", "strategy": "canary", "traffic_router": "Istio",
                                       "phase": "Paused"}, "1x60"),
               series("rollout_info", {**ARGO, "name": "done", "strategy": "canary", "traffic_router": "Istio",
                                       "phase": "Completed"}, "1x60"),
               series("rollout_info", {**ARGO, "name": "brief", "strategy": "canary", "traffic_router": "Istio",
                                       "phase": "Paused"}, "1x10 _x50")],
     "eval": "50m",
     "fire": {"PodserveReplicasMismatch": [{"namespace": "podserve-like", "deployment": "short"}],
              "PodserveRolloutStuck": [{"namespace": "podserve-like", "name": "paused"}]}},
    {"name": "a stage at its limits at 6m: a Rollout and a Deployment whose ReplicaSets could not create the pods "
             "their HPAs asked for (FailedCreate: the team's quota) and an HPA held at maxReplicas; quiet: pods "
             "that exist but are pending, an HPA limited at its minimum, one exactly at its maximum and content",
     "interval": "1m",
     "input": [series("rollout_info_replicas_desired", {**ARGO, "name": "quota"}, "2x5 4x20"),
               series("rollout_info_replicas_available", {**ARGO, "name": "quota"}, "2x25"),
               series("rollout_info_replicas_unavailable", {**ARGO, "name": "quota"}, "0x25"),
               series("rollout_info_replicas_desired", {**ARGO, "name": "pending"}, "2x5 4x20"),
               series("rollout_info_replicas_available", {**ARGO, "name": "pending"}, "2x25"),
               series("rollout_info_replicas_unavailable", {**ARGO, "name": "pending"}, "0x5 2x20"),
               series("kube_deployment_spec_replicas", {**KSM, "deployment": "worker-quota"}, "1x5 3x20"),
               series("kube_deployment_status_replicas", {**KSM, "deployment": "worker-quota"}, "1x25"),
               series("kube_deployment_status_replicas_available", {**KSM, "deployment": "worker-quota"}, "1x25"),
               series("kube_deployment_spec_replicas", {**KSM, "deployment": "worker-pending"}, "1x5 3x20"),
               series("kube_deployment_status_replicas", {**KSM, "deployment": "worker-pending"}, "1x5 3x20"),
               series("kube_deployment_status_replicas_available", {**KSM, "deployment": "worker-pending"}, "1x25"),
               series("kube_deployment_spec_replicas", {**KSM, "deployment": "worker-whole"}, "2x25"),
               series("kube_deployment_status_replicas", {**KSM, "deployment": "worker-whole"}, "2x25"),
               series("kube_deployment_status_replicas_available", {**KSM, "deployment": "worker-whole"}, "2x25"),
               *hpa("at-max", limited="0x5 1x20", desired="4x5 8x20", most=8),
               *hpa("at-min", limited="1x25", desired="2x25", most=8),
               *hpa("exactly-max", limited="0x25", desired="4x5 8x20", most=8)],
     "eval": "14m",
     "fire": {"PodserveScaleUpRefused": [{"namespace": "podserve-like", "deployment": "quota"},
                                         {"namespace": "podserve-like", "deployment": "worker-quota"}],
              "PodserveScaleUpAtMax": [{"namespace": "podserve-like", "deployment": "at-max"}]}},
    {"name": "a scale-up that completes: the HPA asks 2 -> 4 at 6m, the ReplicaSet creates the pods within a "
             "scrape, they start a minute later; no limit alert",
     "interval": "1m",
     "input": [series("rollout_info_replicas_desired", {**ARGO, "name": "grows"}, "2x5 4x20"),
               series("rollout_info_replicas_available", {**ARGO, "name": "grows"}, "2x7 4x17"),
               series("rollout_info_replicas_unavailable", {**ARGO, "name": "grows"}, "0x5 0 2 0x17"),
               *hpa("grows", limited="0x25", desired="2x5 4x20", most=8)],
     "eval": "14m",
     "fire": {}},
    {"name": "a service that stopped reporting; one still reporting stays quiet",
     "interval": "1m",
     "input": [series("podserve_max_batch_size", {**pod("gone", "gone-0"), "container": "server"}, "8x10 _x30"),
               series("podserve_max_batch_size", {**pod("alive", "alive-0"), "container": "server"}, "8x40")],
     "eval": "35m",
     "fire": {"PodserveAbsent": [svc("gone")]}},
]


def expand(template: str, labels: dict) -> str:
    return re.sub(r"\{\{ \$labels\.(\w+) \}\}", lambda m: labels.get(m.group(1), ""), template)


def build() -> str:
    rules = {r["alert"]: r for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"] if "alert" in r}
    tests = []
    for case in CASES:
        unknown = set(case["fire"]) - set(rules)
        if unknown:
            raise SystemExit(f"cases.py names alerts the rules do not have: {sorted(unknown)}")
        checks = []
        for alert in sorted(rules):
            expected = case["fire"].get(alert, [])
            checks.append({"eval_time": case["eval"], "alertname": alert, "exp_alerts": [
                {"exp_labels": {**labels, "severity": rules[alert]["labels"]["severity"]},
                 "exp_annotations": {k: expand(v, labels) for k, v in rules[alert]["annotations"].items()}}
                for labels in expected]})
        tests.append({"name": case["name"], "interval": case["interval"], "input_series": case["input"],
                      "alert_rule_test": checks})
    doc = {"rule_files": ["serving.yaml"], "evaluation_interval": "1m", "tests": tests}
    head = ("# promtool unit tests of charts/podserve-platform/files/alerts/serving.yaml, written by cases.py\n"
            "# beside this file (edit the cases there). Run: promtool test rules serving.test.yaml with the\n"
            "# rule file beside it (tests/observability/test_rules.py copies the chart's rendered rules here).\n")
    return head + yaml.safe_dump(doc, sort_keys=False, width=100_000)


if __name__ == "__main__":
    OUT.write_text(build())
    print(f"wrote {OUT}", file=sys.stderr)
