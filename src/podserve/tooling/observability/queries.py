"""The label sets, selectors and PromQL that dashboards and alert rules share (one place for each)."""

from __future__ import annotations

from dataclasses import dataclass

from podserve import metric_names as m
from podserve.tooling.conf import Conf, Observability

#: What every SLO recording rule and most alerts aggregate by: one service in one stage of one cluster.
SERVICE_KEY = ("namespace", "service", "stage")
#: The same, per pod.
POD_KEY = ("namespace", "service", "stage", "pod")
#: Requests that count towards the SLOs: the service's own route (not 404s for unknown paths).
SLO_REQUESTS = f'route!="{m.OTHER_ROUTE}"'
ERRORS = 'status=~"5.."'
SHED = f'status="{m.STATUS_SHED}"'
DEADLINE = f'status="{m.STATUS_DEADLINE}"'
MIB = 1024 * 1024


def by(labels) -> str:
    return "by (" + ", ".join(labels) + ")"


def le(bound: float) -> str:
    """The `le` label value prometheus_client writes for a bucket bound (0.5 -> "0.5", 1 -> "1.0")."""
    return repr(float(bound))


@dataclass(frozen=True)
class Selectors:
    """Selectors of the metrics we read that are not ours, from conf/observability.yaml and conf/stages.yaml."""

    obs: Observability
    namespaces: tuple[str, ...]

    @classmethod
    def from_conf(cls, obs: Observability, conf: Conf) -> "Selectors":
        return cls(obs, tuple(sorted({stage.namespace_for(team) for stage in conf.stages.values()
                                      for team in conf.teams})))

    @property
    def namespace_regex(self) -> str:
        return "|".join(self.namespaces)

    def kube(self, extra: str = "") -> str:
        """kube-state-metrics series of the services' namespaces."""
        return self._scoped(self.obs.kube_state_metrics_selector, extra)

    def rollouts(self, extra: str = "") -> str:
        """Argo Rollouts' controller's series of the services' namespaces (production's Rollouts)."""
        return self._scoped(self.obs.rollouts_selector, extra)

    def _scoped(self, exporter: str, extra: str) -> str:
        parts = [exporter, f'namespace=~"{self.namespace_regex}"']
        return ", ".join(parts + ([extra] if extra else []))

    def dcgm(self, metric: str, selector: str) -> str:
        """A dcgm-exporter metric with its pod and namespace labels renamed to `pod` and `namespace`."""
        expr = f"{metric}{{{selector}}}"
        for ours, theirs in (("pod", self.obs.dcgm_pod_label), ("namespace", self.obs.dcgm_namespace_label)):
            if theirs != ours:
                expr = f'label_replace({expr}, "{ours}", "$1", "{theirs}", "(.+)")'
        return expr

    def dcgm_filter(self, pod: str, namespace: str) -> str:
        """A selector on dcgm-exporter's own label names."""
        return f'{self.obs.dcgm_pod_label}=~"{pod}", {self.obs.dcgm_namespace_label}=~"{namespace}"'


#: kube-state-metrics' label that names an HorizontalPodAutoscaler
HPA_LABEL = "horizontalpodautoscaler"
#: KEDA's operator's gauge of each trigger's last value, labelled namespace, scaledObject, scaler, metric.
KEDA_TRIGGER_VALUE = "keda_scaler_metrics_value"


def keda_trigger_values(selector: str) -> str:
    """What KEDA last reported for the ScaledObjects `selector` picks (the operator's series), summed per namespace:
    the value the HPA divides by its pods."""
    return f"sum by (namespace) ({KEDA_TRIGGER_VALUE}{{{selector}}})"


def as_deployment(expr: str) -> str:
    """An Argo Rollouts series with its Rollout's `name` copied to `deployment`, the label a Deployment's series
    carries in kube-state-metrics: one alert and one panel line cover both workloads."""
    return f'label_replace({expr}, "deployment", "$1", "name", "(.*)")'


def pods_not_created(kube: str, rollouts: str) -> tuple[str, str]:
    """Pods a workload wants that do not exist, by (namespace, deployment), for Deployments (kube-state-metrics) and
    Rollouts (Argo's controller). A workload's status.replicas counts every pod of its ReplicaSets that is not
    terminating, pending and crashing ones included: what it lacks were never created, the ReplicaSet's FailedCreate
    (the namespace's ResourceQuota or an admission policy refused them), not pods waiting for a node."""
    deployments = (f"sum by (namespace, deployment) (kube_deployment_spec_replicas{{{kube}}} "
                   f"- kube_deployment_status_replicas{{{kube}}})")
    existing = f"(rollout_info_replicas_available{{{rollouts}}} + rollout_info_replicas_unavailable{{{rollouts}}})"
    rollouts_short = (f"sum by (namespace, deployment) "
                      f"({as_deployment(f'rollout_info_replicas_desired{{{rollouts}}} - {existing}')})")
    return deployments, rollouts_short


def ratio(numerator_filter: str, selector: str, window: str, key=SERVICE_KEY) -> str:
    """Share of requests matching `numerator_filter` among those matching `selector`, over `window`."""
    total = f"{m.REQUESTS_TOTAL}{{{selector}}}"
    part = f"{m.REQUESTS_TOTAL}{{{selector}, {numerator_filter}}}"
    return f"sum {by(key)} (rate({part}[{window}])) / sum {by(key)} (rate({total}[{window}]))"


def slow_ratio(threshold_seconds: float, selector: str, window: str, key=SERVICE_KEY) -> str:
    """Share of requests slower than `threshold_seconds` (a bucket bound) over `window`."""
    fast = f'{m.REQUEST_SECONDS}_bucket{{{selector}, le="{le(threshold_seconds)}"}}'
    count = f"{m.REQUEST_SECONDS}_count{{{selector}}}"
    return f"1 - (sum {by(key)} (rate({fast}[{window}])) / sum {by(key)} (rate({count}[{window}])))"


def quantile(q: float, histogram: str, selector: str, window: str, key=()) -> str:
    keys = ", ".join(("le",) + tuple(key))
    return f"histogram_quantile({q}, sum by ({keys}) (rate({histogram}_bucket{{{selector}}}[{window}])))"


def recording_name(kind: str, window: str) -> str:
    """The recording rule of an SLO's bad-event ratio: podserve:slo_errors:ratio_rate5m."""
    return f"podserve:slo_{kind}:ratio_rate{window}"


def rate_interval(interval_seconds: float, scrape_seconds: float) -> str:
    """Grafana's $__rate_interval: max($__interval + scrape interval, 4 x scrape interval)."""
    return f"{int(max(interval_seconds + scrape_seconds, 4 * scrape_seconds))}s"


def expand(expr: str, variables: dict[str, str], interval_seconds: float, scrape_seconds: float,
           range_seconds: float | None = None) -> str:
    """Replace Grafana's variables in a query as Grafana would before sending it to Prometheus."""
    out = expr.replace("$__rate_interval", rate_interval(interval_seconds, scrape_seconds))
    out = out.replace("$__interval", f"{int(interval_seconds)}s")
    if range_seconds is not None:
        out = out.replace("$__range", f"{int(range_seconds)}s")
    for name in sorted(variables, key=len, reverse=True):
        out = out.replace("${" + name + "}", variables[name]).replace("$" + name, variables[name])
    return out


def budget_name(kind: str) -> str:
    """The recording rule of a service's error budget (1 - its objective): podserve:slo_errors:budget."""
    return f"podserve:slo_{kind}:budget"
