"""Capacity follows load on the real node: KEDA and the HPA scale production 1 -> 3 under a load ramp through Envoy
and back to 1 after the stabilisation window, failing no request (issue 67, It must show 1).

Real: the control plane with its HPA controller, the real node (kubelet, containerd, runc) running our image as CI's
jobs built it (tests/pipeline/conftest.py grey_service), the deploy tool applying hk as render makes it (the Rollout,
KEDA's ScaledObject with the platform's HPA behaviour and its Prometheus trigger), the Argo Rollouts controller (the
Rollout's scale subresource), KEDA's operator and metrics API server (the session's, `make keda`) answering the HPA
through the apiserver's aggregation layer, a real Prometheus scraping the pods (PodTargetFeed: the live PodMonitor's
targets) and evaluating the platform chart's rule file (charts/podserve-platform/files/alerts/serving.yaml, whose
podserve-scaling group records the series the trigger sums), istiod feeding the pods to Envoy 1.40 (the gateway), the
pods' preStop and drain as they are removed. Simulated: what a pod's requests wait on. The handler is the example's
with a decode that waits STORAGE_WAIT_SECONDS off the CPU (real_node_service's WaitsOnStorage, as a handler fetching
its input from storage waits), so a pod's in-flight follows Little's law (rate x time held) whatever else the 2-core
machine runs; the example alone answers in a few ms, and its in-flight only rises near the CPU's saturation, where
the machine's other load would decide. The service scales on `autoscale_metric = "in_flight"` (IN_FLIGHT_SERIES,
the metric value.py offers for a handler whose time is not the batcher's queue).

Load and bounds, stated: LIGHT_RATE requests a second through Envoy throughout, PEAK_RATE at the peak (the rest
ramped up over RAMP_SECONDS): about PEAK_RATE x STORAGE_WAIT_SECONDS = 9 in flight, three times AUTOSCALE_TARGET
(the HPA asks ceil(9 / 3) = 3 pods from 1) and far below the pod's admission limit (queue_size, 64: its 503s);
the light load holds under 1 in flight (the HPA asks 1). Each pod CPU 400m (the node holds the 3). The test conf
shortens only the scale-down stabilisation window, to SCALE_DOWN_WINDOW (conf/platform.yaml keeps 300 s); every
other part of the HPA's behaviour is the platform's. KEDA's pollingInterval does not enter: the HPA controller asks
KEDA's metrics server every HPA_SYNC_SECONDS and KEDA queries Prometheus at each ask (no cached metrics).
"""

from __future__ import annotations

import math
import time
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from real_node_service import (COMMIT, NAME, POD_CPU, STORAGE_WAIT_SECONDS, TEAM, PacedCallers,
                               assert_no_runtime_fault, example_body, fast_conf, hk_gateway, subset_cluster)
from scaling_watch import (KEDA, SAMPLE_SECONDS, Timeline, distinct, read_or_none, remove_scaled_hk, scaled_object,
                           shorten_scale_down, since, wait_for_no_hk_pods)

from podserve import metric_names as m
from podserve.testbed.cluster.controlplane import HPA_SYNC_SECONDS, HPA_TOLERANCE
from podserve.testbed.cluster.platform import CHART
from podserve.testbed.previews import RULES
from podserve.testbed.processes import poll_until
from podserve.testbed.prometheus import PodTargetFeed, Prometheus
from podserve.tooling import scaling
from podserve.tooling.conf import load_conf
from podserve.tooling.deploy.diagnosis import LIMITS_CONFIGMAP

WAITS_ON_STORAGE = "real_node_recipes:WaitsOnStorage"
MIN_PODS, MAX_PODS = 1, 3
#: The in-flight per pod the HPA keeps (value.py autoscale_target), against the pod's admission limit of 64.
AUTOSCALE_TARGET = 3
VALUES = {"handler": WAITS_ON_STORAGE, "cpu": POD_CPU, "hk_replicas": MIN_PODS, "max_replicas": MAX_PODS,
          "autoscale_metric": "in_flight", "autoscale_target": AUTOSCALE_TARGET,
          # request threads: the peak's 9 waiting decodes never wait for a thread; what each thread may parse and
          # decode counts against the pod's memory plan (1Gi), so bodies, videos and images are held small (the
          # callers' image is 3.5 KB, 246 x 58 pixels)
          "http_threads": 16, "max_body_bytes": 1 << 20, "max_video_bytes": 1 << 19, "max_image_pixels": 1_000_000}
LIGHT_RATE, LIGHT_CALLERS = 6, 4
PEAK_RATE, PEAK_CALLERS = 60, 24  # 24 threads: each request is held about 0.17 s, 10 at once at the peak
RAMP_SECONDS = 10
#: The scale-down stabilisation window of the test conf (the platform's is 300 s).
SCALE_DOWN_WINDOW = 30
#: The recording rules' window (scaling.WINDOW, "1m"): the trigger reads the mean in-flight of the last minute.
MEAN_WINDOW_SECONDS = int(scaling.WINDOW.removesuffix("m")) * 60
#: A scrape (1 s), a rule evaluation (1 s) and this test's sampling (0.5 s): how far what the HPA read can be from
#: what the test read of the same series.
SERIES_SLACK_SECONDS = 3
#: From the HPA's new desired count to a pod ready in Envoy: Argo's ReplicaSet, the scheduler, the sandbox and the
#: container (the image already on the node), the server's start and warm-up, the probes (1 s), istiod's push.
POD_START_SECONDS = 30
#: From the HPA's scale-down to the removed pods gone: preStop (1 s), drain_seconds (2 s), the server's exit.
POD_STOP_SECONDS = 20
PEAK_IN_FLIGHT = PEAK_RATE * STORAGE_WAIT_SECONDS  # Little's law: what the peak holds in flight, at least
LIGHT_IN_FLIGHT = LIGHT_RATE * STORAGE_WAIT_SECONDS
#: The stated bound on scale-up: from the metric crossing the target at 1 pod to 3 pods ready in Envoy. The 1m mean
#: climbs from the target to what asks for 3 (twice the target from 1 pod; past the tolerance of it, from 2 pods where
#: a sync on the way asked 2) at the peak's rate of climb, (PEAK_IN_FLIGHT - LIGHT_IN_FLIGHT) / MEAN_WINDOW_SECONDS a
#: second at least, then the HPA's next sync asks 3 and the pods start.
ASKS_THREE = (MAX_PODS - 1) * AUTOSCALE_TARGET * (1 + HPA_TOLERANCE)
CLIMB_SECONDS = (ASKS_THREE - AUTOSCALE_TARGET) * MEAN_WINDOW_SECONDS / (PEAK_IN_FLIGHT - LIGHT_IN_FLIGHT)
SCALE_UP_BOUND = CLIMB_SECONDS + HPA_SYNC_SECONDS + SERIES_SLACK_SECONDS + POD_START_SECONDS
#: The stated bound on scale-down, from the peak's end to 1 pod left: the 1m mean falls to the light load's level
#: (under the target) within its window, then the scale-down window, the HPA's sync and the removed pods' drain.
SCALE_DOWN_BOUND = MEAN_WINDOW_SECONDS + SCALE_DOWN_WINDOW + HPA_SYNC_SECONDS + SERIES_SLACK_SECONDS + POD_STOP_SECONDS
ARGO = ("argoproj.io", "v1alpha1")


def scaling_conf(source: Path, target: Path, prometheus: str) -> Path:
    """fast_conf's test conf (FAST's probes and scrape interval, the test's Prometheus as the region's) with the
    scale-down stabilisation window shortened to SCALE_DOWN_WINDOW; return it."""
    return shorten_scale_down(fast_conf(source, target, prometheus), SCALE_DOWN_WINDOW)


@contextmanager
def region_prometheus(plane, address: str, scaled: dict):
    """The platform ConfigMap's prometheusAddress (the only Prometheus podserve-autoscalers lets a trigger query) set to
    the test's, as the chart names the region's, until a dry run of the ScaledObject `scaled` is admitted; put back at
    the end."""
    from kubernetes import client

    core, objects = client.CoreV1Api(plane.api_client()), client.CustomObjectsApi(plane.api_client())
    namespace = yaml.safe_load((CHART / "values.yaml").read_text())["deployer"]["namespace"]
    before = core.read_namespaced_config_map(LIMITS_CONFIGMAP, namespace).data["prometheusAddress"]
    core.patch_namespaced_config_map(LIMITS_CONFIGMAP, namespace, {"data": {"prometheusAddress": address}})
    try:
        def admitted() -> bool:
            try:
                objects.create_namespaced_custom_object(*KEDA, scaled["metadata"]["namespace"], "scaledobjects", scaled,
                                                        dry_run="All")
                return True
            except client.ApiException as exc:
                if "may query only the Prometheus of the region" not in str(exc.body):
                    raise
                return False

        poll_until(admitted, "the admission policy reading the test's Prometheus address", 30, every=0.5)
        yield
    finally:
        core.patch_namespaced_config_map(LIMITS_CONFIGMAP, namespace, {"data": {"prometheusAddress": before}})


@dataclass(frozen=True)
class Sample:
    """One look at every part, every SAMPLE_SECONDS."""

    at: float  # time.monotonic()
    in_flight: float | None  # the trigger's query now: the pods' summed 1m mean in-flight, as KEDA reads it
    desired: int  # the HPA's desiredReplicas
    current: int  # the HPA's currentReplicas
    ready: int  # the Rollout's ready replicas
    pods: int  # the service's pods, stopping ones too
    hosts: int  # stable's hosts Envoy holds healthy and not ejected


def hpa_asks(in_flight: float, current: int) -> int:
    """What the HPA controller asks for an AverageValue external metric (replica_calculator.go): `current` while the
    usage ratio is within HPA_TOLERANCE of 1, else ceil(usage / target), within MIN_PODS and MAX_PODS."""
    if abs(in_flight / (AUTOSCALE_TARGET * current) - 1) <= HPA_TOLERANCE:
        return current
    return min(MAX_PODS, max(MIN_PODS, math.ceil(in_flight / AUTOSCALE_TARGET)))


class ScalingBench:
    """hk of the WaitsOnStorage build on the real node behind the gateway, with KEDA's HPA, sampled."""

    def __init__(self, service, namespace: str, manifests: Path, gateway, prometheus: Prometheus):
        from kubernetes import client

        self.service, self.namespace, self.manifests = service, namespace, manifests
        self.envoy, self.prometheus = gateway.envoy, prometheus
        stage = service.conf.stages["hk"]
        self.url, self.host = gateway.url + stage.public_path(NAME, TEAM), stage.ingress_host
        api = service.plane.api_client()
        self.core, self.objects = client.CoreV1Api(api), client.CustomObjectsApi(api)
        self.autoscaling = client.AutoscalingV2Api(api)
        self.hpa_name = scaling.HPA_PREFIX + NAME
        self.stable = subset_cluster(service, manifests, namespace, "stable")
        self.query = scaled_object(manifests)["spec"]["triggers"][0]["metadata"]["query"]

    def hpa(self):
        return self.autoscaling.read_namespaced_horizontal_pod_autoscaler(self.hpa_name, self.namespace)

    def in_flight(self) -> float | None:
        result = self.prometheus.query(self.query)
        return float(result[0]["value"][1]) if result else None

    def sample(self) -> Sample:
        hpa = self.hpa()
        rollout = self.objects.get_namespaced_custom_object(*ARGO, self.namespace, "rollouts", NAME)
        pods = self.core.list_namespaced_pod(self.namespace, label_selector=f"service={NAME}").items
        hosts = sum(1 for h in self.envoy.hosts(self.stable).values() if h["eds_healthy"] and not h["ejected"])
        return Sample(time.monotonic(), self.in_flight(), hpa.status.desired_replicas or 0,
                      hpa.status.current_replicas or 0, (rollout.get("status") or {}).get("readyReplicas", 0),
                      len(pods), hosts)

    def callers(self, rate: int, callers: int, ramp_seconds: float = 0) -> PacedCallers:
        return PacedCallers(self.url, self.host, example_body(), rate, callers, seconds=600, ramp_seconds=ramp_seconds)

    def requests_per_host(self) -> dict[str, int]:
        return {address: h["rq_total"] for address, h in self.envoy.hosts(self.stable).items()}


@pytest.fixture(scope="module")
def scaling_bench(grey_service, istiod, rollouts_controller, keda, tmp_path_factory):
    """hk of the WaitsOnStorage build (1 pod, KEDA scaling it up to 3) on the real node behind the gateway, Prometheus
    scraping the namespace's pods and recording the chart's scaling series."""
    from kubernetes import client

    began = time.monotonic()
    work = tmp_path_factory.mktemp("real-node-scaling")
    namespace = grey_service.conf.stages["hk"].namespace_for(TEAM)
    with ExitStack() as stack:
        targets = PodTargetFeed(grey_service.plane.api_client(), work / "targets.json", [namespace]).start()
        stack.callback(targets.stop)
        prometheus = Prometheus(work / "prometheus", [], rule_files=[RULES], file_targets=work / "targets.json").start()
        stack.callback(prometheus.stop)
        conf_dir = scaling_conf(grey_service.checkout / "conf", work / "conf", prometheus.url)
        manifests = grey_service.render(NAME, COMMIT, stage="hk", conf=conf_dir, variant="-scaling", **VALUES)
        stack.enter_context(region_prometheus(grey_service.plane, prometheus.url, scaled_object(manifests)))
        # removed before the address is put back: KEDA's last update of its ScaledObject (its finalizer) is admitted
        stack.callback(remove_scaled_hk, grey_service, namespace)
        wait_for_no_hk_pods(grey_service, namespace)
        gateway = stack.enter_context(hk_gateway(grey_service, istiod, work))
        bench = ScalingBench(grey_service, namespace, manifests, gateway, prometheus)
        deployed = grey_service.deploy("apply", manifests=manifests, stage="hk", conf=conf_dir, timeout=600)
        assert deployed.returncode == 0, deployed.output
        hpa = poll_until(lambda: read_or_none(bench.hpa), f"KEDA's HPA {bench.hpa_name}", 60)
        assert (hpa.spec.min_replicas, hpa.spec.max_replicas) == (MIN_PODS, MAX_PODS)
        # the platform's behaviour (conf/platform.yaml), its scale-down window shortened in the test conf only
        behavior = client.ApiClient().sanitize_for_serialization(hpa.spec.behavior)
        expected = scaling.behavior(load_conf(conf_dir))
        assert behavior["scaleDown"]["stabilizationWindowSeconds"] == SCALE_DOWN_WINDOW, behavior
        for direction in ("scaleUp", "scaleDown"):
            for field in ("stabilizationWindowSeconds", "policies"):
                assert behavior[direction][field] == expected[direction][field], (behavior, expected)
        poll_until(lambda: bench.in_flight() is not None and read_or_none(bench.hpa).status.current_metrics,
                   "the HPA reading the pods' in-flight from KEDA", 90)
        poll_until(lambda: sum(1 for h in bench.envoy.hosts(bench.stable).values() if h["eds_healthy"]) == MIN_PODS,
                   "Envoy holding the one pod", 60)
        print(f"\nhk of the scaling service deployed, KEDA's HPA reading it, in {time.monotonic() - began:.1f} s")
        yield bench
        assert gateway.envoy.rejected_updates() == {} and gateway.envoy.istio_type_urls() == []


def test_a_load_ramp_scales_1_to_3_within_its_bound_and_back_to_1_after_the_window_failing_no_request(
        scaling_bench):
    bench = scaling_bench
    assert bench.query == scaling.query(scaling.IN_FLIGHT_SERIES, bench.namespace, NAME)
    with Timeline(bench.sample) as timeline, bench.callers(LIGHT_RATE, LIGHT_CALLERS) as light:
        start = time.monotonic()
        with bench.callers(PEAK_RATE - LIGHT_RATE, PEAK_CALLERS, RAMP_SECONDS) as peak:
            poll_until(lambda: timeline.last.ready == MAX_PODS and timeline.last.hosts == MAX_PODS,
                       f"{MAX_PODS} pods ready in Envoy", 3 * SCALE_UP_BOUND, every=SAMPLE_SECONDS)
            at_three = bench.requests_per_host()
            # each pod answers its share of the peak before the peak ends: the new ones take load
            poll_until(lambda: all(bench.requests_per_host().get(a, 0) - at_three.get(a, 0) >= PEAK_RATE // MAX_PODS
                                   for a in at_three), "every pod answering its share", 30, every=SAMPLE_SECONDS)
        peak_end = time.monotonic()
        poll_until(lambda: (timeline.last.pods, timeline.last.hosts, timeline.last.desired) == (1, 1, 1),
                   "back to one pod", 3 * SCALE_DOWN_BOUND, every=SAMPLE_SECONDS)
        count = len(light.outcomes)
        poll_until(lambda: len(light.outcomes) >= count + LIGHT_RATE, "a second of callers on the one pod", 30)
    seconds = time.monotonic() - start

    crossed = timeline.first(lambda s: s.in_flight is not None and s.in_flight > AUTOSCALE_TARGET, start)
    asks_three = timeline.first(lambda s: s.in_flight is not None and hpa_asks(s.in_flight, s.current) == MAX_PODS,
                                start)
    desired_three = timeline.first(lambda s: s.desired == MAX_PODS, start)
    three_ready = timeline.first(lambda s: s.ready == MAX_PODS and s.hosts == MAX_PODS, start)
    asks_one = timeline.first(lambda s: s.in_flight is not None and hpa_asks(s.in_flight, s.current) == MIN_PODS,
                              peak_end)
    desired_one = timeline.first(lambda s: s.desired == MIN_PODS, peak_end)
    one_left = timeline.first(lambda s: (s.pods, s.hosts) == (1, 1), desired_one.at if desired_one else peak_end)
    highest = max(s.in_flight for s in timeline.samples if s.in_flight is not None)
    desired = distinct([s.desired for s in timeline.samples if s.desired])
    window = f"{seconds + MEAN_WINDOW_SECONDS:.0f}s"
    pods = f'{{namespace="{bench.namespace}"}}'
    (most_held,) = bench.prometheus.query(f"max(max_over_time({m.IN_FLIGHT}{pods}[{window}]))")
    (limit,) = bench.prometheus.query(f"min({m.ADMISSION_LIMIT}{pods})")
    most_held, limit = float(most_held["value"][1]), float(limit["value"][1])
    print(f"\nscale-up: the summed mean in-flight crossed {AUTOSCALE_TARGET} {since(crossed, start):.1f} s into the "
          f"ramp at {crossed.current} pod; it asked for {MAX_PODS} {since(asks_three, crossed):.1f} s later, the "
          f"HPA desired them {since(desired_three, asks_three):.1f} s after, {MAX_PODS} ready in Envoy "
          f"{since(three_ready, desired_three):.1f} s after that: {since(three_ready, crossed):.1f} s from the "
          f"crossing (bound {SCALE_UP_BOUND:.0f} s); highest summed mean {highest:.2f}, most one pod held "
          f"{most_held:.0f} (its admission limit {limit:.0f})")
    print(f"scale-down: the mean asked for 1 {since(asks_one, peak_end):.1f} s after the peak's end, the HPA "
          f"desired 1 {since(desired_one, asks_one):.1f} s later (window {SCALE_DOWN_WINDOW} s), one pod left "
          f"{since(one_left, desired_one):.1f} s after: {since(one_left, peak_end):.1f} s from the peak's end "
          f"(bound {SCALE_DOWN_BOUND:.0f} s); desired {desired}")
    print(f"callers: light {light.statuses()}, peak {peak.statuses()}; {seconds:.0f} s of load; "
          f"{len(timeline.samples)} samples, {len(timeline.errors)} failed {timeline.errors[:3]}")

    # up: from one pod, the HPA's next sync after the metric asks for 3, the pods within their start
    assert crossed.current == MIN_PODS, crossed
    assert since(three_ready, crossed) <= SCALE_UP_BOUND, timeline.samples
    assert since(desired_three, asks_three) <= HPA_SYNC_SECONDS + SERIES_SLACK_SECONDS, timeline.samples
    assert since(three_ready, desired_three) <= POD_START_SECONDS, timeline.samples
    assert AUTOSCALE_TARGET < highest and most_held < limit, (highest, most_held, limit)
    # up to 3 (through 2 where a sync fell between the levels that ask 2 and 3), then down to 1 (likewise), no
    # flapping between
    assert desired[0] == desired[-1] == MIN_PODS and max(desired) == MAX_PODS, desired
    top = desired.index(MAX_PODS)
    assert desired[:top + 1] == sorted(desired[:top + 1]) and desired[top:] == sorted(desired[top:], reverse=True)
    # down: held by the window once the mean asks for 1, then the pods drained
    waited = since(desired_one, asks_one)
    assert SCALE_DOWN_WINDOW - HPA_SYNC_SECONDS - SERIES_SLACK_SECONDS <= waited, timeline.samples
    assert waited <= SCALE_DOWN_WINDOW + HPA_SYNC_SECONDS + SERIES_SLACK_SECONDS, timeline.samples
    # the window held a higher count than the mean asked (not the HPA's ScaleDownStabilized reason: a sync that rescales
    # reports SucceededRescale, and 3 -> 2 -> 1 may rescale at each sync of the window)
    assert any(hpa_asks(s.in_flight, s.current) < s.desired for s in timeline.samples
               if asks_one.at <= s.at < desired_one.at and s.in_flight is not None), timeline.samples
    assert since(one_left, desired_one) <= POD_STOP_SECONDS, timeline.samples
    assert since(one_left, peak_end) <= SCALE_DOWN_BOUND, timeline.samples
    assert max(s.pods for s in timeline.samples) <= MAX_PODS, timeline.samples
    # nothing failed: the ramp, the new pods joining, the removed pods draining under the light load
    assert light.statuses() == {200: len(light.outcomes)}, light.failed()[:10]
    assert peak.statuses() == {200: len(peak.outcomes)}, peak.failed()[:10]
    assert_no_runtime_fault(bench.service, bench.namespace)  # the pod left
