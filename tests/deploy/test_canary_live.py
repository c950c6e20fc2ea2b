"""A production canary against the real control plane (issue 57, It must show 4, and the selector's migration, the
policies' admission of the canary, the recorded verdict override).

Real: the apiserver with the platform chart's policies (the team's production account deploys), the Deployment
and ReplicaSet controllers and the garbage collector (orphaning, adoption), the deploy tool's CLI, Prometheus
(with nothing to scrape: kwok's pods serve nothing, so every analysis waits for the canary's pods to be scraped,
which gives each test its time to act, and ends inconclusive). Simulated: the kubelet (kwok: pods become ready).
The canary is ended by `deploy canary promote|abort`, SIGTERM, SIGKILL or `rollback`, as each test says.
The eight scenarios run side by side (each its own service), as they mostly wait: about 45 s in all instead of 90.
"""

from __future__ import annotations

import json
import signal
import subprocess
from concurrent.futures import Future, ThreadPoolExecutor

import pytest
import yaml

from live import REPO, Live, finish, read_until
from podserve.testbed.deploy_policy import unfrozen_conf
from podserve.testbed.prometheus import Prometheus
from podserve.tooling import release
from podserve.tooling.conf import load_conf
from podserve.tooling.deploy import canary_objects, drift
from podserve.tooling.deploy.history import History, history_name
from podserve.tooling.deploy.kube import MANAGED, PODS, REPLICASETS
from receiver import Receiver

HK = load_conf().stages["hk"].namespace_for("like")
CANARY = "canary_steps = [10, 50]\n"
KUBECTL = REPO / ".tools" / "bin" / "kubectl"


@pytest.fixture(scope="module")
def live(control_plane, tmp_path_factory) -> Live:
    return Live(control_plane, tmp_path_factory.mktemp("canary"))


@pytest.fixture(scope="module")
def conf_dir(live) -> str:
    """conf/ unfrozen, with slow start at 1 s (the steps wait it out), the verdict's window at 30 s, and the lock's
    lease at 5 s (a killed deploy's Lease is free that soon)."""
    folder = unfrozen_conf(live.tmp / "conf-canary")
    platform = yaml.safe_load((folder / "platform.yaml").read_text())
    platform["mesh"]["slow_start"] = "1s"
    (folder / "platform.yaml").write_text(yaml.safe_dump(platform))
    policy = yaml.safe_load((folder / "deploy.yaml").read_text())
    policy["verdict"]["window_seconds"] = 30
    policy["lock_lease_seconds"] = 5
    policy["canary_scale_down_delay_seconds"] = 1  # no callers here: tests/pipeline/test_real_node_canary.py has them
    (folder / "deploy.yaml").write_text(yaml.safe_dump(policy))
    return str(folder)


@pytest.fixture(scope="module")
def prometheus(live):
    found = Prometheus(live.tmp / "prometheus", []).start()
    yield found
    found.stop()


class Service:
    """One test's production service: its manifests per version, its CLI runs, what the cluster holds."""

    def __init__(self, live: Live, conf_dir: str, prometheus: Prometheus, name: str, extra: str = CANARY):
        self.live, self.conf, self.prometheus, self.name, self.extra = live, conf_dir, prometheus, name, extra

    def manifests(self, tag: str, extra: str | None = None):
        return self.live.manifests(self.name, "hk", tag, extra=self.extra if extra is None else extra,
                                   conf=self.conf)

    def args(self, *args):
        return [*args, "--conf", self.conf]

    def apply(self, tag: str, *more, **env):
        return self.live.deploy(*self.args("apply", "--stage", "hk", "--manifests", self.manifests(tag),
                                           "--prometheus", self.prometheus.url, *more), **env)

    def start(self, tag: str, **env) -> subprocess.Popen:
        return self.live.start(*self.args("apply", "--stage", "hk", "--manifests", self.manifests(tag),
                                          "--prometheus", self.prometheus.url), **env)

    def verb(self, *args, **env):
        return self.live.deploy(*self.args(*args, "--stage", "hk", "--service", self.name, "--team", "like"), **env)

    def weights(self):
        return canary_objects.weights_of(self.live.admin.get(MANAGED["VirtualService"], HK, self.name))

    def canary(self):
        return self.live.admin.get(MANAGED["Deployment"], HK, release.canary_name(self.name))

    def stable_pods(self) -> dict[str, tuple]:
        """{name: (uid, restarts)} of the stable pods."""
        pods = self.live.items(PODS, HK, f"service={self.name},stage=hk,track=stable")
        return {p["metadata"]["name"]: (p["metadata"]["uid"], sum(s.get("restartCount", 0) for s in
                                                                    (p.get("status") or {}).get("containerStatuses")
                                                                    or []))
                for p in pods if not p["metadata"].get("deletionTimestamp")}

    def template_hash(self):
        return drift.running_hash(self.live.admin.get(MANAGED["Deployment"], HK, self.name))

    def history(self) -> History:
        return History.load(self.live.admin, HK, self.name, "hk")

    def remove(self):
        self.live.remove(HK, "hk", self.name)


def _at_step_one(process: subprocess.Popen) -> list[str]:
    return read_until(process, lambda line: line.startswith("step 1 of 2: 10% of hk's requests"), "canary step 1",
                      120)


def _a_second_apply_is_refused_and_the_weights_stay_and_status_shows_the_canary(live, conf_dir, prometheus, tmp_path):
    service = Service(live, conf_dir, prometheus, "dt-canary-lock")
    receiver = Receiver()
    try:
        assert service.apply("v1").returncode == 0  # the first deploy: nothing runs to canary against
        before, hash_before = service.stable_pods(), service.template_hash()
        assert len(before) == 2
        process = service.start("v2", PODSERVE_NOTIFY_URL=receiver.url)
        seen = _at_step_one(process)
        assert service.weights() == [90, 10]
        deployment = service.canary()  # admitted by the platform's policies, as stable is
        assert deployment["spec"]["selector"]["matchLabels"] == {"service": service.name, "stage": "hk",
                                                                 "track": "canary"}
        assert deployment["metadata"]["labels"]["team"] == "like" and deployment["spec"]["replicas"] == 1
        second = service.live.deploy(*service.args("apply", "--stage", "hk", "--manifests", service.manifests("v3"),
                                                   "--prometheus", prometheus.url, "--lock-wait", "2"))
        assert second.returncode == 3 and "Refused: another deploy of this service and stage is running" in \
            second.stderr, second.output
        assert service.weights() == [90, 10]
        status = service.verb("status")
        assert "canary of revision 2: steps, step 1 of 2, weights stable 90, canary 10" in status.stdout, status.output
        assert f"Deployment/{release.canary_name(service.name)}: 1/1 pods ready" in status.stdout
        abort = service.verb("canary", "abort", "--reason", "the numbers look wrong")
        assert abort.returncode == 0, abort.output
        output = finish(process, seen)
        assert process.returncode == 1, output
        assert "ABORTED: The canary failed its verdict: aborted by" in output and "the numbers look wrong" in output
        assert output.index("set the weights of VirtualService") < output.index("deleted Deployment/")  # stable first
        assert service.weights() == [100, 0] and service.canary() is None
        assert service.stable_pods() == before and service.template_hash() == hash_before
        assert [b["outcome"] for b in receiver.bodies] == ["canary_aborted"]
        assert "the numbers look wrong" in receiver.bodies[0]["diagnosis"]
        assert service.history().pending is None and service.history().current.number == 1
    finally:
        receiver.stop()
        service.remove()


def _sigterm_aborts_the_canary_stable_first(live, conf_dir, prometheus, tmp_path):
    service = Service(live, conf_dir, prometheus, "dt-canary-term")
    try:
        assert service.apply("v1").returncode == 0
        before = service.stable_pods()
        process = service.start("v2")
        seen = _at_step_one(process)
        process.send_signal(signal.SIGTERM)
        output = finish(process, seen)
        assert process.returncode == 1, output
        assert "ABORTED: The canary failed its verdict: SIGTERM" in output
        assert service.weights() == [100, 0] and service.canary() is None and service.stable_pods() == before
        assert service.history().pending is None
    finally:
        service.remove()


def _after_sigkill_status_and_apply_notice_it_kubectl_s_weights_are_drift_and_the_same_revision_resumes(
        live, conf_dir, prometheus, tmp_path):
    service = Service(live, conf_dir, prometheus, "dt-canary-kill")
    try:
        assert service.apply("v1").returncode == 0
        process = service.start("v2")
        _at_step_one(process)
        process.kill()
        process.wait(timeout=30)
        assert service.weights() == [90, 10] and service.canary() is not None  # nothing could run: all stays
        edited = subprocess.run(
            [KUBECTL, "-n", HK, "patch", "virtualservices.networking.istio.io", service.name, "--type", "json", "-p",
             json.dumps([{"op": "replace", "path": f"/spec/http/{i}/route/{j}/weight", "value": 50}
                         for i in (2, 3) for j in (0, 1)])],
            capture_output=True, text=True, timeout=60, env=service.live.plane.tool_env())
        assert edited.returncode == 0, edited.stderr
        status = service.verb("status")
        assert "NOTICED: revision 2" in status.stdout and "never finished" in status.stdout, status.output
        assert (f"NOTICED: the weights on VirtualService/{service.name} are stable 50, canary 50, not the recorded "
                "stable 90, canary 10: edited outside the tool") in status.stdout
        resumed = service.start("v2")
        seen = read_until(resumed, lambda line: line.startswith("resuming the canary of revision 2 at step 1"),
                          "the resumed canary", 120)
        assert any(line.startswith("NOTICED: revision 2") for line in seen), seen
        seen += read_until(resumed, lambda line: line.startswith("step 1 of 2"), "step 1 again", 120)
        assert service.weights() == [90, 10]  # the recorded weights, carried by the apply
        promote = service.verb("canary", "promote")
        assert promote.returncode == 2 and "--reason" in promote.stderr  # skipping analysis needs a reason
        promote = service.verb("canary", "promote", "--reason", "checked by hand on the header route")
        assert promote.returncode == 0, promote.output
        output = finish(resumed, seen, timeout=240)
        assert resumed.returncode == 0, output
        assert "promoted at step 1 by" in output and "checked by hand on the header route" in output
        assert service.weights() == [100, 0] and service.canary() is None
        history = service.history()
        assert history.pending is None and history.current.number == 2
        assert history.current.canary["promoted"]["reason"] == "checked by hand on the header route"
        assert service.template_hash() == drift.running_hash(
            next(o for o in history.current.objects if o["kind"] == "Deployment"))
    finally:
        service.remove()


def _another_revision_aborts_a_killed_canary_and_starts_over_and_rollback_aborts_one(
        live, conf_dir, prometheus, tmp_path):
    service = Service(live, conf_dir, prometheus, "dt-canary-over")
    try:
        assert service.apply("v1").returncode == 0
        before, hash_before = service.stable_pods(), service.template_hash()
        killed = service.start("v2")
        _at_step_one(killed)
        killed.kill()
        killed.wait(timeout=30)
        other = service.start("v3")
        seen = read_until(other, lambda line: "still running from an earlier deploy: aborting it" in line,
                          "the old canary aborted", 120)
        seen += _at_step_one(other)
        assert service.canary()["spec"]["template"]["spec"]["containers"][0]["image"].endswith(":v3")
        other.kill()
        other.wait(timeout=30)
        back = service.verb("rollback")
        assert back.returncode == 0, back.output
        assert "a canary runs: aborting it first" in back.stdout
        assert service.weights() == [100, 0] and service.canary() is None
        assert service.stable_pods() == before and service.template_hash() == hash_before
        assert service.history().pending is None and service.history().current.number == 1
    finally:
        service.remove()


def _the_selector_s_migration_restarts_no_pod_and_a_rollback_across_it_works(live, conf_dir, prometheus, tmp_path):
    """A Deployment applied with the old selector ({service, stage}, as render wrote it before track), then the new
    one: re-created with its ReplicaSets orphaned and adopted, the same pods; a rollback goes back across it."""
    service = Service(live, conf_dir, prometheus, "dt-migrate", extra="")
    try:
        old = service.manifests("v1")
        path = old / "hk" / "deployment.yaml"
        deployment = yaml.safe_load(path.read_text())
        deployment["spec"]["selector"]["matchLabels"].pop("track")
        path.write_text(yaml.safe_dump(deployment))
        first = service.live.deploy(*service.args("apply", "--stage", "hk", "--manifests", old))
        assert first.returncode == 0, first.output
        pods = service.stable_pods()
        (replicaset,) = service.live.items(REPLICASETS, HK, f"service={service.name}")
        uid = service.live.admin.get(MANAGED["Deployment"], HK, service.name)["metadata"]["uid"]
        migrated = service.apply("v1")
        assert migrated.returncode == 0, migrated.output
        assert "re-created Deployment/dt-migrate for its selector" in migrated.stdout
        now = service.live.admin.get(MANAGED["Deployment"], HK, service.name)
        assert now["metadata"]["uid"] != uid and now["spec"]["selector"]["matchLabels"]["track"] == "stable"
        (adopted,) = service.live.items(REPLICASETS, HK, f"service={service.name}")
        assert adopted["metadata"]["uid"] == replicaset["metadata"]["uid"]
        assert adopted["metadata"]["ownerReferences"][0]["uid"] == now["metadata"]["uid"]
        assert service.stable_pods() == pods
        back = service.verb("rollback")
        assert back.returncode == 0, back.output
        assert "re-created Deployment/dt-migrate for its selector" in back.stdout
        assert "track" not in service.live.admin.get(MANAGED["Deployment"], HK, service.name)["spec"]["selector"][
            "matchLabels"]
        assert service.stable_pods() == pods
    finally:
        service.remove()


def _production_mirroring_to_grey_needs_grey_s_pass_or_a_recorded_override(live, conf_dir, prometheus, tmp_path):
    service = Service(live, conf_dir, prometheus, "dt-verdict", extra="grey_mirror_percent = 20\n")
    receiver = Receiver()
    try:
        refused = service.apply("v1")
        assert refused.returncode == 3, refused.output
        assert "Refused: grey's verdict is not a pass for this image: no verdict was given" in refused.stderr
        verdict = tmp_path / "verdict.json"
        verdict.write_text(json.dumps({"result": "fail", "why": "errors: fail", "candidate": {
            "image": f"registry.hk.example.com/like/{service.name}:v1"}}))
        failed = service.apply("v1", "--verdict", verdict)
        assert failed.returncode == 3 and "grey's verdict is 'fail' (errors: fail)" in failed.stderr
        assert service.live.admin.get(MANAGED["Deployment"], HK, service.name) is None
        overridden = service.apply("v1", "--verdict", verdict, PODSERVE_NOTIFY_URL=receiver.url,
                                   PODSERVE_VERDICT_OVERRIDE="grey flaked; checked by hand", GITLAB_USER_LOGIN="alice")
        assert overridden.returncode == 0, overridden.output
        recorded = service.history().current.verdict_override
        assert recorded.startswith("grey flaked; checked by hand (by alice at ") and "errors: fail" in recorded
        for kind in ("Deployment", "Service", "VirtualService"):
            annotations = service.live.admin.get(MANAGED[kind], HK, service.name)["metadata"]["annotations"]
            assert annotations["podserve.io/verdict-override"] == recorded, kind
        assert [b.get("verdict_override") for b in receiver.bodies] == [recorded]
        verdict.write_text(json.dumps({"result": "pass", "candidate": {
            "image": f"registry.hk.example.com/like/{service.name}:v2"}}))
        passed = service.apply("v2", "--verdict", verdict)
        assert passed.returncode == 0 and "grey's verdict: pass, for this image" in passed.stdout, passed.output
    finally:
        receiver.stop()
        service.remove()


def _a_canary_the_history_lost_shows_as_drift_from_its_annotation_and_rollback_aborts_it(
        live, conf_dir, prometheus, tmp_path):
    """The history forgets the killed canary (its pending revision removed by hand, say a restored backup): the
    route's and the canary's annotation still say a canary runs, status notices it, rollback aborts it."""
    service = Service(live, conf_dir, prometheus, "dt-canary-lost")
    try:
        assert service.apply("v1").returncode == 0
        before = service.stable_pods()
        process = service.start("v2")
        _at_step_one(process)
        process.kill()
        process.wait(timeout=30)
        forgot = subprocess.run(
            [KUBECTL, "-n", HK, "patch", "configmap", history_name(service.name), "--type", "json", "-p",
             json.dumps([{"op": "remove", "path": f"/data/{key}"} for key in ("pending", "restore")])],
            capture_output=True, text=True, timeout=60, env=service.live.plane.tool_env())
        assert forgot.returncode == 0, forgot.stderr
        assert service.history().pending is None and service.canary() is not None
        status = service.verb("status")
        assert (f"NOTICED: a canary (revision 2, step 1) runs (Deployment/{release.canary_name(service.name)}: "
                "present) but the history records none: its state was lost") in status.stdout, status.output
        assert "not the recorded stable 100, canary 0" in status.stdout  # the weights too
        back = service.verb("rollback")
        assert "a canary runs: aborting it first" in back.stdout, back.output
        assert service.weights() == [100, 0] and service.canary() is None and service.stable_pods() == before
    finally:
        service.remove()


def _retire_takes_a_killed_canary_with_the_rest(live, conf_dir, prometheus, tmp_path):
    """retire (production too) finds the canary Deployment by its labels, as prune and status do."""
    service = Service(live, conf_dir, prometheus, "dt-canary-retired")
    try:
        assert service.apply("v1").returncode == 0
        process = service.start("v2")
        _at_step_one(process)
        process.kill()
        process.wait(timeout=30)
        assert service.canary() is not None
        retired = service.verb("retire", "--confirm", service.name)
        assert retired.returncode == 0, retired.output
        assert service.canary() is None and service.live.admin.get(MANAGED["Deployment"], HK, service.name) is None
        left = [o for o in service.live.objects(HK, "hk", service.name) if not o.startswith(("Pod/", "ReplicaSet/"))]
        assert left == []  # pods and ReplicaSets go after their Deployments, by the garbage collector
    finally:
        service.remove()


# --- the scenarios run side by side: each has its own service, Lease and history, and mostly waits on the control
# plane and the tool; each test below reports its own scenario (its AssertionError re-raised there) ---------------

SCENARIOS = (
    'a_second_apply_is_refused_and_the_weights_stay_and_status_shows_the_canary',
    'sigterm_aborts_the_canary_stable_first',
    'after_sigkill_status_and_apply_notice_it_kubectl_s_weights_are_drift_and_the_same_revision_resumes',
    'another_revision_aborts_a_killed_canary_and_starts_over_and_rollback_aborts_one',
    'the_selector_s_migration_restarts_no_pod_and_a_rollback_across_it_works',
    'production_mirroring_to_grey_needs_grey_s_pass_or_a_recorded_override',
    'a_canary_the_history_lost_shows_as_drift_from_its_annotation_and_rollback_aborts_it',
    'retire_takes_a_killed_canary_with_the_rest',
)


@pytest.fixture(scope="module")
def scenarios(live, conf_dir, prometheus) -> dict[str, Future]:
    pool = ThreadPoolExecutor(len(SCENARIOS), thread_name_prefix="canary-scenario")
    started = {}
    for name in SCENARIOS:
        folder = live.tmp / f"scenario-{name[:40]}"
        folder.mkdir(parents=True, exist_ok=True)
        started[name] = pool.submit(globals()[f"_{name}"], live, conf_dir, prometheus, folder)
    yield started
    pool.shutdown(wait=True)


def _ran(scenarios: dict[str, Future], request) -> None:
    """The outcome of the scenario named as the test (test_<name>: _<name>)."""
    scenarios[request.node.name.removeprefix("test_")].result(timeout=600)


def test_a_second_apply_is_refused_and_the_weights_stay_and_status_shows_the_canary(scenarios, request):
    _ran(scenarios, request)


def test_sigterm_aborts_the_canary_stable_first(scenarios, request):
    _ran(scenarios, request)


def test_after_sigkill_status_and_apply_notice_it_kubectl_s_weights_are_drift_and_the_same_revision_resumes(
        scenarios, request):
    _ran(scenarios, request)


def test_another_revision_aborts_a_killed_canary_and_starts_over_and_rollback_aborts_one(scenarios, request):
    _ran(scenarios, request)


def test_the_selector_s_migration_restarts_no_pod_and_a_rollback_across_it_works(scenarios, request):
    _ran(scenarios, request)


def test_production_mirroring_to_grey_needs_grey_s_pass_or_a_recorded_override(scenarios, request):
    _ran(scenarios, request)


def test_a_canary_the_history_lost_shows_as_drift_from_its_annotation_and_rollback_aborts_it(scenarios, request):
    _ran(scenarios, request)


def test_retire_takes_a_killed_canary_with_the_rest(scenarios, request):
    _ran(scenarios, request)
