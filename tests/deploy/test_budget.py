"""One rollout budget from value.py: rendered as progressDeadlineSeconds and waited for by the tool."""

from __future__ import annotations

from pathlib import Path

from podserve.tooling.conf import load_conf
from podserve.tooling.deploy import budget, commands
from podserve.tooling.deploy.history import as_applied
from podserve.tooling.deploy.target import from_values

REPO = Path(__file__).resolve().parents[2]


def test_the_budget_grows_with_init_delay_second_and_the_replicas():
    assert budget.progress_deadline_seconds(60, 5) == budget.POD_START_ALLOWANCE_SECONDS + 60 + 5
    assert budget.progress_deadline_seconds(61, 5) == budget.POD_START_ALLOWANCE_SECONDS + 65 + 5
    assert budget.rollout_seconds(185, 1) == 185 + budget.ROLLOUT_MARGIN_SECONDS
    assert budget.rollout_seconds(185, 4, max_surge=1) == 4 * 185 + budget.ROLLOUT_MARGIN_SECONDS
    assert budget.rollout_seconds(185, 4, max_surge=2) == 2 * 185 + budget.ROLLOUT_MARGIN_SECONDS


def test_the_rendered_deadline_and_the_tool_s_wait_come_from_the_same_place():
    conf = load_conf()
    target = from_values(REPO / "value.py", conf, conf.stages["hk"], "t")
    deployment = target.deployment()
    period = conf.platform.pod.probe_period_seconds
    deadline = budget.progress_deadline_seconds(60, period)  # the example's init_delay_second
    assert deployment["spec"]["progressDeadlineSeconds"] == deadline
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert container["startupProbe"]["failureThreshold"] == budget.startup_failure_threshold(60, period)
    settings = commands.wait_settings(target, conf, commands.Options(), list(target.objects))
    assert settings.budget_seconds == budget.rollout_seconds(deadline, deployment["spec"]["replicas"])
    assert settings.node_offer == "at most cpu 30, memory 120Gi, 4 x nvidia.com/gpu per node " \
                                  "(pool podserve.io/pool=gpu-2080ti in hk)"
    assert commands.wait_settings(target, conf, commands.Options(budget_seconds=7), []).budget_seconds == 7


def test_a_live_object_is_turned_back_into_what_was_applied():
    live = {"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "s", "namespace": "n", "uid": "u", "resourceVersion": "9", "generation": 1,
                         "creationTimestamp": "2026-01-01T00:00:00Z", "managedFields": [{}], "labels": {"a": "b"},
                         "annotations": {"kubectl.kubernetes.io/last-applied-configuration": "{}"}},
            "spec": {"ports": [{"port": 8080}]}, "status": {"loadBalancer": {}}}
    assert as_applied(live) == {"apiVersion": "v1", "kind": "Service",
                                "metadata": {"name": "s", "namespace": "n", "labels": {"a": "b"}},
                                "spec": {"ports": [{"port": 8080}]}}


def test_where_an_autoscaler_owns_the_replicas_the_budget_counts_its_live_pods(tmp_path):
    """An HPA (minReplicas 2) scaled to 6: the rollout replaces 6 pods, so the wait budgets for 6, not for 2."""
    conf = load_conf()
    values = tmp_path / "value.py"
    values.write_text((REPO / "value.py").read_text().replace("max_replicas = 0 ", "max_replicas = 8 ", 1))
    target = from_values(values, conf, conf.stages["hk"], "t")
    deadline = target.deployment()["spec"]["progressDeadlineSeconds"]
    hpa = next(o for o in target.objects if o["kind"] == "HorizontalPodAutoscaler")
    assert "replicas" not in target.deployment()["spec"] and hpa["spec"]["minReplicas"] == 2
    budget_for = lambda live: commands.wait_settings(target, conf, commands.Options(), list(target.objects),  # noqa
                                                     live).budget_seconds
    assert budget_for(6) == budget.rollout_seconds(deadline, 6)
    assert budget_for(1) == budget_for(None) == budget.rollout_seconds(deadline, 2)  # never below the minimum
