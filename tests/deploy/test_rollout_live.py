"""A production release on Argo Rollouts, the deploy tool its client (issue 66, phase 2): apply applies the Rollout and
follows Argo's status; a killed job changes nothing in the cluster and the next one attaches; `canary promote|abort`
and `rollback` are Argo's status patches; `status` shows Argo's step, weights and analysis.

Real: the apiserver with the platform chart's policies (the team's production account deploys), the Argo Rollouts
controller built from its Go module (`make argo-rollouts`) as the chart's ServiceAccount, the ReplicaSet controller,
the deploy tool's CLI. Simulated: the kubelet (kwok: pods become ready at once). The AnalysisTemplate queries the
platform's Prometheus address (conf/platform.yaml), which no test process serves: every measurement is an error,
retried every 10 s, so a step's analysis ends in Error (an abort naming Prometheus) after CONSECUTIVE_ERROR_LIMIT + 1
of them, about 45 s: the window each test acts in.
"""

from __future__ import annotations

import signal
import threading
import time

import pytest
import yaml

from live import Live, before_rollouts, finish, read_until
from podserve.tooling import analysis_template as at
from podserve.tooling.conf import load_conf
from podserve.tooling.deploy import argo
from podserve.tooling.deploy.history import History
from podserve.tooling.deploy.kube import MANAGED, PODS
from podserve.testbed.deploy_policy import unfrozen_conf
from receiver import Receiver

HK = load_conf().stages["hk"].namespace_for("like")
STEPS = "canary_steps = [10, 50]\n"


@pytest.fixture(scope="module")
def live(control_plane, rollouts_controller, tmp_path_factory) -> Live:
    return Live(control_plane, tmp_path_factory.mktemp("rollout"))


@pytest.fixture(scope="module")
def conf_dir(live) -> str:
    """conf/ unfrozen, slow start 1 s and a 3 s window (the first measurement 4 s into a step), no extension, the
    lock's lease at 5 s (a killed deploy's Lease is free that soon)."""
    folder = unfrozen_conf(live.tmp / "conf-rollout")
    platform = yaml.safe_load((folder / "platform.yaml").read_text())
    platform["mesh"]["slow_start"] = "1s"
    (folder / "platform.yaml").write_text(yaml.safe_dump(platform))
    policy = yaml.safe_load((folder / "deploy.yaml").read_text())
    policy["verdict"].update(window_seconds=3, max_extensions=0)
    policy["lock_lease_seconds"] = 5
    policy["canary_scale_down_delay_seconds"] = 1
    (folder / "deploy.yaml").write_text(yaml.safe_dump(policy))
    return str(folder)


class Service:
    """One test's production service: its manifests per version, its CLI runs, its Rollout as the admin sees it."""

    def __init__(self, live: Live, conf_dir: str, name: str):
        self.live, self.conf, self.name = live, conf_dir, name

    def apply_args(self, tag: str) -> list:
        return ["apply", "--stage", "hk", "--conf", self.conf, "--manifests",
                self.live.manifests(self.name, "hk", tag, extra=STEPS, conf=self.conf)]

    def apply(self, tag: str, **env):
        return self.live.deploy(*self.apply_args(tag), **env)

    def start(self, tag: str, **env):
        return self.live.start(*self.apply_args(tag), **env)

    def verb(self, *args, **env):
        return self.live.deploy(*args, "--stage", "hk", "--conf", self.conf, "--service", self.name, "--team", "like",
                                **env)

    def rollout(self) -> dict:
        return self.live.admin.get(MANAGED["Rollout"], HK, self.name)

    def state(self) -> argo.State:
        return argo.state_of(self.rollout())

    def weights(self) -> set[tuple]:
        """The (stable, canary) weights of every weighted route of the live VirtualService."""
        vs = self.live.admin.get(MANAGED["VirtualService"], HK, self.name)
        return {tuple(d.get("weight", 0) for d in http["route"]) for http in vs["spec"]["http"]}

    def stable_pods(self) -> dict[str, tuple]:
        """{name: (uid, restarts)} of the pods of stable's pod template hash."""
        stable = self.state().stable_hash
        pods = self.live.items(PODS, HK, f"service={self.name},stage=hk,{at.HASH_POD_LABEL}={stable}")
        return {p["metadata"]["name"]: (p["metadata"]["uid"], sum(s.get("restartCount", 0) for s in
                                                                    (p.get("status") or {}).get("containerStatuses")
                                                                    or []))
                for p in pods if not p["metadata"].get("deletionTimestamp")}

    def history(self) -> History:
        return History.load(self.live.admin, HK, self.name, "hk")

    def wait(self, check, what: str, seconds: float = 60):
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if check():
                return
            time.sleep(0.5)
        raise AssertionError(f"{what}: not within {seconds:.0f} s; the Rollout: {self.state().describe()}")

    def remove(self):
        self.live.remove(HK, "hk", self.name)


def _first_revision(service: Service) -> dict:
    """Revision 1 deployed (a Rollout's first revision has no steps): its stable pods."""
    first = service.apply("v1")
    assert first.returncode == 0, first.output
    assert "serving: revision 1" in first.stdout
    state = service.state()
    assert state.promoted and state.weights == (100, 0)
    assert service.live.admin.get(MANAGED["Deployment"], HK, service.name) is None  # production runs no Deployment
    pods = service.stable_pods()
    assert len(pods) == 2
    return pods


def test_prometheus_unreachable_aborts_the_step_naming_it_and_apply_rolls_back_by_argo(live, conf_dir):
    """It must show 2, through the deploy tool: the analysis can reach no Prometheus; Argo counts the errors, retries,
    then aborts (never a pass); apply says why, with the analysis' numbers, and ends on stable (exit 1), whose pods
    never restarted."""
    service = Service(live, conf_dir, "dr-unreachable")
    receiver = Receiver()
    try:
        before = _first_revision(service)
        run = service.apply("v2", PODSERVE_NOTIFY_URL=receiver.url)
        assert run.returncode == 1, run.output
        assert "Argo Rollouts aborted the release" in run.stdout, run.output
        # Argo's words for the analysis' end, and each metric's errors with the provider's message
        assert "Error" in run.stdout and "prometheus-operated.monitoring.svc" in run.stdout, run.output
        assert "rolled back: the previous revision is serving again" in run.stdout, run.output
        state = service.state()
        assert state.promoted and state.weights == (100, 0), state.describe()
        assert service.stable_pods() == before  # stable's pods: the same ones, never restarted
        runs = argo.analysis_runs(live.admin, service.rollout())
        assert runs and runs[-1]["status"]["phase"] == "Error"
        errors = next(r for r in runs[-1]["status"]["metricResults"] if r["name"] == "errors")
        assert errors["consecutiveError"] == at.CONSECUTIVE_ERROR_LIMIT + 1 and not errors.get("successful")
        assert service.history().current.number == 1 and service.history().pending is None
        assert [b["outcome"] for b in receiver.bodies] == ["rolled_back"]
        assert "Argo Rollouts aborted the release" in receiver.bodies[0]["diagnosis"]
    finally:
        receiver.stop()
        service.remove()


def test_a_killed_job_leaves_the_release_to_argo_the_rerun_attaches_and_promote_ends_it(live, conf_dir):
    """It must show 1 (the job SIGKILLed at a step): nothing in the cluster changes (Argo keeps the step's weights);
    a rerun of the same revision attaches instead of applying again; `status` shows the step, the weights and the
    analysis; `canary promote --reason` (Argo's promoteFull) ends the release, the rerun reports it (exit 0) and the
    revision records who promoted and why."""
    service = Service(live, conf_dir, "dr-killed")
    try:
        before = _first_revision(service)
        process = service.start("v2")
        service.wait(lambda: service.weights() == {(90, 10)}, "Argo at step 1's weight")
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
        time.sleep(2)  # what a dead job would have undone: nothing; Argo holds the step
        assert service.weights() == {(90, 10)} and service.state().step in (1, 2)
        assert service.history().pending.number == 2
        status = service.verb("status")
        assert "Argo Rollouts: Progressing" in status.stdout and "of 4, weights stable 90, canary 10" in status.stdout, \
            status.output
        rerun = service.start("v2")
        seen = read_until(rerun, lambda line: line.startswith("attaching to revision 2's release"), "the rerun attaches",
                          60)
        promoted = service.verb("canary", "promote", "--reason", "checked the canary by hand")
        assert promoted.returncode == 0, promoted.output
        out = finish(rerun, seen, 120)
        assert rerun.returncode == 0, out
        assert "serving: revision 2" in out and "configured Rollout" not in out  # followed, never applied again
        state = service.state()
        assert state.promoted and state.current_hash != "" and state.weights == (100, 0)
        assert set(service.stable_pods()).isdisjoint(before)  # revision 2's pods are stable now
        current = service.history().current
        assert current.number == 2 and current.canary["action"] == "promote"
        assert current.canary["reason"] == "checked the canary by hand"
    finally:
        service.remove()


def test_sigterm_stops_the_job_not_the_release_and_canary_abort_then_rollback_end_it(live, conf_dir):
    """SIGTERM: the job says the release goes on and exits 1, the weights stay Argo's; `canary abort` sends every
    request back to stable (Argo's abort); `rollback` puts revision 1's spec back (Argo takes stable again, Healthy)
    and forgets revision 2; `canary promote` without a reason, or with no release running, is bad input (exit 2)."""
    service = Service(live, conf_dir, "dr-sigterm")
    try:
        before = _first_revision(service)
        process = service.start("v2")
        seen = read_until(process, lambda line: line.startswith("waiting up to"), "the deploy applied", 60)
        service.wait(lambda: service.weights() == {(90, 10)}, "Argo at step 1's weight")
        process.send_signal(signal.SIGTERM)
        out = finish(process, seen, 60)
        assert process.returncode == 1 and "Revision 2's release goes on in the cluster" in out, out
        assert service.weights() == {(90, 10)}
        unexplained = service.verb("canary", "promote")
        assert unexplained.returncode == 2 and "--reason" in unexplained.stderr, unexplained.output
        aborted = service.verb("canary", "abort", "--reason", "wrong build")
        assert aborted.returncode == 0, aborted.output
        service.wait(lambda: service.weights() == {(100, 0)}, "Argo's abort: stable 100")
        assert service.state().aborted and service.stable_pods() == before
        back = service.verb("rollback")
        assert back.returncode == 0, back.output
        state = service.state()
        assert state.promoted and state.weights == (100, 0) and service.stable_pods() == before
        assert service.history().pending is None and service.history().current.number == 1
        nothing = service.verb("canary", "abort", "--reason", "again")
        assert nothing.returncode == 2 and "no release of dr-sigterm runs" in nothing.stderr, nothing.output
    finally:
        service.remove()


class ReadyPods:
    """The fewest ready, not terminating pods of a service seen in a background poll (every 0.2 s), and how many
    distinct pods were ready at some point."""

    def __init__(self, service: Service):
        self.service, self.fewest, self.seen = service, None, set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def __enter__(self) -> "ReadyPods":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _poll(self) -> None:
        while not self._stop.wait(0.2):
            pods = self.service.live.items(PODS, HK, f"service={self.service.name},stage=hk")
            ready = [p["metadata"]["uid"] for p in pods if not p["metadata"].get("deletionTimestamp") and any(
                c.get("type") == "Ready" and c.get("status") == "True" for c in (p.get("status") or {}).get(
                    "conditions") or [])]
            self.seen.update(ready)
            self.fewest = len(ready) if self.fewest is None else min(self.fewest, len(ready))


def test_a_live_deployment_moves_into_the_rollout_never_short_of_ready_pods_and_a_failed_canary_stays_in_it(
        live, conf_dir):
    """It must show 5, on simulated pods (tests/pipeline's real node shows it under traffic): production as deployed
    before issue 66 (a Deployment of v0, 2 pods), then apply of v1's Rollout. The tool moves the stage into a Rollout
    of v0 first (its pods beside the Deployment's until all are available, then the Deployment deleted), so v1 is a
    canary against v0, never a straight replacement; the canary's analysis errors (no Prometheus here), Argo aborts,
    and the rollback to v0's revision stays in the Rollout: no Deployment is re-created, v0's Rollout pods never
    restart. Ready pods never fall below 2."""
    service = Service(live, conf_dir, "dr-migrate")
    legacy = before_rollouts(live.manifests(service.name, "hk", "v0", extra=STEPS, conf=service.conf) / "hk",
                             live.tmp / "dr-migrate-before" / "hk").parent
    try:
        first = live.deploy("apply", "--stage", "hk", "--conf", service.conf, "--manifests", legacy)
        assert first.returncode == 0, first.output
        old = live.admin.get(MANAGED["Deployment"], HK, service.name)
        assert old["spec"]["selector"]["matchLabels"]["track"] == "stable" and service.rollout() is None
        dry = live.deploy(*service.apply_args("v1"), "--dry-run")
        assert dry.returncode == 0 and f"would move Deployment/{service.name} into Rollout" in dry.stdout, dry.output
        assert f"would delete Deployment/{service.name}" not in dry.stdout, dry.output
        with ReadyPods(service) as ready:
            run = service.apply("v1")
        print(f"migration then v1's canary: exit {run.returncode} in {run.seconds:.1f} s; fewest ready pods "
              f"{ready.fewest}, {len(ready.seen)} pods ready at some point")
        assert run.returncode == 1, run.output  # v1's canary: aborted (its analysis reaches no Prometheus)
        said = run.stdout
        assert f"migrating hk from Deployment/{service.name} to Argo Rollouts" in said, run.output
        assert f"migrated: Deployment/{service.name} replaced by Rollout/{service.name} (2 pods replaced)" in said, run.output
        assert said.index("migrated:") < said.index("Argo Rollouts aborted the release"), run.output
        assert "rolled back: the previous revision is serving again" in said, run.output
        assert live.admin.get(MANAGED["Deployment"], HK, service.name) is None  # never re-created by the rollback
        state = service.state()
        assert state.promoted and state.weights == (100, 0), state.describe()
        (image,) = {c["image"] for c in service.rollout()["spec"]["template"]["spec"]["containers"]}
        assert image.endswith(":v0"), image
        assert ready.fewest == 2  # the Deployment's 2 until the Rollout's 2 were ready; never fewer
        assert len(ready.seen) >= 5  # v0's 2 in the Deployment, v0's 2 in the Rollout, v1's canary
        assert all(restarts == 0 for _, restarts in service.stable_pods().values()) and len(service.stable_pods()) == 2
        assert service.history().pending is None
    finally:
        service.remove()
