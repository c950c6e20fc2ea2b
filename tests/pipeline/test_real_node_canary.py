"""A production canary on the real node (issue 57, It must show 3): the selector's migration, a failing build
aborted at step 1, a good build promoted, the canary's header.

Real: the control plane with the platform chart's policies, its Deployment, ReplicaSet, EndpointSlice controllers and
garbage collector (orphaning, adoption); the real node (kubelet, containerd, runc: tests/conftest.py real_node) running
our image as CI's jobs built it (tests/pipeline/conftest.py grey_service), hk's 2 stable pods started, probed and
stopped by the kubelet; the deploy tool's CLI and its canary loop (as the admin, as the real node's other deploys);
istiod (the session's: tests/conftest.py) feeding Envoy 1.40 the VirtualService and DestinationRule the tool applies
and the pods' EndpointSlices, Envoy in its own pod network on the node's bridge (testbed/mesh Gateway); Prometheus
scraping the pods by the live PodMonitors (PodTargetFeed). The builds are one image, told apart by value.py's `handler`
(real_node_service.RECIPES), so no second build: stable serves the example's TextDirection, the failing build
FailsEveryThirdDecode (every third decode raises: a 500, as a build whose decode fails on real payloads), the good
build MarksItsAnswers (the same answers with `build` added, so a caller tells who answered).

Rates and thresholds, stated: RATE = 60 requests a second of the example's text line through Envoy, from 8 callers.
Each pod has CPU = 400m (the 2-core node holds the 2 stable pods, the canary's, the promotion's surge pod and one
pod still stopping); the example's server spends about 2.1 ms of CPU on such a request (300 of them, the server on
this machine), so one pod holds about 190 a second: 60 a second is well within 2 stable pods' capacity, and within the
canary's one pod at step 2's 50% (30 a second). Steps [25, 50]. The test's conf/deploy.yaml judges each step for
WINDOW = 10 s (about 150 canary requests at step 1) with min_requests 100, error margin 0.05, latency and queue margins
0.15, one extension (the platform's 120 s, 200, 0.01 and 0.05 would need minutes a step at this rate), alpha 0.01 and
the error ceiling 0.05 as the platform's; conf/platform.yaml's probe period, slow start and scrape interval are
tests/mesh's FAST ones (1 s). A step's measured canary share is bounded by DEVIATIONS binomial deviations.

At a canary's end (an abort, a promotion) the tool sets stable 100, lets the canary serve SCALE_DOWN_DELAY more
seconds (conf/deploy.yaml canary_scale_down_delay_seconds: 30 in the platform's conf; here 2 s: istiod pushes a change
within a few hundred milliseconds), then deletes it: no caller may get Envoy's 503 "no healthy upstream" from a subset
whose endpoints are gone. Deleted at once (the delay 0), 0 to 6 such 503s a run were measured (with the route feed that
stood in for istiod before issue 65), 0.16-0.44 s after stable 100.
"""

from __future__ import annotations

import base64
import json
import math
import shutil
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml

from real_node_service import COMMIT, NAME, REPO, TEAM

sys.path[:0] = [str(REPO / "tests" / "deploy"), str(REPO / "tests" / "mesh")]
from live import Live, finish, read_until  # noqa: E402
from mesh_setup import FAST, before_subsets  # noqa: E402
from receiver import Receiver  # noqa: E402

from podserve.testbed.cluster.node import BRIDGE, GATEWAY_ADDRESS, POD_SUBNET  # noqa: E402
from podserve.testbed.deploy_policy import unfrozen_conf  # noqa: E402
from podserve.testbed.mesh.gateway import Envoy, Gateway  # noqa: E402
from podserve.testbed.mesh.podnetwork import PodNetwork  # noqa: E402
from podserve.testbed.processes import poll_until  # noqa: E402
from podserve.testbed.prometheus import PodTargetFeed, Prometheus  # noqa: E402
from podserve.tooling import chart_values, release  # noqa: E402
from podserve.tooling.conf import load_conf  # noqa: E402
from podserve.tooling.deploy import canary_objects, drift  # noqa: E402
from podserve.tooling.deploy.history import History  # noqa: E402
from podserve.tooling.deploy.kube import MANAGED, PODS, REPLICASETS  # noqa: E402

RATE = 60
CALLERS = 8
CPU = "400m"
STEPS = [25, 50]
WINDOW = 10
VERDICT = {"window_seconds": WINDOW, "min_requests": 100, "error_margin": 0.05, "latency_margin": 0.15,
           "queue_margin": 0.15, "max_extensions": 1}
#: How far a step's measured canary share may stray from its weight: 3.5 binomial standard deviations at the
#: requests counted (a correct split falls outside with probability 5e-4 each).
DEVIATIONS = 3.5
#: The builds, by value.py's handler (real_node_service.RECIPES); stable's is the example's (real_node_service.SMALL).
FAILING = "real_node_recipes:FailsEveryThirdDecode"
GOOD = "real_node_recipes:MarksItsAnswers"
GOOD_MARK = "marked"
SELECTOR = f"service={NAME},stage=hk"
#: What Envoy answers (503) for a cluster with no endpoint: the canary's, deleted before the gateway applied stable 100.
NO_ENDPOINT = "no healthy upstream"
#: The canary's pods serve this long after stable 100 is set: istiod pushes the weights in well under that.
SCALE_DOWN_DELAY = 2


def canary_conf(source: Path, target: Path) -> Path:
    """The checkout's conf/ (the real node's pools) unfrozen, with FAST's probes, slow start and scrape interval and
    the short VERDICT; return it."""
    conf = unfrozen_conf(target, source)
    platform = yaml.safe_load((conf / "platform.yaml").read_text())
    for section, changes in FAST.items():
        platform[section].update(changes)
    (conf / "platform.yaml").write_text(yaml.safe_dump(platform))
    policy = yaml.safe_load((conf / "deploy.yaml").read_text())
    policy["verdict"].update(VERDICT)
    policy["canary_scale_down_delay_seconds"] = SCALE_DOWN_DELAY
    (conf / "deploy.yaml").write_text(yaml.safe_dump(policy))
    return conf


@pytest.fixture(scope="module")
def bench(grey_service, istiod, tmp_path_factory):
    """hk's two stable pods on the real node as deployed before issue 57, the gateway (Envoy fed by istiod) on the
    node's bridge, Prometheus on the pods; then the selector's migration, its rollback and the migration again under
    RATE requests a second."""
    work = tmp_path_factory.mktemp("real-node-canary")
    service = grey_service
    conf_dir = canary_conf(service.checkout / "conf", work / "conf")
    conf = load_conf(conf_dir)
    plane = service.plane
    namespace = conf.stages["hk"].namespace_for(TEAM)
    live = Live(plane, work / "live")
    network = PodNetwork.create()
    gateway = targets = prometheus = None
    try:
        network.attach(BRIDGE, f"{GATEWAY_ADDRESS}/{POD_SUBNET.split('/')[1]}")
        gateway = Gateway.start(plane.api_client(), istiod, network, work, conf.stages["hk"].gateway,
                                chart_values.chart_values(conf, "hk")["gateways"][0]["selector"])
        targets = PodTargetFeed(plane.api_client(), work / "targets.json", [namespace]).start()
        prometheus = Prometheus(work / "prometheus", [], file_targets=work / "targets.json").start()
        bench = Bench(service, live, conf_dir, conf, namespace, prometheus, gateway, work)
        first = bench.deploy("apply", manifests=bench.before_subsets())
        assert first.returncode == 0, first.output
        poll_until(lambda: bench.answered(5), "Envoy answering hk's route from the stable pods", 60)
        bench.migrate()
        yield bench
        assert gateway.envoy.rejected_updates() == {} and gateway.envoy.istio_type_urls() == []
    finally:
        if targets is not None:
            targets.stop()
        if prometheus is not None:
            prometheus.stop()
        if gateway is not None:
            gateway.stop()
        network.remove()
        live.remove(namespace, "hk", NAME)
        poll_until(lambda: not live.items(PODS, namespace, SELECTOR), "hk's pods gone from the real node", 60)


class Bench:
    """The canary's stage: the service's hk manifests per build, the deploy tool, what Envoy sent, the pods."""

    def __init__(self, service, live: Live, conf_dir: Path, conf, namespace: str, prometheus: Prometheus,
                 gateway: Gateway, work: Path):
        self.service, self.live, self.conf_dir, self.namespace = service, live, conf_dir, namespace
        self.prometheus, self.work = prometheus, work
        self.envoy: Envoy = gateway.envoy
        stage = conf.stages["hk"]
        self.url, self.host = gateway.url + stage.public_path(NAME, TEAM), stage.ingress_host
        image = base64.b64encode((REPO / "examples" / "text-line.png").read_bytes()).decode()
        self.body = {"postid": "p", "uid": "u", "seqid": "s", "image": image}
        self._rendered: dict[str | None, Path] = {}

    def manifests(self, handler: str | None = None) -> Path:
        """hk of the service with `handler` (None: stable's), CPU, canary_steps STEPS, rendered with the test's
        conf."""
        if handler not in self._rendered:
            fields = {"handler": handler} if handler else {}
            fields["cpu"] = CPU
            self._rendered[handler] = self.service.render(NAME, COMMIT, stage="hk", conf=self.conf_dir,
                                                          variant=f"-canary-{(handler or 'stable').split(':')[-1]}",
                                                          canary_steps=STEPS, **fields)
        return self._rendered[handler]

    def before_subsets(self) -> Path:
        """Stable's hk as render wrote it before issue 57: the Deployment selecting {service, stage}, the route to
        the Service without subsets or weights, the rule without subsets."""
        out = self.work / "manifests-before-subsets"
        shutil.copytree(self.manifests(), out)
        for path in out.glob("*.yaml"):
            path.write_text(yaml.safe_dump_all([before_subsets(d) for d in yaml.safe_load_all(path.read_text()) if d]))
        return out

    def deploy(self, verb: str, manifests: Path | None = None, **env):
        return self.service.deploy(verb, *self._prometheus(verb), manifests=manifests, stage="hk",
                                   conf=self.conf_dir, env=env)

    def start(self, manifests: Path, **env):
        return self.service.start("apply", *self._prometheus("apply"), manifests=manifests, stage="hk",
                                  conf=self.conf_dir, env=env)

    def _prometheus(self, verb: str) -> list[str]:
        return ["--prometheus", self.prometheus.url] if verb == "apply" else []

    def migrate(self) -> None:
        """Apply the rendered stable over the pre-57 one, roll back across the change, apply it again, under RATE
        requests a second; keep what the migration test asserts."""
        with Callers(self) as callers:
            callers.wait_for(2 * RATE, "two seconds of callers on the old route")
            before = self.stable_pods(), self.replicasets(), self.deployment()
            started = {"migrated": time.monotonic()}
            migrated = self.deploy("apply", self.manifests())
            after = self.stable_pods(), self.replicasets(), self.deployment()
            started["back"] = time.monotonic()
            back = self.deploy("rollback")
            rolled_back = self.stable_pods(), self.replicasets(), self.deployment()
            started["again"] = time.monotonic()
            again = self.deploy("apply", self.manifests())
            callers.wait_for(len(callers.outcomes) + 2 * RATE, "two seconds of callers on the new route")
        self.migration = {"before": before, "migrated": (migrated, *after), "back": (back, *rolled_back),
                          "again": (again, self.stable_pods(), self.replicasets(), self.deployment()),
                          "outcomes": list(callers.outcomes), "started": started}

    def answered(self, count: int) -> bool:
        import requests

        try:
            return all(self.post().status_code == 200 for _ in range(count))
        except requests.RequestException:
            return False

    def post(self, headers: dict | None = None):
        import requests

        return requests.post(self.url, json=self.body, headers={"Host": self.host, **(headers or {})}, timeout=30)

    def weights(self):
        return canary_objects.weights_of(self.live.admin.get(MANAGED["VirtualService"], self.namespace, NAME))

    def deployment(self):
        return self.live.admin.get(MANAGED["Deployment"], self.namespace, NAME)

    def canary(self):
        return self.live.admin.get(MANAGED["Deployment"], self.namespace, release.canary_name(NAME))

    def replicasets(self) -> list[dict]:
        return self.live.items(REPLICASETS, self.namespace, SELECTOR)

    def history(self) -> History:
        return History.load(self.live.admin, self.namespace, NAME, "hk")

    def stable_pods(self) -> dict[str, tuple]:
        """{name: (uid, restarts, container IDs)} of the stable pods: a container the kubelet restarted or replaced
        has a new ID."""
        pods = self.live.items(PODS, self.namespace, f"{SELECTOR},track=stable")
        found = {}
        for pod in pods:
            if pod["metadata"].get("deletionTimestamp"):
                continue
            statuses = (pod.get("status") or {}).get("containerStatuses") or []
            found[pod["metadata"]["name"]] = (pod["metadata"]["uid"], sum(s.get("restartCount", 0) for s in statuses),
                                              tuple(sorted(s.get("containerID", "") for s in statuses)))
        return found

    def template_hash(self):
        return drift.running_hash(self.deployment())

    def sent(self) -> dict[str, int]:
        """Requests Envoy has sent each subset's cluster of the service so far (upstream_rq_total)."""
        host = f"{NAME}.{self.namespace}.svc.cluster.local"
        clusters = {name.split("|")[2]: name for name in self.envoy.clusters()
                    if name.endswith(f"|{host}") and name.split("|")[2] in release.SUBSETS}
        return {subset: self.envoy.cluster_stat(cluster, "upstream_rq_total") for subset, cluster in clusters.items()}


class Callers:
    """RATE requests a second to hk's route through Envoy from CALLERS threads, each request at its own time, until
    stopped (at most `seconds`); every answer's (time sent, status, the answering build's mark (a 200's) or the start
    of what went wrong)."""

    def __init__(self, bench: Bench, seconds: float = 300):
        self.bench, self.seconds = bench, seconds
        self.outcomes: list[tuple[float, int, str | None]] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._client, args=(i,), daemon=True) for i in range(CALLERS)]
        self._start = time.monotonic() + 0.2

    def __enter__(self) -> "Callers":
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=40)

    def wait_for(self, count: int, what: str) -> None:
        poll_until(lambda: len(self.outcomes) >= count, what, 60)

    def statuses(self, since: float = 0.0) -> dict[int, int]:
        found: dict[int, int] = {}
        for sent, status, _ in self.outcomes:
            if sent >= since:
                found[status] = found.get(status, 0) + 1
        return found

    def _client(self, index: int) -> None:
        import requests

        bench = self.bench
        with requests.Session() as session:
            for number in range(index, int(self.seconds * RATE), CALLERS):
                if self._stop.wait(max(0.0, self._start + number / RATE - time.monotonic())):
                    return
                sent = time.monotonic()
                try:
                    reply = session.post(bench.url, json=bench.body, headers={"Host": bench.host}, timeout=30)
                    mark = reply.json()["results"].get("build") if reply.status_code == 200 else reply.text[:120]
                    self.outcomes.append((sent, reply.status_code, mark))
                except (requests.RequestException, ValueError) as exc:
                    self.outcomes.append((sent, 0, repr(exc)[:120]))


def _read_to(process, start: str, what: str) -> list[str]:
    """The started tool's lines up to the first that begins with `start` (read_until: at most 120 s)."""
    return read_until(process, lambda line: line.startswith(start), what, 120)


def _at_the_canary_s_deletion(outcomes: list, expected: set[int], weighted: float) -> tuple[list, list]:
    """The callers' answers Envoy gave 503 (no endpoint) from the time stable 100 was set, and any other answer whose
    status is not `expected`: each as (seconds after stable 100, status, what it said)."""
    lost, unexpected = [], []
    for sent, status, said in outcomes:
        if status not in expected:
            at_deletion = status == 503 and said == NO_ENDPOINT and sent >= weighted - 0.5
            (lost if at_deletion else unexpected).append((round(sent - weighted, 2), status, said))
    return lost, unexpected


def _bound(weight: int, requests: int) -> float:
    """DEVIATIONS binomial standard deviations of a share at `weight` percent over `requests`."""
    p = weight / 100
    return DEVIATIONS * math.sqrt(p * (1 - p) / requests)


def test_the_selector_s_migration_and_its_rollback_under_traffic_restart_no_pod_and_fail_no_request(bench):
    """Stable deployed before issue 57 (selector {service, stage}, a route without subsets), then the rendered one,
    a rollback across the change and the rendered one again, under RATE requests a second: each time the Deployment
    re-created with its ReplicaSet orphaned and adopted, the same pods (uid, restarts, the kubelet's containers), every
    caller answered 200."""
    pods, (replicaset,), old = bench.migration["before"]
    assert "track" not in old["spec"]["selector"]["matchLabels"] and len(pods) == 2
    print(f"\nstable before the migration: {pods}")
    for step, selector in (("migrated", {"service": NAME, "stage": "hk", "track": "stable"}),
                           ("back", {"service": NAME, "stage": "hk"}),
                           ("again", {"service": NAME, "stage": "hk", "track": "stable"})):
        run, now, (adopted,), deployment = bench.migration[step]
        print(f"{step}: exit {run.returncode} in {run.seconds:.1f} s; pods {now}")
        assert run.returncode == 0, run.output
        assert f"re-created Deployment/{NAME} for its selector" in run.output, run.output
        assert deployment["spec"]["selector"]["matchLabels"] == selector
        assert deployment["metadata"]["uid"] != old["metadata"]["uid"]
        assert adopted["metadata"]["uid"] == replicaset["metadata"]["uid"]
        assert adopted["metadata"]["ownerReferences"][0]["uid"] == deployment["metadata"]["uid"]
        assert now == pods
        old = deployment
    outcomes = bench.migration["outcomes"]
    statuses = {}
    for _, status, _ in outcomes:
        statuses[status] = statuses.get(status, 0) + 1
    seconds = outcomes[-1][0] - outcomes[0][0]
    print(f"callers' answers across the migration, the rollback and the migration again ({seconds:.0f} s at {RATE} a "
          f"second): {statuses}")
    for sent, status, said in outcomes:
        if status != 200:
            step, at = max(((name, t) for name, t in bench.migration["started"].items() if t <= sent),
                           key=lambda item: item[1], default=("before", outcomes[0][0]))
            print(f"  {status} {said!r} sent {sent - at:.2f} s into {step}")
    assert statuses == {200: len(outcomes)} and len(outcomes) >= RATE * 4


def test_a_failing_build_aborts_at_step_one_within_its_share_and_stable_never_changes(bench):
    before, hash_before = bench.stable_pods(), bench.template_hash()
    assert len(before) == 2
    running = bench.history().current.number
    receiver = Receiver()
    try:
        with Callers(bench) as callers:
            process = bench.start(bench.manifests(FAILING), PODSERVE_NOTIFY_URL=receiver.url)
            seen = _read_to(process, "step 1 of 2: 25% of hk's requests", "canary step 1")
            at_step = bench.sent()
            seen += _read_to(process, "set the weights of VirtualService", "stable 100")
            weighted = time.monotonic()
            output = finish(process, seen, timeout=240)
            after = bench.sent()
            callers.wait_for(len(callers.outcomes) + RATE, "a second of callers after the abort")
        assert process.returncode == 1, output
        canary, stable = after["canary"] - at_step["canary"], after["stable"] - at_step["stable"]
        share = canary / (canary + stable)
        bound = _bound(STEPS[0], canary + stable)
        statuses = callers.statuses()
        lost, unexpected = _at_the_canary_s_deletion(callers.outcomes, {200, 500}, weighted)
        print(f"\nfailing build at step 1 (25%): Envoy sent the canary {canary} and stable {stable} requests from the "
              f"step's weights to the abort: {share:.1%} (at most 25% + {bound:.1%}, {DEVIATIONS} binomial "
              f"deviations); callers' answers {statuses}; stable before {before}, after {bench.stable_pods()}, "
              f"template hash {hash_before}; Envoy's 503s at the canary's deletion (s after stable 100): {lost}; other "
              f"answers: {unexpected}\n{output}")
        assert "ABORTED: The canary failed its verdict: step 1 (25%): fail" in output and "errors: fail" in output
        assert "step 2 of 2" not in output and "promoting" not in output
        assert output.index("set the weights of VirtualService") < output.index("deleted Deployment/")  # stable first
        assert share <= STEPS[0] / 100 + bound
        assert unexpected == [] and statuses.get(500, 0) <= canary, statuses  # 500s: the canary's decodes only
        assert lost == []
        assert bench.weights() == [100, 0] and bench.canary() is None
        assert bench.stable_pods() == before and bench.template_hash() == hash_before  # uids, restarts, containers
        (body,) = receiver.bodies
        print(f"notified: {body}")
        assert body["outcome"] == "canary_aborted" and "errors: fail" in body["diagnosis"]
        history = bench.history()
        assert history.pending is None and history.current.number == running
    finally:
        receiver.stop()


def test_a_good_build_passes_every_step_within_its_share_ends_at_stable_100_and_the_header_reaches_the_canary(bench):
    number, hash_before = bench.history().current.number + 1, bench.template_hash()
    with Callers(bench) as callers:
        process = bench.start(bench.manifests(GOOD))
        seen = _read_to(process, "step 1 of 2: 25% of hk's requests", "canary step 1")
        counted = [bench.sent()]
        marks = []
        for _ in range(20):
            reply = bench.post({release.CANARY_HEADER: release.CANARY})
            assert reply.status_code == 200, reply.text
            marks.append(reply.json()["results"].get("build"))
        seen += _read_to(process, "step 2 of 2: 50% of hk's requests", "canary step 2")
        counted.append(bench.sent())
        seen += _read_to(process, "promoting revision", "the promotion")
        counted.append(bench.sent())
        promoted = time.monotonic()
        seen += _read_to(process, "set the weights of VirtualService", "stable 100")
        weighted = time.monotonic()
        output = finish(process, seen, timeout=300)
        ended = time.monotonic()
        callers.wait_for(len(callers.outcomes) + 2 * RATE, "two seconds of callers after the promotion")
    assert process.returncode == 0, output
    shares = []
    for weight, (start, end) in zip(STEPS, zip(counted, counted[1:])):
        canary, stable = end["canary"] - start["canary"], end["stable"] - start["stable"]
        shares.append((weight, canary / (canary + stable), _bound(weight, canary + stable), canary + stable))
    statuses = callers.statuses()
    lost, unexpected = _at_the_canary_s_deletion(callers.outcomes, {200}, weighted)
    last = [mark for _, status, mark in callers.outcomes[-RATE:]]
    print("\ngood build: " + "; ".join(f"step {w}%: canary share {s:.1%} of {n} (bound +-{b:.1%})"
                                      for w, s, b, n in shares)
          + f"; with the header: {marks}; callers' answers from the start to after the promotion: {statuses}; "
            f"the promotion's rollout {weighted - promoted:.1f} s, stable 100 to the tool's exit "
            f"{ended - weighted:.1f} s; "
            f"Envoy's 503s at the canary's deletion (s after stable 100): {lost}; other answers: {unexpected}\n"
            f"{output}")
    assert marks == [GOOD_MARK] * 20  # the header, matched with the URI, reaches the canary alone
    for weight, share, bound, _ in shares:
        assert abs(share - weight / 100) <= bound + 0.01, (weight, share, bound)  # 0.01: istiod's push of a step
    assert output.count("verdict: pass") == 2
    assert f"serving: revision {number} of {NAME} in hk after its canary (2 step(s) passed" in output
    assert unexpected == [] and lost == []  # the steps and the promotion's rollout on the real node: all 200
    assert bench.weights() == [100, 0] and bench.canary() is None
    assert set(last) == {GOOD_MARK}  # stable 100, running the new template
    hashes = {drift.running_hash(o) for o in bench.history().current.objects if o["kind"] == "Deployment"}
    assert hashes == {bench.template_hash()} and bench.template_hash() != hash_before
    assert len(bench.stable_pods()) == 2
