"""Helpers of the live deploy tests: a service's value.py, its rendered manifests, the CLI run as CI's account.

Every test deploys its own small CPU service (its own name, so tests never share objects)
to the test control plane, runs `python -m podserve.tooling.deploy` as a subprocess with
the token of the account CI would use (the team's preview account for grey and ab, its
production account for the rest), and checks the cluster with the admin's client.
What the kubelet would report is simulated by kwok: the pod-template annotation
`podserve.io/simulate` picks the failure (cluster/kwok-stages.yaml).
"""

from __future__ import annotations

import os
import queue
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import yaml

from ci_account import ci_kubeconfig
from podserve.testbed.deploy_policy import unfrozen_conf
from podserve.tooling import release, tenancy
from podserve.tooling.conf import load_conf
from podserve.tooling.deploy.errors import ClusterError
from podserve.tooling.deploy.kube import CONFIGMAPS, LEASES, MANAGED, PODS, REPLICASETS, Kube

REPO = Path(__file__).resolve().parents[2]
SIMULATE = "podserve.io/simulate"
#: A small CPU service: the fake CPU pool has room for every test's pods at once.
VALUES = """service_name = {name!r}
username = {team!r}
cpu = 1
memory = "1Gi"
gpu_num = 0
gpu_memory = 0
replicas = 1
ab_replicas = 1
hk_replicas = 2
max_replicas = {max_replicas}
init_delay_second = 10
"""


@dataclass
class Run:
    """One run of the CLI: its exit status, output and how long it took."""

    returncode: int
    stdout: str
    stderr: str
    seconds: float

    @property
    def output(self) -> str:
        return self.stdout + self.stderr


class Live:
    """A test's view of the control plane: the CI kubeconfig, the admin client, a scratch folder."""

    def __init__(self, plane, tmp: Path, team: str = "like"):
        self.plane, self.tmp, self.team = plane, tmp, team
        self.admin = Kube(plane.api_client())
        self.conf = load_conf()
        self.conf_dir = unfrozen_conf(tmp / "conf-unfrozen")  # today may be in a freeze window
        self._kubeconfigs: dict[str, Path] = {}

    @property
    def ci_kubeconfig(self) -> Path:
        """The team's preview account (grey, ab): what every branch's pipeline holds."""
        return self.kubeconfig("preview")

    def kubeconfig(self, tier: str) -> Path:
        if tier not in self._kubeconfigs:
            self._kubeconfigs[tier] = ci_kubeconfig(self.plane, self.tmp / f"{self.team}-{tier}.kubeconfig",
                                                    self.team, tier)
        return self._kubeconfigs[tier]

    def namespace(self, stage: str) -> str:
        """The team's namespace of `stage`."""
        return self.conf.stages[stage].namespace_for(self.team)

    def values(self, name: str, max_replicas: int = 0, extra: str = "") -> Path:
        """The service's value.py (VALUES, then the `extra` lines)."""
        path = self.tmp / name / "value.py"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(VALUES.format(name=name, team=self.team, max_replicas=max_replicas) + extra)
        return path

    def manifests(self, name: str, stage: str, tag: str = "v1", simulate: str | None = None,
                  max_replicas: int = 0, cpu: str | None = None, extra: str = "", conf: Path | None = None) -> Path:
        """Render the service's stage with render's CLI into a folder, as CI's build job does; then simulate.
        `extra`: more value.py lines; `conf`: the platform's conf/ to render with (default: the repository's)."""
        out = self.tmp / name / f"manifests-{tag}-{simulate or 'ok'}-{max_replicas}-{cpu}-{abs(hash(extra))}"
        done = subprocess.run([sys.executable, "-m", "podserve.tooling.render", "--stage", stage, "--values",
                               str(self.values(name, max_replicas, extra)), "--out", str(out), "--image-tag", tag,
                               *(["--conf", str(conf)] if conf else [])],
                              cwd=REPO, capture_output=True, text=True, timeout=60, env=self.env())
        assert done.returncode == 0, done.stderr
        # the object that runs the pods: a production stage's Rollout, another stage's Deployment
        path = next(p for p in (out / stage / "rollout.yaml", out / stage / "deployment.yaml") if p.is_file())
        deployment = yaml.safe_load(path.read_text())
        pod = deployment["spec"]["template"]
        if simulate:  # kwok plays the kubelet: this annotation picks the failure it reports
            pod["metadata"]["annotations"][SIMULATE] = simulate
        if cpu:  # more than any node has (render itself refuses this in value.py)
            pod["spec"]["containers"][0]["resources"]["requests"]["cpu"] = cpu
            pod["spec"]["containers"][0]["resources"]["limits"]["cpu"] = cpu
        path.write_text(yaml.safe_dump(deployment))
        return out

    def env(self, kubeconfig: Path | None = None, **extra) -> dict[str, str]:
        keep = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG", "PYTHONPATH")}
        keep.pop("KUBECONFIG", None)
        return {**keep, "PYTHONPATH": str(REPO / "src"), "KUBECONFIG": str(kubeconfig or self.ci_kubeconfig), **extra}

    def start(self, *args, **env) -> subprocess.Popen:
        """Run the CLI as CI does: with the account of the stage named by --stage."""
        stage = self.conf.stages[str(args[list(args).index("--stage") + 1])]
        kubeconfig = env.pop("KUBECONFIG", None) or self.kubeconfig(tenancy.tier(stage))
        conf = [] if "--conf" in args else ["--conf", self.conf_dir]  # a test about freeze windows brings its own
        return subprocess.Popen([sys.executable, "-m", "podserve.tooling.deploy", *map(str, args), *map(str, conf)],
                                cwd=REPO,
                                env=self.env(kubeconfig, **env), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True)

    def deploy(self, *args, timeout: float = 240, **env) -> Run:
        started = time.monotonic()
        process = self.start(*args, **env)
        stdout, stderr = process.communicate(timeout=timeout)
        return Run(process.returncode, stdout, stderr, time.monotonic() - started)

    # --- the cluster, as the admin sees it ---------------------------------------------------------

    def objects(self, namespace: str, stage: str, service: str) -> list[str]:
        """Every object labelled with the service and stage, in every kind the tool touches."""
        selector = f"service={service},stage={stage}"
        kinds = {**MANAGED, "ReplicaSet": REPLICASETS, "Pod": PODS, "ConfigMap": CONFIGMAPS, "Lease": LEASES}
        return sorted(f"{kind}/{o['metadata']['name']}" for kind, api in kinds.items()
                      for o in self.items(api, namespace, selector))

    def versions(self, namespace: str, stage: str, service: str) -> dict[str, str]:
        selector = f"service={service},stage={stage}"
        kinds = {**MANAGED, "ReplicaSet": REPLICASETS, "Pod": PODS}
        return {f"{kind}/{o['metadata']['name']}": o["metadata"]["resourceVersion"] for kind, api in kinds.items()
                for o in self.items(api, namespace, selector)}

    def remove(self, namespace: str, stage: str, service: str) -> None:
        """Clean up a test's objects as the admin (production stages cannot be deleted with the tool)."""
        selector = f"service={service},stage={stage}"
        for api in [*MANAGED.values(), CONFIGMAPS, LEASES]:
            for obj in self.items(api, namespace, selector):
                self.admin.delete(api, namespace, obj["metadata"]["name"])

    def items(self, api, namespace: str | None, selector: str | None = None) -> list[dict]:
        try:
            return self.admin.list(api, namespace, selector).get("items") or []
        except ClusterError as exc:
            if exc.status == 404:  # a CRD this cluster does not serve
                return []
            raise


def before_rollouts(folder: Path, out: Path) -> Path:
    """A production stage's rendered folder as render wrote it before issue 66 (into `out`): the Deployment instead of
    the Rollout (selector and pod template with `track: stable`, rolling one pod at a time), the DestinationRule's
    subsets selecting `track`, no AnalysisTemplate, the autoscaler scaling the Deployment."""
    out.mkdir(parents=True, exist_ok=True)
    for path in folder.glob("*.yaml"):
        docs = []
        for doc in (d for d in yaml.safe_load_all(path.read_text()) if d):
            if doc["kind"] == "AnalysisTemplate":
                continue
            if doc["kind"] == "Rollout":
                doc = dict(doc, apiVersion="apps/v1", kind="Deployment")
                stable = {release.TRACK_LABEL: release.STABLE}
                doc["spec"]["selector"]["matchLabels"].update(stable)
                doc["spec"]["template"]["metadata"]["labels"].update(stable)
                doc["metadata"]["labels"].update(stable)
                doc["spec"]["strategy"] = {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}}
                path = path.with_name("deployment.yaml")
            if doc["kind"] == "DestinationRule":
                for subset in doc["spec"]["subsets"]:
                    subset["labels"] = {release.TRACK_LABEL: subset["name"]}
            if doc["kind"] == "ScaledObject":
                doc["spec"]["scaleTargetRef"].update(apiVersion="apps/v1", kind="Deployment")
            docs.append(doc)
        if docs:
            (out / path.name).write_text(yaml.safe_dump_all(docs))
    return out


def read_until(process: subprocess.Popen, wanted: Callable[[str], bool], what: str, seconds: float = 60) -> list[str]:
    """Read a started tool's stdout until a line `wanted` accepts and return the lines so far; the reader goes on, and
    finish() collects what follows; a second call on the same tool goes on from there (one reader per tool).
    AssertionError naming `what` when the tool exits or `seconds` pass first."""
    lines: queue.Queue | None = getattr(process, "rest", None)
    if lines is None:
        lines = process.rest = queue.Queue()
        threading.Thread(target=lambda: [lines.put(line) for line in process.stdout] + [lines.put(None)],
                         daemon=True).start()
    seen, deadline = [], time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        try:
            line = lines.get(timeout=left)
        except queue.Empty:
            break
        if line is None:
            break
        seen.append(line)
        if wanted(line):
            return seen
    raise AssertionError(f"{what}: not within {seconds:.0f} s; the tool printed:\n{''.join(seen)}")


def finish(process: subprocess.Popen, seen: list[str], timeout: float = 120) -> str:
    """Wait for a tool read_until read from to exit; return its whole stdout and stderr."""
    process.wait(timeout=timeout)
    while (line := process.rest.get(timeout=10)) is not None:
        seen.append(line)
    return "".join(seen) + process.stderr.read()
