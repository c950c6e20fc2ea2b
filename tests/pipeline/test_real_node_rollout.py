"""Production releases on Argo Rollouts on the real node, under callers through Envoy (issue 66, It must show 1, 2 and 6).

Real: the control plane, the real node (kubelet, containerd, runc) running our image as CI's jobs built it
(tests/pipeline/conftest.py grey_service), the Argo Rollouts controller (the session's, `make argo-rollouts`) setting
the weights on the VirtualService the deploy tool applied and running the service's AnalysisTemplate against a real
Prometheus that scrapes the pods (PodTargetFeed: the live PodMonitor's targets, the pod template hash label copied as
the operator does), istiod feeding the weights Argo writes to Envoy 1.40 on the node's bridge (the gateway), the
deploy tool's CLI as CI runs it. The builds are one image told apart by value.py's `handler`
(real_node_service.RECIPES): stable the example's TextDirection; FAILING raises on every third decode (a 500);
SLOWER answers the same 20 ms later; GOOD answers the same with `build` added.

Rates and thresholds, stated: RATE requests a second of the example's text line through Envoy from CALLERS threads;
each pod CPU 400m (the node holds stable's 2, the canary's and pods stopping). Steps STEPS; the test conf judges each
step over WINDOW seconds with VERDICT's floors (the platform's 0.2-point error floor and 2-point latency floor need
thousands of requests a step: minutes at this rate); the slow start, probe period and scrape interval are 1 s. A
step's measured canary share (Envoy's own request counts per subset) is bounded by DEVIATIONS binomial deviations.
"""

from __future__ import annotations

import math
import signal
import sys
import threading
import time
from contextlib import ExitStack
from pathlib import Path

import pytest
import yaml

from real_node_service import (COMMIT, NAME, POD_CPU, REPO, TEAM, PacedCallers, assert_no_runtime_fault, example_body,
                               fast_conf, hk_gateway, remove_hk, subset_cluster)

sys.path[:0] = [str(REPO / "tests" / "deploy"), str(REPO / "tests" / "mesh")]
from live import finish, read_until  # noqa: E402
from receiver import Receiver  # noqa: E402

from podserve.testbed.processes import poll_until  # noqa: E402
from podserve.testbed.prometheus import PodTargetFeed, Prometheus  # noqa: E402
from podserve.tooling import analysis_template as at  # noqa: E402
from podserve.tooling.analysis_template import HASH_POD_LABEL  # noqa: E402
from podserve.tooling.conf import load_conf  # noqa: E402

RATE = 60
CALLERS = 8
STEPS = [25, 50]
WINDOW = 10
#: The floors are the least of each *_floor and *_margin (analysis_template.Thresholds.of), so both are raised.
VERDICT = {"window_seconds": WINDOW, "min_requests": 100, "max_extensions": 1, "error_margin": 0.05,
           "error_floor": 0.05, "latency_margin": 0.15, "latency_floor": 0.15, "queue_margin": 0.15,
           "queue_floor": 0.15}
#: Argo's scaleDownDelaySeconds here: the old pods serve this long after the switch (istiod pushes in under 1 s).
SCALE_DOWN_DELAY = 5
#: The most seconds from Argo's write of a weight to Envoy running it: istiod's debounce waits for 100 ms of quiet, at
#: most 10 s (PILOT_DEBOUNCE_MAX), then pushes.
PUSH_BOUND = 15
#: stable's pods (value.py hk_replicas), all of which must be in the stable subset whenever a weight goes to stable.
STABLE_PODS = 2
DEVIATIONS = 3.5
FAILING = "real_node_recipes:FailsEveryThirdDecode"
SLOWER = "real_node_recipes:SlowerBy20ms"
GOOD = "real_node_recipes:MarksItsAnswers"
ARGO = ("argoproj.io", "v1alpha1")
ISTIO = ("networking.istio.io", "v1")


def release_conf(source: Path, target: Path, prometheus: str) -> Path:
    """The checkout's conf/ as fast_conf makes it (FAST's probes, slow start and scrape interval, the test's Prometheus
    as the region's), with VERDICT, the short scale-down delay and a 5 s deploy lock lease; return it."""
    conf = fast_conf(source, target, prometheus)
    policy = yaml.safe_load((conf / "deploy.yaml").read_text())
    policy["verdict"].update(VERDICT)
    policy["canary_scale_down_delay_seconds"] = SCALE_DOWN_DELAY
    policy["lock_lease_seconds"] = 5  # a killed job's lock is free that soon
    (conf / "deploy.yaml").write_text(yaml.safe_dump(policy))
    return conf


class Bench:
    """hk on the real node: the rendered builds, the deploy tool, the gateway's Envoy, the live objects."""

    def __init__(self, service, conf_dir: Path, namespace: str, gateway, work: Path):
        from kubernetes import client

        self.service, self.conf_dir, self.namespace, self.work = service, conf_dir, namespace, work
        self.envoy = gateway.envoy
        stage = load_conf(conf_dir).stages["hk"]
        self.path = stage.public_path(NAME, TEAM)
        self.url, self.host = gateway.url + self.path, stage.ingress_host
        self.objects = client.CustomObjectsApi(service.plane.api_client())
        self.prometheus: Prometheus | None = None  # the bench fixture's
        self.core = client.CoreV1Api(service.plane.api_client())
        self._rendered: dict[str, Path] = {}

    def manifests(self, handler: str = "server:TextDirection", **fields) -> Path:
        """hk of the service with `handler`, POD_CPU, canary_steps STEPS (and `fields`), rendered with the test conf."""
        key = f"{handler}-{sorted(fields.items())}"
        if key not in self._rendered:
            variant = f"-rollout-{handler.split(':')[-1]}-{len(self._rendered)}"
            self._rendered[key] = self.service.render(NAME, COMMIT, stage="hk", conf=self.conf_dir, variant=variant,
                                                      handler=handler, cpu=POD_CPU, canary_steps=STEPS, **fields)
        return self._rendered[key]

    def callers(self) -> PacedCallers:
        """RATE requests a second through the gateway from CALLERS threads, for at most 420 s."""
        return PacedCallers(self.url, self.host, example_body(), RATE, CALLERS, seconds=420)

    def deploy(self, *args: str, manifests: Path | None = None, **env):
        return self.service.deploy(*args, manifests=manifests, stage="hk", conf=self.conf_dir, env=env, timeout=600)

    def start(self, manifests: Path, **env):
        return self.service.start("apply", manifests=manifests, stage="hk", conf=self.conf_dir, env=env)

    def cluster(self, subset: str) -> str:
        return subset_cluster(self.service, self.manifests(), self.namespace, subset)

    def rollout(self) -> dict:
        return self.objects.get_namespaced_custom_object(*ARGO, self.namespace, "rollouts", NAME)

    def virtual_service(self) -> dict:
        return self.objects.get_namespaced_custom_object(*ISTIO, self.namespace, "virtualservices", NAME)

    def weights(self) -> tuple[int, int]:
        """(stable, canary) of the live VirtualService's weighted route, as Argo set them."""
        return weights_of(self.virtual_service())

    def envoy_weights(self) -> tuple[int, int]:
        """(stable, canary) of the callers' route as Envoy runs it now: istiod leaves a 0 weight out, and sends one
        cluster alone when only one is left."""
        index = {self.cluster("stable"): 0, self.cluster("canary"): 1}
        for route in self.envoy.routes():
            if route.get("match", {}).get("path") != self.path:
                continue
            action, weights = route["route"], [0, 0]
            for cluster in action.get("weighted_clusters", {}).get("clusters", [{"name": action.get("cluster"),
                                                                                 "weight": 100}]):
                weights[index[cluster["name"]]] = cluster["weight"]
            return weights[0], weights[1]
        raise AssertionError(f"Envoy has no route for {self.path}")

    def sent(self) -> dict[str, int]:
        """Requests Envoy has sent each subset's cluster so far (upstream_rq_total)."""
        found = {}
        for subset in ("stable", "canary"):
            try:
                found[subset] = self.envoy.cluster_stat(self.cluster(subset), "upstream_rq_total")
            except KeyError:
                found[subset] = 0
        return found

    def healthy_hosts(self, subset: str = "stable") -> int:
        """A subset's endpoints Envoy holds as healthy and not ejected."""
        return sum(1 for h in self.envoy.hosts(self.cluster(subset)).values() if h["eds_healthy"] and not h["ejected"])

    def stable_pods(self) -> dict[str, tuple]:
        """{name: (uid, restarts)} of the pods of the Rollout's stable ReplicaSet, not stopping."""
        stable = self.rollout()["status"].get("stableRS", "")
        pods = self.core.list_namespaced_pod(self.namespace,
                                             label_selector=f"service={NAME},rollouts-pod-template-hash={stable}").items
        return {p.metadata.name: (p.metadata.uid, sum(c.restart_count for c in p.status.container_statuses or []))
                for p in pods if not p.metadata.deletion_timestamp}


def weights_of(virtual_service: dict) -> tuple[int, int]:
    """(stable, canary) of a VirtualService's weighted route."""
    for http in virtual_service["spec"]["http"]:
        found = {d["destination"].get("subset"): d.get("weight", 0) for d in http.get("route", [])}
        if set(found) == {"stable", "canary"}:
            return found["stable"], found["canary"]
    raise AssertionError(f"no weighted route in {virtual_service['spec']['http']}")


class WeightWatch:
    """Every change of the route's weights: each one Argo writes to the VirtualService, seen by watching it (`changes`:
    time, (stable, canary), each subset's healthy endpoints in Envoy then, Envoy's requests sent per subset then), and
    the route Envoy runs once istiod pushed it, seen by polling Envoy every 0.1 s (`applied`: time, (stable, canary),
    requests sent per subset before the last poll that read this route, and after the first: between them, every
    request was sent under it; a weight replaced before istiod pushed it never runs). And every version
    of the DestinationRule whose subsets do not all select a pod template hash (`unhashed`: such a subset selects every
    pod of the Service).

    Leaving waits until Envoy runs the VirtualService's last weights (at most PUSH_BOUND s), so that the next test's
    callers never meet a route of this test's release."""

    def __init__(self, bench: Bench):
        self.bench = bench
        self.changes: list[tuple[float, tuple[int, int], dict[str, int], dict[str, int]]] = []
        self.applied: list[tuple[float, tuple[int, int], dict[str, int], dict[str, int]]] = []
        self.unhashed: list[list[dict]] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._watch, args=("virtualservices", self._written), daemon=True),
                         threading.Thread(target=self._watch, args=("destinationrules", self._subsets), daemon=True),
                         threading.Thread(target=self._poll_envoy, daemon=True)]

    def __enter__(self) -> "WeightWatch":
        self._record(self.bench.weights())
        for thread in self._threads:
            thread.start()
        poll_until(lambda: self.applied, "Envoy's route read once", 10)
        return self

    def __exit__(self, *exc) -> None:
        try:
            if exc[0] is None:
                poll_until(lambda: self.applied[-1][1] == self.changes[-1][1],
                           f"Envoy running the VirtualService's last weights {self.changes[-1]}", PUSH_BOUND)
        finally:
            self._stop.set()
            for thread in self._threads:
                thread.join(timeout=10)

    def _record(self, weights: tuple[int, int]) -> None:
        seen = time.monotonic()
        if not self.changes or self.changes[-1][1] != weights:
            hosts = {subset: self.bench.healthy_hosts(subset) for subset in ("stable", "canary")}
            self.changes.append((seen, weights, hosts, self.bench.sent()))

    def _written(self, virtual_service: dict) -> None:
        self._record(weights_of(virtual_service))

    def _subsets(self, rule: dict) -> None:
        subsets = rule["spec"].get("subsets") or []
        if not all(HASH_POD_LABEL in (s.get("labels") or {}) for s in subsets):
            self.unhashed.append(subsets)

    def _watch(self, plural: str, seen) -> None:
        """Every version of the service's object of `plural` from the one read now, each given to `seen`: a watch that
        the apiserver ends each second, so that leaving stops it."""
        from kubernetes import watch

        def read() -> dict:
            return self.bench.objects.get_namespaced_custom_object(*ISTIO, self.bench.namespace, plural, NAME)

        version = read()["metadata"]["resourceVersion"]
        while not self._stop.is_set():
            stream = watch.Watch().stream(
                self.bench.objects.list_namespaced_custom_object, *ISTIO, self.bench.namespace, plural,
                field_selector=f"metadata.name={NAME}", resource_version=version, timeout_seconds=1)
            for event in stream:
                found = read() if event["type"] == "ERROR" else event["object"]  # e.g. its version compacted away
                version = found["metadata"]["resourceVersion"]
                seen(found)

    def _poll_envoy(self) -> None:
        while not self._stop.is_set():
            before = self.bench.sent()
            running = self.bench.envoy_weights()
            after = self.bench.sent()
            if not self.applied or self.applied[-1][1] != running:
                self.applied.append((time.monotonic(), running, before, after))
            else:
                self.applied[-1] = self.applied[-1][:2] + (before, self.applied[-1][3])
            self._stop.wait(0.1)

    def sent_under(self, weights: tuple[int, int]) -> tuple[int, int]:
        """(canary, all) of the requests Envoy sent while it ran `weights` (the first time), counted between the
        first poll that read that route and the last one that still did."""
        ran = [w for _, w, _, _ in self.applied]
        (_, _, last_before, first_after) = self.applied[ran.index(weights)]
        canary = last_before["canary"] - first_after["canary"]
        return canary, canary + last_before["stable"] - first_after["stable"]

    def push_seconds(self) -> list[float | None]:
        """For each change of the VirtualService after the first, the seconds from the watch seeing it to Envoy
        running it (None: Envoy never ran it after that, as when istiod pushed it and the next write together)."""
        return [next((round(t - written, 1) for t, running, *_ in self.applied if t >= written and running == weights),
                     None) for written, weights, *_ in self.changes[1:]]


@pytest.fixture(scope="module")
def bench(grey_service, istiod, rollouts_controller, tmp_path_factory):
    """hk's first revision (stable: the example's handler, 2 pods) on the real node behind the gateway, Prometheus
    scraping the namespace's pods by their PodMonitor."""
    work = tmp_path_factory.mktemp("real-node-rollout")
    namespace = grey_service.conf.stages["hk"].namespace_for(TEAM)
    with ExitStack() as stack:
        targets = PodTargetFeed(grey_service.plane.api_client(), work / "targets.json", [namespace]).start()
        stack.callback(targets.stop)
        prometheus = Prometheus(work / "prometheus", [], file_targets=work / "targets.json").start()
        stack.callback(prometheus.stop)
        conf_dir = release_conf(grey_service.checkout / "conf", work / "conf", prometheus.url)
        stack.callback(remove_hk, grey_service, namespace)
        core = bench_core(grey_service)
        poll_until(lambda: not core.list_namespaced_pod(namespace, label_selector=f"service={NAME}").items,
                   "no hk pod of the service left from an earlier test", 120)
        gateway = stack.enter_context(hk_gateway(grey_service, istiod, work))
        bench = Bench(grey_service, conf_dir, namespace, gateway, work)
        bench.prometheus = prometheus
        first = bench.deploy("apply", manifests=bench.manifests())
        assert first.returncode == 0, first.output
        poll_until(lambda: bench.healthy_hosts() == STABLE_PODS, "Envoy holding stable's 2 pods", 60)
        yield bench
        assert gateway.envoy.rejected_updates() == {} and gateway.envoy.istio_type_urls() == []
        assert_no_runtime_fault(grey_service, namespace)  # stable's pods, through every release of the module


def bench_core(service):
    from kubernetes import client

    return client.CoreV1Api(service.plane.api_client())


def _bound(weight: int, requests: int) -> float:
    """DEVIATIONS binomial standard deviations of a share at `weight` percent over `requests`."""
    p = weight / 100
    return DEVIATIONS * math.sqrt(p * (1 - p) / max(requests, 1))


def _assert_full_stable_at_each_switch(watch: WeightWatch) -> None:
    """Item 6: whenever the weights went back towards stable, Envoy held every stable pod as healthy; whenever all
    went to one subset (stable after an abort, the canary at Argo's full promotion), that subset held a stable's
    worth of pods. And the DestinationRule's subsets never selected every pod of the Service (the deploy tool's apply
    keeps Argo's hashes: argo.keep_subset_hashes)."""
    assert watch.unhashed == [], watch.unhashed
    for previous, (_, weights, hosts, _) in zip(watch.changes, watch.changes[1:]):
        if weights[0] > previous[1][0]:
            assert hosts["stable"] >= STABLE_PODS, (weights, hosts, watch.changes)
        for subset, weight in zip(("stable", "canary"), weights):
            if weight == 100:
                assert hosts[subset] >= STABLE_PODS, (weights, hosts, watch.changes)


def test_a_failing_build_is_aborted_at_its_first_step_within_its_share_and_stable_never_restarts(bench):
    before = bench.stable_pods()
    receiver = Receiver()
    try:
        with bench.callers() as callers, WeightWatch(bench) as watch:
            run = bench.deploy("apply", manifests=bench.manifests(FAILING), PODSERVE_NOTIFY_URL=receiver.url)
        weights = [c[1] for c in watch.changes]
        print(f"\nfailing build: exit {run.returncode} in {run.seconds:.1f} s; weights {weights}; callers "
              f"{callers.statuses()}")
        assert run.returncode == 1, run.output
        assert "Argo Rollouts aborted the release" in run.output and "errors: Failed" in run.output, run.output
        assert weights == [(100, 0), (75, 25), (100, 0)], watch.changes  # aborted at step 1, never at 50
        # the share while Envoy ran step 1's weights
        ran = [w for _, w, _, _ in watch.applied]
        assert ran[ran.index((75, 25)):] == [(75, 25), (100, 0)], watch.applied
        canary, total = watch.sent_under((75, 25))
        print(f"step 1: Envoy sent the canary {canary} of {total} requests ({canary / total:.3f}); Envoy ran each "
              f"weight {watch.push_seconds()} s after Argo wrote it")
        assert abs(canary / total - 0.25) <= _bound(25, total), (canary, total)
        _assert_full_stable_at_each_switch(watch)
        assert set(callers.statuses()) <= {200, 500}  # the failing build's own 500s; nothing lost by the mesh
        assert bench.stable_pods() == before  # the same pods, never restarted
        (body,) = [b for b in receiver.bodies if b["outcome"] != "serving"]
        assert body["outcome"] == "rolled_back" and "errors: Failed" in body["diagnosis"], body
        assert "candidate_judged" in body["diagnosis"], body  # the analysis' counts, named
    finally:
        receiver.stop()


def test_a_build_20_ms_slower_fails_on_latency(bench):
    before = bench.stable_pods()
    with bench.callers() as callers, WeightWatch(bench) as watch:
        run = bench.deploy("apply", manifests=bench.manifests(SLOWER))
    print(f"\nslower build: exit {run.returncode} in {run.seconds:.1f} s; callers {callers.statuses()}; Envoy ran "
          f"each weight {watch.push_seconds()} s after Argo wrote it")
    assert run.returncode == 1, run.output
    assert "latency: Failed" in run.output and "errors: Failed" not in run.output, run.output
    # the counts, named: on a loaded machine B's bucket hides the 20 ms and M fails it (analysis_template's docstring)
    (latency,) = [part for part in run.output.split("; ") if part.startswith("latency: Failed")]
    print(latency)
    assert "candidate_above_median, stable_above_median" in latency, latency
    _assert_full_stable_at_each_switch(watch)
    assert set(callers.statuses()) == {200}, callers.failed()  # (time sent, status, body)
    assert bench.stable_pods() == before


def test_a_killed_job_s_release_goes_on_alone_the_rerun_reports_its_end_and_a_good_build_is_promoted(bench):
    """The job SIGKILLed at step 1: Argo goes on through every step and promotes; the rerun attaches and reports
    serving; every caller answered 200 throughout, GOOD's marks only at the end."""
    before = bench.stable_pods()
    manifests = bench.manifests(GOOD)
    with bench.callers() as callers, WeightWatch(bench) as watch:
        process = bench.start(manifests)
        poll_until(lambda: bench.weights() == (75, 25), "Argo at step 1's weight", 120)
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
        rerun = bench.start(manifests)
        seen = read_until(rerun, lambda line: line.startswith("attaching to revision"), "the rerun attaches", 120)
        out = finish(rerun, seen, 300)
        count = len(callers.outcomes)
        poll_until(lambda: len(callers.outcomes) >= count + RATE, "a second of callers after the promotion", 60)
    weights = [c[1] for c in watch.changes]
    print(f"\nkilled at step 1, rerun: exit {rerun.returncode}; weights {weights}; callers {callers.statuses()}; "
          f"Envoy ran each weight {watch.push_seconds()} s after Argo wrote it")
    assert rerun.returncode == 0 and "serving: revision" in out, out
    # every step, then Argo's full promotion: all requests to the new pods (the canary subset at 100), then, once the
    # new ReplicaSet is stable, 100/0 again (Argo does so after the promotion, or as the next release starts)
    first = weights.index((75, 25))
    assert weights[first:first + 3] == [(75, 25), (50, 50), (0, 100)], watch.changes
    assert weights[first + 3:] in ([], [(100, 0)]), watch.changes
    _assert_full_stable_at_each_switch(watch)
    assert callers.statuses() == {200: len(callers.outcomes)}
    assert {mark for _, _, mark in callers.outcomes[-RATE // 2:]} == {"marked"}
    after = bench.stable_pods()
    assert set(after).isdisjoint(before) and len(after) == STABLE_PODS


def test_prometheus_stopped_at_the_last_step_errors_and_aborts_naming_it_back_to_a_full_stable_failing_no_request(
        bench, rollouts_controller):
    """It must show 2 and 6's full-weight step: Prometheus stopped once Argo is at step 2 (50%; step 1's abort is the
    failing build's, by its analysis): each measurement is an error, retried every 10 s, and after
    CONSECUTIVE_ERROR_LIMIT + 1 of them the run ends in Error, never a pass; Argo sends every request back to stable,
    which holds all its pods at that moment (no dynamic stable scale); the tool names Prometheus; every caller
    answered 200. Step 1's analysis is skipped by the operator's `kubectl argo rollouts promote` (the next step), so
    that what is tested does not hang on a verdict. The module's last test: its Prometheus stays stopped."""
    before = bench.stable_pods()
    step = len(STEPS)
    weight = STEPS[step - 1]
    manifests = bench.manifests(GOOD, drain_seconds=2 + step)  # a pod template of its own: a release each time
    with bench.callers() as callers, WeightWatch(bench) as watch:
        process = bench.start(manifests)
        try:
            poll_until(lambda: bench.weights() == (100 - STEPS[0], STEPS[0]), "Argo at step 1's weight", 180)
            skipped = rollouts_controller.plugin("promote", NAME, "-n", bench.namespace)
            assert skipped.returncode == 0, skipped.stderr
            poll_until(lambda: bench.weights() == (100 - weight, weight), f"Argo at step {step}'s weight", 60)
        except (TimeoutError, AssertionError):
            process.kill()
            raise AssertionError(f"the release never reached step {step}: {process.communicate()[0]}\n"
                                 f"{bench.rollout().get('status')}") from None
        bench.prometheus.stop()
        stopped = time.monotonic()
        out = process.communicate(timeout=300)[0]
        aborted_after = time.monotonic() - stopped
    weights = [c[1] for c in watch.changes]
    print(f"\nPrometheus stopped at step {step}: job exit {process.returncode} {aborted_after:.0f} s later; weights "
          f"{weights}; callers {callers.statuses()}; Envoy ran each weight {watch.push_seconds()} s after Argo "
          "wrote it")
    assert process.returncode == 1 and "Argo Rollouts aborted the release" in out and "rolled back" in out, out
    assert "Error" in out and bench.prometheus.url.removeprefix("http://") in out, out  # the address, named
    runs = [r for r in bench.objects.list_namespaced_custom_object(*ARGO, bench.namespace, "analysisruns")["items"]
            if r["metadata"]["name"].startswith(bench.rollout()["metadata"]["name"])]
    # step 1's run (terminated by the promote: Successful, "Run Terminated") and step 2's are often created in the
    # same second: of the runs of that second, step 2's has the higher step index (the label Argo gives a step's run)
    last = max(runs, key=lambda r: (r["metadata"]["creationTimestamp"], _step_index(r)))
    assert last["status"]["phase"] == "Error", last["status"]
    for result in last["status"]["metricResults"]:
        assert result["consecutiveError"] == at.CONSECUTIVE_ERROR_LIMIT + 1 and not result.get("successful"), result
    assert weights[-1] == (100, 0) and (100 - weight, weight) in weights, watch.changes
    _assert_full_stable_at_each_switch(watch)
    assert callers.statuses() == {200: len(callers.outcomes)}
    assert bench.stable_pods() == before


def _step_index(run: dict) -> int:
    """The canary step whose analysis `run` is (Argo's label step-index); -1 for a run of no step."""
    return int(run["metadata"].get("labels", {}).get("step-index", -1))
