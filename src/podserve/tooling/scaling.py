"""What scales a stage: one KEDA ScaledObject per autoscaled stage, its trigger, and the series it reads.

One mechanism for every service: KEDA turns each ScaledObject into an HPA (keda-hpa-<name>) on its external metric,
and the controller-manager's HPA controller scales the stage's workload (a production stage's Rollout, else the
Deployment). Online services scale on the pod's own queue from the region's Prometheus; offline workers on their
consumer group's lag (offline_manifests). Bounds come from value.py per stage, the HPA's behaviour from
conf/platform.yaml `autoscaling`.

The signal (value.py `autoscale_metric = "queue_depth"`, the default) is the **mean number of requests a pod held
queued for want of a free batch lane over the last minute**, recorded per pod as BACKLOG_SERIES:

    rate(podserve_queue_wait_seconds_sum[1m]) - rate(podserve_batch_fill_wait_seconds_total[1m])

Why this one, from how the batcher behaves (runtime/batching, runtime/core/metrics.py):
- A request's queue wait (enqueue to batch start) summed over requests, per second, is by Little's law the mean
  queue length over the window. Unlike the `podserve_queue_depth` gauge, it is not one instant per scrape (a batcher
  empties its queue in bursts: a gauge scraped every 15 s reads 0 or a full batch by chance) and it is a counter, so
  `rate` absorbs a restarted process's reset instead of reading a drop to zero as "idle".
- A free lane holds its batch open up to max_batch_delay for more inputs: that wait is the batching policy's price,
  not a shortage, and at low load it is most of the queue wait. The runtime counts it apart
  (`podserve_batch_fill_wait_seconds`); subtracting it leaves the time requests queued because every lane was busy,
  which is zero while the pod keeps up, whatever the delay or the number of model instances (the bias of raw
  queue-time rules with several loaded models), and grows with the excess of arrivals over what the lanes finish.
- `in_flight` (accepted, not answered) rises with the batch size and the model's own time even when nothing waits,
  so its right target depends on the model; queued-for-a-lane does not. It stays available
  (`autoscale_metric = "in_flight"`, IN_FLIGHT_SERIES: its gauge averaged over the minute) for a handler whose queue
  is not the batcher's.
- The target (`autoscale_target`, max_batch_size by default) reads "a full batch waiting for a lane, on average":
  below the pod's admission limit (queue_size per instance), so the HPA adds pods before the pod sheds 503s.

The trigger sums the series over the stage's pods and the HPA divides by the current replicas (AverageValue): a pod
that just started has no rate yet (one sample) and adds nothing to the sum while it counts in the divisor; a draining
pod's queue empties (no new requests reach it) and its series stops with its scrapes. A request that gives up in the
queue (504 at its deadline) is never observed: under an overload past the deadline the signal lags the 503/504
alerts, which is why the target sits well below the admission limit.
"""

from __future__ import annotations

from decimal import Decimal

from podserve import metric_names as m
from podserve.tooling.conf import Conf, Stage
from podserve.tooling.observability.queries import POD_KEY, by

#: The recorded per-pod series each value.py autoscale_metric scales on (one record each, rule_groups).
BACKLOG_SERIES = "podserve_pod:queue_backlog:mean1m"
IN_FLIGHT_SERIES = "podserve_pod:in_flight:mean1m"
#: value.py's autoscale_metric -> the series it scales on (the keys are the field's choices)
SERIES = {"queue_depth": BACKLOG_SERIES, "in_flight": IN_FLIGHT_SERIES}
WINDOW = "1m"
#: KEDA names the HPA it makes keda-hpa-<ScaledObject's name> (kept: never the name of an HPA rendered before KEDA,
#: which the deploy tool prunes while KEDA creates its own).
HPA_PREFIX = "keda-hpa-"


def recording_rules() -> list[dict]:
    """The per-pod series the scalers read (POD_KEY labels), for the platform's Prometheus rules."""
    key = by(POD_KEY)
    backlog = (f"clamp_min(\n  sum {key} (rate({m.QUEUE_WAIT_SECONDS}_sum[{WINDOW}]))\n"
               f"  - sum {key} (rate({m.BATCH_FILL_WAIT_SECONDS}_total[{WINDOW}])),\n  0\n)")
    in_flight = f"sum {key} (avg_over_time({m.IN_FLIGHT}[{WINDOW}]))"
    return [{"record": BACKLOG_SERIES, "expr": backlog}, {"record": IN_FLIGHT_SERIES, "expr": in_flight}]


def query(series: str, namespace: str, service: str) -> str:
    """The trigger's PromQL: the stage's pods' sum of `series` (one element, as KEDA's prometheus scaler needs); the
    only shape podserve-autoscalers admits (its own namespace, service and stage selectors at most)."""
    return f'sum({series}{{namespace="{namespace}",service="{service}"}})'


def behavior(conf: Conf) -> dict:
    """The HPA's behaviour from conf/platform.yaml `autoscaling`."""
    a = conf.platform.autoscaling
    return {"scaleDown": {"stabilizationWindowSeconds": a.scale_down_stabilization_seconds,
                          "policies": [{"type": "Percent", "value": a.scale_down_percent_per_minute,
                                        "periodSeconds": 60}]},
            "scaleUp": {"stabilizationWindowSeconds": 0, "selectPolicy": "Max",
                        "policies": [{"type": "Pods", "value": a.scale_up_pods_per_minute, "periodSeconds": 60},
                                     {"type": "Percent", "value": a.scale_up_percent_per_minute,
                                      "periodSeconds": 60}]}}


def scaler(conf: Conf, least: int, most: int, triggers: list[dict]) -> dict:
    """The ScaledObject's context: bounds, polling, the HPA's behaviour, the triggers."""
    return {"min": least, "max": most, "polling_seconds": conf.platform.autoscaling.polling_seconds,
            "behavior": behavior(conf), "triggers": triggers}


def online_scaler(values, conf: Conf, stage: Stage, replicas: int) -> dict | None:
    """An online stage's scaler on its pods' own queue from the region's Prometheus; None where the stage does not
    autoscale (conf/stages.yaml) or value.py's max_replicas is not above its replicas."""
    if not (stage.autoscale and values["max_replicas"] > replicas):
        return None
    namespace = stage.namespace_for(values["username"])
    threshold = f'{Decimal(str(values["autoscale_target"])).normalize():f}'  # KEDA parses a number, not a quantity
    trigger = {"type": "prometheus", "metricType": "AverageValue",
               "metadata": {"serverAddress": conf.platform.monitoring.prometheus_address,
                            "query": query(SERIES[values["autoscale_metric"]], namespace, values["service_name"]),
                            "threshold": threshold}}
    return scaler(conf, replicas, values["max_replicas"], [trigger])
