"""A production canary under traffic (issue 57, It must show 3, on the control plane with kwok's pods).

Real: the apiserver with the platform chart's policies (the team's production account deploys), the Deployment,
ReplicaSet and EndpointSlice controllers, the deploy tool's CLI and its canary loop, Envoy 1.40 configured from the
live VirtualServices and DestinationRules (the route feed, as istiod pushes them) and fed the live EndpointSlices by
subset (SliceFeed), our server processes, Prometheus scraping them by the live PodMonitors (PodTargetFeed).
Simulated: the kubelet (kwok runs the pods; for each of its Ready pods a server process on loopback plays the
container, with the pod's own environment: testbed/mesh/kwok_pods.py) and istiod (testbed/mesh). The failing build
is the image tag `bad`: its pods' every third decode raises (a 500, as a build whose decode fails on real payloads).

Rates and thresholds, stated: 60 requests a second to hk through Envoy (the three processes answer the tiny affine
model in a few milliseconds each: 15 to 30 a second a pod); steps [25, 50]; the test's conf/deploy.yaml judges each
step for 10 s (about 150 canary requests at step 1) with min_requests 100, error margin 0.03, latency and queue margins 0.10 (the platform's 120 s, 200, 0.01 and 0.05 would need
about 400 canary requests a step: minutes at this rate), alpha 0.01 as the platform's.
Not here: the real node (pods of real containers restarted or not by a kubelet), which tests/pipeline's real-node
deploys hold.
"""

from __future__ import annotations

import json
import math
import shutil
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml

from live import REPO, Live, finish, read_until
from podserve.testbed.deploy_policy import unfrozen_conf
from podserve.testbed.mesh import envoy as envoy_config
from podserve.testbed.mesh import istio
from podserve.testbed.mesh.gateway import Envoy
from podserve.testbed.mesh.kwok_pods import PodPlayer
from podserve.testbed.mesh.mesh import gateway_objects
from podserve.testbed.mesh.routefeed import RouteFeed
from podserve.testbed.mesh.slices import SliceFeed
from podserve.testbed.processes import free_port, poll_until
from podserve.testbed.prometheus import PodTargetFeed, Prometheus
from podserve.tooling import release, render
from podserve.tooling.conf import load_conf
from podserve.tooling.deploy import canary_objects, drift
from podserve.tooling.deploy.history import History
from podserve.tooling.deploy.kube import MANAGED, PODS, REPLICASETS
from receiver import Receiver

MESH_TESTS = REPO / "tests" / "mesh"
sys.path.insert(0, str(MESH_TESTS))
from mesh_setup import HOST, RUNTIME_TESTS, fast_conf_dir, write_values  # noqa: E402

SERVICE = "weighed"
PATH = f"/api/like/{SERVICE}"
RATE = 60
STEPS = [25, 50]
WINDOW = 10
BAD_TAG = "bad"
#: How far a step's measured canary share may stray from its weight: 3.5 binomial standard deviations at the
#: requests counted (a correct split falls outside with probability 5e-4 each).
DEVIATIONS = 3.5


@pytest.fixture(scope="module")
def bench(control_plane, tmp_path_factory, affine_model):
    """hk's two stable pods of v1 deployed by the tool, their processes, Envoy on the live routes, Prometheus."""
    work = tmp_path_factory.mktemp("canary-traffic")
    conf_dir = unfrozen_conf(work / "conf", fast_conf_dir(work / "fast"))
    policy = yaml.safe_load((conf_dir / "deploy.yaml").read_text())
    policy["verdict"].update(window_seconds=WINDOW, min_requests=100, error_margin=0.03, latency_margin=0.10,
                             queue_margin=0.10, max_extensions=1)
    (conf_dir / "deploy.yaml").write_text(yaml.safe_dump(policy))
    conf = load_conf(conf_dir)
    (work / "service").mkdir()
    values = write_values(work / "service", service_name=SERVICE, canary_steps=STEPS, replicas=2, hk_replicas=2,
                          http_threads=4)
    live = Live(control_plane, work / "live")
    namespace = live.namespace("hk")
    switches = {tag: work / "switch" / tag for tag in ("v1", BAD_TAG, "v3")}
    for folder in switches.values():
        folder.mkdir(parents=True)
    (switches[BAD_TAG] / "failing_decodes").write_text("3")

    def env_for(pod: dict) -> dict[str, str]:
        tag = pod["spec"]["containers"][0]["image"].rsplit(":", 1)[-1]
        return {"PODSERVE_MODEL_PATH": str(affine_model), "SWITCH_DIR": str(switches[tag]),
                "ANSWER_MARK": pod["metadata"]["labels"]["track"],
                "PYTHONPATH": ":".join(str(p) for p in (REPO / "src", MESH_TESTS, RUNTIME_TESTS))}

    player = PodPlayer(control_plane.api_client(), namespace, f"service={SERVICE},stage=hk", work / "pods", env_for,
                       REPO).start()
    gateway = conf.stages["hk"].gateway
    extra = gateway_objects(conf, "hk")
    xds = work / "xds"
    slices = SliceFeed(control_plane.api_client(), istio.translate(extra, gateway), xds,
                       address_of=player.address_of)
    routes = RouteFeed(control_plane.api_client(), gateway, xds, slices, extra=extra,
                       selector=f"service={SERVICE},stage=hk").start()  # not what other tests left in the cluster
    slices.start()
    port = free_port()
    bootstrap = work / "envoy.json"
    bootstrap.write_text(json.dumps(envoy_config.dynamic_bootstrap(gateway, port=port, admin_port=0,
                                                                    xds_folder=xds)))
    envoy = Envoy(bootstrap, work / "envoy")
    targets = PodTargetFeed(control_plane.api_client(), work / "targets.json", [namespace],
                            address_of=player.address_of).start()
    prometheus = Prometheus(work / "prometheus", [], file_targets=work / "targets.json").start()
    bench = Bench(live, conf_dir, values, prometheus, envoy, port, player, routes, slices, work)
    try:
        first = bench.live.deploy(*bench.args("v1", bench.before_subsets("v1")), timeout=300)
        assert first.returncode == 0, first.output
        poll_until(lambda: len([p for p in player.by_port().values() if p.probe()]) == 2,
                   "both stable pods' processes ready", 60)
        poll_until(lambda: _answered(bench, 5), "Envoy answering hk's route from the stable pods", 60)
        bench.migrate()
        yield bench
    finally:
        for part in (targets, routes, slices):
            part.stop()
        prometheus.stop()
        envoy.stop()
        player.stop()
        live.remove(namespace, "hk", SERVICE)


class Bench:
    def __init__(self, live: Live, conf_dir: Path, values: Path, prometheus: Prometheus, envoy: Envoy, port: int,
                 player: PodPlayer, routes: RouteFeed, slices: SliceFeed, work: Path):
        self.live, self.conf_dir, self.values, self.prometheus = live, conf_dir, values, prometheus
        self.envoy, self.port, self.player, self.routes, self.slices, self.work = envoy, port, player, routes, slices, \
            work
        self.namespace = live.namespace("hk")

    def manifests(self, tag: str) -> Path:
        out = self.work / f"manifests-{tag}"
        if not out.exists():
            assert render.main(["--stage", "hk", "--values", str(self.values), "--conf", str(self.conf_dir),
                                "--out", str(out), "--image-tag", tag]) == 0
        return out

    def args(self, tag: str, manifests: Path | None = None) -> list:
        return ["apply", "--stage", "hk", "--manifests", manifests or self.manifests(tag), "--prometheus",
                self.prometheus.url, "--conf", self.conf_dir]

    def before_subsets(self, tag: str) -> Path:
        """The stage as render wrote it before issue 57: the Deployment selecting {service, stage}, the route to the
        Service without subsets or weights, the rule without subsets."""
        out = self.work / f"manifests-{tag}-before-subsets"
        shutil.copytree(self.manifests(tag), out, dirs_exist_ok=True)
        for name, change in (("deployment", _old_selector), ("virtualservice", _old_route),
                             ("destinationrule", _old_rule)):
            path = out / "hk" / f"{name}.yaml"
            path.write_text(yaml.safe_dump_all([change(d) for d in yaml.safe_load_all(path.read_text()) if d]))
        return out

    def migrate(self) -> None:
        """Apply the rendered v1 over the pre-57 one under traffic; keep what the migration test asserts."""
        before = self.stable_pods()
        replicaset = self.live.items(REPLICASETS, self.namespace, f"service={SERVICE}")
        with Callers(self) as callers:
            answered = lambda count: lambda: len(callers.outcomes) >= count  # noqa: E731
            poll_until(answered(2 * RATE), "two seconds of callers on the old route", 30)
            run = self.apply("v1")
            poll_until(answered(len(callers.outcomes) + 2 * RATE), "two seconds of callers on the new route", 30)
        self.migration = (before, replicaset, run, list(callers.outcomes), self.stable_pods(),
                          self.live.items(REPLICASETS, self.namespace, f"service={SERVICE}"),
                          self.live.admin.get(MANAGED["Deployment"], self.namespace, SERVICE))

    def apply(self, tag: str, **env):
        return self.live.deploy(*self.args(tag), timeout=300, **env)

    def start(self, tag: str, **env):
        return self.live.start(*self.args(tag), **env)

    def weights(self):
        return canary_objects.weights_of(self.live.admin.get(MANAGED["VirtualService"], self.namespace, SERVICE))

    def canary(self):
        return self.live.admin.get(MANAGED["Deployment"], self.namespace, release.canary_name(SERVICE))

    def stable_pods(self) -> dict[str, tuple]:
        """{name: (uid, restarts, the pid of the process playing it)} of the stable pods."""
        pids = {p.uid: p.program.pid for p in self.player.by_port().values()}
        pods = self.live.items(PODS, self.namespace, f"service={SERVICE},stage=hk,track=stable")
        return {p["metadata"]["name"]: (p["metadata"]["uid"], sum(s.get("restartCount", 0) for s in
                                                                    (p.get("status") or {}).get("containerStatuses")
                                                                    or []), pids.get(p["metadata"]["uid"]))
                for p in pods if not p["metadata"].get("deletionTimestamp")}

    def template_hash(self):
        return drift.running_hash(self.live.admin.get(MANAGED["Deployment"], self.namespace, SERVICE))

    def sent(self) -> dict[str, int]:
        """Requests Envoy has sent each subset's cluster of the service so far (upstream_rq_total)."""
        found = {}
        for subset in release.SUBSETS:
            cluster = f"outbound|8080|{subset}|{SERVICE}.{self.namespace}.svc.cluster.local"
            found[subset] = self.envoy.stat(f"cluster.{cluster}.upstream_rq_total")
        return found


def _old_selector(deployment: dict) -> dict:
    deployment["spec"]["selector"]["matchLabels"].pop("track")
    return deployment


def _old_route(route: dict) -> dict:
    route["spec"]["http"] = [dict(h, route=[{"destination": {k: v for k, v in h["route"][0]["destination"].items()
                                                             if k != "subset"}}])
                             for h in route["spec"]["http"] if not any("headers" in m for m in h["match"])]
    return route


def _old_rule(rule: dict) -> dict:
    rule["spec"].pop("subsets")
    return rule


def _post(bench: Bench, headers: dict | None = None, timeout: float = 10):
    import requests

    return requests.post(f"http://127.0.0.1:{bench.port}{PATH}", json={"postid": "p", "uid": "u", "seqid": "s",
                                                                       "data": [1.0, 0.0, 0.0, 0.0]},
                         headers={"Host": HOST, **(headers or {})}, timeout=timeout)


def _answered(bench: Bench, count: int) -> bool:
    try:
        return all(_post(bench).status_code == 200 for _ in range(count))
    except OSError:
        return False


class Callers:
    """RATE requests a second to hk's route through Envoy, each at its own time, until stopped (at most `seconds`);
    every answer's status and mark (the track of the pod that answered, ANSWER_MARK)."""

    def __init__(self, bench: Bench, seconds: float = 400):
        self.bench, self.seconds = bench, seconds
        self.outcomes: list[tuple[float, int, str | None]] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._client, args=(i,), daemon=True) for i in range(8)]
        self._start = time.monotonic() + 0.2

    def __enter__(self) -> "Callers":
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=30)

    def _client(self, index: int) -> None:
        import requests

        with requests.Session() as session:
            for number in range(index, int(self.seconds * RATE), len(self._threads)):
                if self._stop.wait(max(0.0, self._start + number / RATE - time.monotonic())):
                    return
                sent = time.monotonic()
                try:
                    reply = session.post(f"http://127.0.0.1:{self.bench.port}{PATH}", timeout=10,
                                         json={"postid": "p", "uid": "u", "seqid": "s", "data": [1.0, 0.0, 0.0, 0.0]},
                                         headers={"Host": HOST})
                    mark = reply.json()["results"].get("mark") if reply.status_code == 200 else None
                    self.outcomes.append((sent, reply.status_code, mark))
                except (requests.RequestException, ValueError):
                    self.outcomes.append((sent, 0, None))


def _share_within(share: float, weight: int, requests: int) -> float:
    """The bound the canary's measured share must keep at `weight` percent over `requests`: DEVIATIONS binomial
    standard deviations."""
    p = weight / 100
    return DEVIATIONS * math.sqrt(p * (1 - p) / requests)


def test_the_selector_s_migration_under_traffic_restarts_no_pod_and_fails_no_request(bench):
    """A Deployment and route of before issue 57 (selector {service, stage}, no subsets), then the rendered ones under
    RATE requests a second: the Deployment re-created with its ReplicaSet orphaned and adopted, the same pods (uid,
    restarts, the very processes), every caller answered 200 across the selector's and the route's change."""
    before, (replicaset,), run, outcomes, after, (adopted,), deployment = bench.migration
    assert run.returncode == 0, run.output
    assert f"re-created Deployment/{SERVICE} for its selector" in run.stdout
    assert deployment["spec"]["selector"]["matchLabels"] == {"service": SERVICE, "stage": "hk", "track": "stable"}
    assert adopted["metadata"]["uid"] == replicaset["metadata"]["uid"]
    assert adopted["metadata"]["ownerReferences"][0]["uid"] == deployment["metadata"]["uid"]
    assert after == before and len(after) == 2
    statuses = {}
    for _, status, _ in outcomes:
        statuses[status] = statuses.get(status, 0) + 1
    print(f"\nthe selector's migration under {RATE} requests a second: {statuses} ({run.seconds:.1f} s)\n{run.output}")
    assert statuses == {200: len(outcomes)} and len(outcomes) >= RATE * 4


def test_a_failing_build_aborts_at_step_one_within_its_share_and_stable_never_changes(bench):
    before, hash_before = bench.stable_pods(), bench.template_hash()
    assert len(before) == 2 and all(pid for _, _, pid in before.values())
    running = History.load(bench.live.admin, bench.namespace, SERVICE, "hk").current.number
    receiver = Receiver()
    try:
        with Callers(bench):
            process = bench.start(BAD_TAG, PODSERVE_NOTIFY_URL=receiver.url)
            seen = read_until(process, lambda line: line.startswith("step 1 of 2: 25% of hk's requests"),
                              "canary step 1", 120)
            at_step = bench.sent()
            output = finish(process, seen, timeout=240)
            after = bench.sent()
        assert process.returncode == 1, output
        canary, stable = after["canary"] - at_step["canary"], after["stable"] - at_step["stable"]
        share = canary / (canary + stable)
        bound = _share_within(share, STEPS[0], canary + stable)
        print(f"\nfailing build at step 1 (25%): Envoy sent the canary {canary} and stable {stable} requests from the "
              f"step's weights to the abort: {share:.1%} (bound 25% + {bound:.1%}, {DEVIATIONS} binomial deviations)"
              f"\n{output}")
        assert "ABORTED: The canary failed its verdict: step 1 (25%): fail" in output and "errors: fail" in output
        assert "step 2 of 2" not in output and "promoting" not in output
        assert output.index("set the weights of VirtualService") < output.index("deleted Deployment/")  # stable first
        assert share <= STEPS[0] / 100 + bound
        assert bench.weights() == [100, 0] and bench.canary() is None
        assert bench.stable_pods() == before and bench.template_hash() == hash_before  # uids, restarts, processes
        (body,) = receiver.bodies
        assert body["outcome"] == "canary_aborted" and "errors: fail" in body["diagnosis"]
        history = History.load(bench.live.admin, bench.namespace, SERVICE, "hk")
        assert history.pending is None and history.current.number == running
    finally:
        receiver.stop()


def test_a_good_build_passes_every_step_within_its_share_ends_at_stable_100_and_the_header_reaches_the_canary(bench):
    number = History.load(bench.live.admin, bench.namespace, SERVICE, "hk").current.number + 1
    with Callers(bench) as callers:
        process = bench.start("v3")
        seen = read_until(process, lambda line: line.startswith("step 1 of 2: 25% of hk's requests"),
                          "canary step 1", 120)
        marks = set()
        for _ in range(20):
            reply = _post(bench, {"x-podserve-track": "canary"})
            assert reply.status_code == 200, reply.text
            marks.add(reply.json()["results"]["mark"])
        counted = [bench.sent()]
        seen += read_until(process, lambda line: line.startswith("step 2 of 2: 50% of hk's requests"),
                           "canary step 2", 120)
        counted.append(bench.sent())
        seen += read_until(process, lambda line: line.startswith("promoting revision"), "the promotion", 120)
        counted.append(bench.sent())
        during = list(callers.outcomes)  # the steps' answers (the promotion's rollout is kwok's: see below)
    output = finish(process, seen, timeout=300)
    assert process.returncode == 0, output
    assert marks == {"canary"}  # the header, matched with the URI, reaches the canary alone
    shares = []
    for weight, (start, end) in zip(STEPS, zip(counted, counted[1:])):
        canary, stable = end["canary"] - start["canary"], end["stable"] - start["stable"]
        shares.append((weight, canary / (canary + stable), _share_within(0, weight, canary + stable), canary + stable))
    print(f"\ngood build: " + "; ".join(f"step {w}%: canary share {s:.1%} of {n} (bound +-{b:.1%})"
                                      for w, s, b, n in shares) + f"\n{output}")
    for weight, share, bound, _ in shares:
        assert abs(share - weight / 100) <= bound + 0.01, (weight, share, bound)  # 0.01: the route feed's poll
    assert output.count("verdict: pass") == 2
    assert f"serving: revision {number} of {SERVICE} in hk after its canary (2 step(s) passed" in output
    statuses = {}
    for _, status, _ in during:
        statuses[status] = statuses.get(status, 0) + 1
    print(f"callers' answers during the steps: {statuses}")
    # no 500: the good build's decodes never fail; a 503 is Envoy's while a new pod's process still starts after
    # kwok said the pod was ready (the simulated kubelet's readiness is not the process's)
    assert set(statuses) <= {200, 503} and statuses.get(200, 0) >= 0.95 * len(during), statuses
    assert bench.weights() == [100, 0] and bench.canary() is None
    hashes = {drift.running_hash(o) for o in History.load(bench.live.admin, bench.namespace, SERVICE, "hk")
              .current.objects if o["kind"] == "Deployment"}
    assert hashes == {bench.template_hash()}
