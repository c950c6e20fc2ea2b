"""A small service built by CI's own jobs and deployed by the deploy tool onto the cluster's real node.

The checkout's conf/ is the test conf: hk's node pools select the real node's own pool (and
tolerate its GPU taint), so no kwok node can take these pods; value.py asks for half a CPU and
1Gi, which the 2-core node holds. The images are pushed to the build stage's registry as
<registry>/hk/<team>/<service>:<commit>, and the manifests job renders that same tag: nothing is
edited between the build and the deploy. The node pulls them over loopback, logging in with the
namespace's default ServiceAccount's imagePullSecret. The cluster's admission policy podserve-images lists that
registry beside the region's own (podserve.testbed.cluster.platform.allow_registry), as the region's cluster lists
the registry its conf names. The pools: the GPU-less pods name the real node's pool, which is not conf's GPU pool,
so podserve-placement admits them as they are (docs/tenancy.md).
"""

from __future__ import annotations

import base64
import math
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import yaml

from podserve.testbed.cluster import node as real
from podserve.testbed.cluster import platform
from podserve.testbed.deploy_policy import unfrozen_conf
from podserve.testbed.image import pipeline
from podserve.testbed.image.registry import USER
from podserve.tooling.conf import load_conf

REPO = Path(__file__).resolve().parents[2]
#: The mesh suite's folder, where FAST (its short probes, preStop, slow start and scrape interval) is defined.
MESH_TESTS = REPO / "tests" / "mesh"
KUBECTL = str(REPO / ".tools" / "bin" / "kubectl")
TEAM = "like"
PULL_SECRET = "podserve-test-registry"
#: The small test value.py: half a CPU and 1Gi, which the 2-core real node holds (the example asks 4 and 8Gi).
SMALL = {"handler": "server:TextDirection", "model_path": "model/ch_ppocr_mobile_v2.0_cls_mobile.onnx",
         "cpu": "500m", "memory": "1Gi", "gpu_num": 0, "gpu_memory": 0, "replicas": 2, "ab_replicas": 1,
         "hk_replicas": 2, "init_delay_second": 60, "drain_seconds": 2}


#: The name and commit of the one service every real-node test builds (tests/pipeline/conftest.py: grey_service).
NAME, COMMIT = "on-real-node", "realnode1"
#: What each pod of the real-node tests' cases asks of the CPU: four fit the 2-core node with room to spare (a
#: release's two stable pods, its canary and a pod stopping; scaling's three).
POD_CPU = "400m"

#: A handler module that raises as it loads (at import): the process exits, the kubelet restarts it, backs off.
#: (A handler whose load() raises does not crash the pod: the runtime keeps serving 503 on /api/ping with no
#: instance, so the kubelet's startup probe restarts it after init_delay_second: the "startup" case's diagnosis.)
CRASHES = '''"""A handler that cannot load, for the real-node failure tests (tests/pipeline/test_real_node_deploy.py)."""
print("recipe: reading the weights", flush=True)
raise RuntimeError("recipe: the weights file is truncated")
'''

#: How long the WaitsOnStorage recipe's decode waits, off the CPU (tests/pipeline/test_real_node_scaling.py).
STORAGE_WAIT_SECONDS = 0.15

#: The recipes' handlers, picked by value.py's `handler`: what goes wrong in load happens as a real model's load
#: would go wrong (test_real_node_deploy.py); the canary's builds serve the example's model and answers, one failing
#: a third of its decodes, one marking its answers, one slower (test_real_node_rollout.py); one whose requests wait on
#: storage, holding the pod's in-flight up without its CPU (test_real_node_scaling.py).
RECIPES = '''"""Handlers that fail on purpose, or tell who answered, for the real-node tests (tests/pipeline/)."""
import itertools
import threading
import time

from podserve.handler import Handler
from server import TextDirection


class OutgrowsMemory(Handler):
    def load(self, model_path, device):
        self.hog = [b"x" * (1 << 20) for _ in range(2048)]  # 2 GiB, written: far past the pod's limit


class LoadsForever(Handler):
    def load(self, model_path, device):
        time.sleep(3600)


class FailsEveryThirdDecode(TextDirection):
    """A build whose decode fails on real payloads: every third decode raises (a 500)."""

    decodes = itertools.count(1)
    counting = threading.Lock()

    def decode(self, payload):
        with self.counting:
            number = next(self.decodes)
        if number % 3 == 0:
            raise RuntimeError("recipe: this build's decode fails on every third payload")
        return super().decode(payload)


class MarksItsAnswers(TextDirection):
    """A good build: the example's answers, each with `build` added, so a caller tells which build answered."""

    def encode(self, scores):
        return {**super().encode(scores), "build": "marked"}


class SlowerBy20ms(MarksItsAnswers):
    """A slower build: the same answers (marked), each decode 20 ms later."""

    def decode(self, payload):
        time.sleep(0.02)
        return super().decode(payload)


class WaitsOnStorage(TextDirection):
    """The example's answers, each decode STORAGE_WAIT_SECONDS later without using the CPU, as a handler that fetches
    its input from object storage waits: a pod holds requests in flight while its CPU idles."""

    def decode(self, payload):
        time.sleep(STORAGE_WAIT_SECONDS)
        return super().decode(payload)
''' + f"\n\nSTORAGE_WAIT_SECONDS = {STORAGE_WAIT_SECONDS!r}\n"

#: What the real-node tests add to the checkout's src/ before its image is built: one build serves every recipe.
EXTRA_SRC = {"real_node_recipes.py": RECIPES, "real_node_crash.py": CRASHES}


def values(name: str, **fields) -> str:
    """value.py's text for service `name` of TEAM: SMALL, with `fields` changed."""
    return "".join(f"{key} = {value!r}\n" for key, value in
                   {"service_name": name, "username": TEAM, **SMALL, **fields}.items())


def fast_conf(source: Path, target: Path, prometheus: str | None = None) -> Path:
    """The conf/ `source` unfrozen into `target`, with FAST's probes, preStop, slow start and scrape interval (the mesh
    suite's) and `prometheus` as the region's Prometheus where given; return it."""
    if str(MESH_TESTS) not in sys.path:
        sys.path.insert(0, str(MESH_TESTS))
    from mesh_setup import FAST

    conf = unfrozen_conf(target, source)
    settings = yaml.safe_load((conf / "platform.yaml").read_text())
    for section, changes in FAST.items():
        settings[section].update(changes)
    if prometheus:
        settings["monitoring"]["prometheus_address"] = prometheus
    (conf / "platform.yaml").write_text(yaml.safe_dump(settings))
    return conf


def real_node_conf(checkout: Path) -> None:
    """Point hk's node pools at the real node's own pool (the test conf): only it can take these pods."""
    regions_file = checkout / "conf" / "regions.yaml"
    regions = yaml.safe_load(regions_file.read_text())
    for pool in regions["hk"]["node_pools"].values():
        pool["node_selector"] = {real.POOL_LABEL: real.POOL}
        pool["tolerations"] = [t for t in pool.get("tolerations") or [] if t["key"] != "nvidia.com/gpu"] + [
            {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    regions_file.write_text("# The test conf: hk's pools are the real node's (tests/pipeline/real_node_service.py).\n"
                            + yaml.safe_dump(regions, sort_keys=False))


@dataclass
class Deployed:
    returncode: int
    output: str
    seconds: float


class RealNodeService:
    """One service's checkout (test conf, small value.py), its jobs run, and the deploy tool pointed at the node."""

    def __init__(self, stage: pipeline.BuildStage, plane, node, workdir: Path, name: str, commit: str,
                 extra_src: dict[str, str] | None = None):
        self.stage, self.plane, self.node, self.name, self.commit = stage, plane, node, name, commit
        self.workdir = workdir
        self.checkout = stage.checkout(workdir / f"checkout-{name}-{commit}", values(name))
        real_node_conf(self.checkout)
        for relative, text in (extra_src or {}).items():  # handlers the test adds (its recipes), in the image
            (self.checkout / "src" / relative).write_text(text)
        self.conf = load_conf(self.checkout / "conf")
        platform.allow_registry(plane, self.conf.regions["hk"].registry)  # the checkout's: the local registry
        # The deploy tool's: the checkout's, without freeze windows (today may be in one)
        self.deploy_conf = unfrozen_conf(workdir / f"deploy-conf-{name}-{commit}", self.checkout / "conf")
        self.namespace = self.conf.stages["grey"].namespace_for(TEAM)

    def build(self) -> list[str]:
        """Run the manifests, model and service-image jobs as written; return the pushed images."""
        for job in ("manifests", "model", "service-image"):
            done = self.stage.run_job(job, self.checkout, self.commit)
            assert done.returncode == 0, f"the {job} job failed:\n{done.stderr[-4000:]}"
        return (self.checkout / "build/images.txt").read_text().split()

    def render(self, name: str, tag: str, stage: str = "grey", variant: str = "", conf: Path | None = None,
               **fields) -> Path:
        """Render a service's `stage` with render's CLI and the checkout's conf (what the manifests job
        runs; or `conf`), naming this checkout's image at `tag`; `fields` override value.py's (handler, memory,
        ...)."""
        value_file = self.workdir / f"{name}-{tag}-{stage}{variant}" / "value.py"
        value_file.parent.mkdir(parents=True, exist_ok=True)
        value_file.write_text(values(name, **fields))
        out = value_file.parent / "manifests"
        done = subprocess.run([sys.executable, "-m", "podserve.tooling.render", "--stage", stage, "--values",
                               str(value_file), "--conf", str(conf or self.checkout / "conf"), "--image-tag", tag,
                               "--out", str(out)], cwd=self.checkout, capture_output=True, text=True, timeout=120,
                              env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(self.checkout / "src")})
        assert done.returncode == 0, done.stderr
        return out / stage

    def let_the_node_pull(self) -> None:
        """containerd pulls the registry's names from it over HTTP; the namespace's pods log in with a Secret."""
        host = self.stage.registry.host
        self.node.add_registry(real.Mirror(host, host))
        self.let_pods_pull(*{self.conf.stages[stage].namespace_for(TEAM) for stage in ("grey", "hk")})

    def let_pods_pull(self, *namespaces: str) -> None:
        """The namespaces' pods log in to the registry (their default ServiceAccount's imagePullSecret)."""
        from kubernetes import client

        core = client.CoreV1Api(self.plane.api_client())
        secret = real.pull_secret(PULL_SECRET, self.stage.registry.host, USER, self.stage.registry.secrets()[0])
        for namespace in namespaces:
            try:
                core.create_namespaced_secret(namespace, secret)
            except client.ApiException as exc:
                if exc.status != 409:
                    raise
                core.replace_namespaced_secret(PULL_SECRET, namespace, secret)
            core.patch_namespaced_service_account("default", namespace, {"imagePullSecrets": [{"name": PULL_SECRET}]})

    def deploy(self, *args: str, manifests: Path | None = None, service: str | None = None, stage: str = "grey",
               timeout: float = 300, **more) -> Deployed:
        """The deploy tool on `stage`, with the checkout's manifests and conf and the admin's kubeconfig (`more`:
        start()'s)."""
        started = time.monotonic()
        process = self.start(*args, manifests=manifests, service=service, stage=stage, **more)
        try:
            stdout, stderr = process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            raise
        return Deployed(process.returncode, stdout + stderr, time.monotonic() - started)

    def start(self, *args: str, manifests: Path | None = None, service: str | None = None, stage: str = "grey",
              conf: Path | None = None, env: dict[str, str] | None = None) -> subprocess.Popen:
        """deploy()'s run, started: its stdout and stderr piped (text); `conf` instead of the checkout's (unfrozen),
        `env` added to its environment."""
        return subprocess.Popen([sys.executable, "-m", "podserve.tooling.deploy", *args, "--stage", stage,
                                 "--conf", str(conf or self.deploy_conf), *self._target(args[0], manifests, service)],
                                cwd=self.checkout, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                env={"PATH": "/usr/bin:/bin", "HOME": str(self.checkout),
                                     "PYTHONPATH": str(self.checkout / "src"), "KUBECONFIG": str(self.plane.kubeconfig),
                                     **(env or {})})

    def _target(self, verb: str, manifests: Path | None, service: str | None) -> list[str]:
        if verb == "apply":
            return ["--manifests", str(manifests or self.checkout / "build" / "manifests" / "grey")]
        return ["--service", service or self.name, "--team", TEAM]


@contextmanager
def hk_gateway(svc: RealNodeService, istiod, work: Path) -> Iterator:
    """hk's gateway (Envoy fed by istiod) in its own pod network on the real node's bridge; stopped at the end."""
    from podserve.testbed.cluster.node import BRIDGE, GATEWAY_ADDRESS, POD_SUBNET
    from podserve.testbed.mesh.gateway import Gateway
    from podserve.testbed.mesh.podnetwork import PodNetwork
    from podserve.tooling import chart_values

    network, gateway = PodNetwork.create(), None
    try:
        network.attach(BRIDGE, f"{GATEWAY_ADDRESS}/{POD_SUBNET.split('/')[1]}")
        gateway = Gateway.start(svc.plane.api_client(), istiod, network, work, svc.conf.stages["hk"].gateway,
                                chart_values.chart_values(svc.conf, "hk")["gateways"][0]["selector"])
        yield gateway
    finally:
        if gateway is not None:
            gateway.stop()
        network.remove()


def subset_cluster(svc: RealNodeService, manifests: Path, namespace: str, subset: str = "stable") -> str:
    """Envoy's name of a subset's cluster of the service the stage folder `manifests` holds."""
    (service,) = [d for f in sorted(manifests.glob("*.yaml")) for d in yaml.safe_load_all(f.read_text())
                  if d and d["kind"] == "Service"]
    return f"outbound|{service['spec']['ports'][0]['port']}|{subset}|{svc.name}.{namespace}.svc.cluster.local"


def remove_hk(svc: RealNodeService, namespace: str) -> None:
    """Delete the service's hk objects as the admin (production cannot be deleted with the tool)."""
    subprocess.run([KUBECTL, "delete", "-n", namespace, "rollouts.argoproj.io,analysistemplates.argoproj.io,"
                    "deployments,service,pdb,configmap,virtualservices.networking.istio.io,"
                    "destinationrules.networking.istio.io,scaledobjects.keda.sh,horizontalpodautoscalers",
                    "-l", f"service={svc.name}", "--wait=false"],
                   capture_output=True, env=svc.plane.tool_env())


def runtime_faults_in_pods(svc: RealNodeService, namespace: str) -> dict[str, list[str]]:
    """Each of the service's pods in `namespace` not being deleted -> the faults of the runtime's own its server
    container logged (podserve.testbed.server_logs), read with `kubectl logs` (the kubelet's copy of its output)."""
    from kubernetes import client

    from podserve.testbed.server_logs import runtime_faults

    faults = {}
    for pod in client.CoreV1Api(svc.plane.api_client()).list_namespaced_pod(
            namespace, label_selector=f"service={svc.name}").items:
        if pod.metadata.deletion_timestamp:
            continue
        logs = subprocess.run([KUBECTL, "logs", "-n", namespace, pod.metadata.name, "-c", "server"],
                              capture_output=True, text=True, timeout=60, env=svc.plane.tool_env())
        assert logs.returncode == 0, f"kubectl logs {pod.metadata.name}: {logs.stderr}"
        faults[pod.metadata.name] = runtime_faults(logs.stdout)
    return faults


def assert_no_runtime_fault(svc: RealNodeService, namespace: str) -> None:
    """Fail naming each of the service's pods in `namespace` whose server logged a fault of the runtime's own."""
    faults = runtime_faults_in_pods(svc, namespace)
    assert faults, f"no pod of {svc.name} in {namespace} to read"
    assert not any(faults.values()), {pod: found for pod, found in faults.items() if found}


def example_body(postid: str = "p") -> dict:
    """A caller's request body: the example's text line."""
    image = base64.b64encode((REPO / "examples" / "text-line.png").read_bytes()).decode()
    return {"postid": postid, "uid": "u", "seqid": "s", "image": image}


class PacedCallers:
    """`rate` requests a second to `url` (with Host `host`) from `callers` threads, each request sent at its own time,
    until stopped (at most `seconds`); each answer as (time sent, status, the answering build's mark for a 200, what
    went wrong otherwise). With `ramp_seconds`, the rate first rises evenly from none to `rate` over that time. `with`
    waits for `rate` answers before its body runs."""

    def __init__(self, url: str, host: str, body: dict, rate: int, callers: int, seconds: float = 300,
                 ramp_seconds: float = 0):
        self.url, self.host, self.body, self.rate, self.seconds = url, host, body, rate, seconds
        self.ramp_seconds = ramp_seconds
        self.outcomes: list[tuple[float, int, str | None]] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._client, args=(i, callers), daemon=True) for i in range(callers)]
        self._start = time.monotonic() + 0.2

    def __enter__(self) -> "PacedCallers":
        from podserve.testbed.processes import poll_until

        for thread in self._threads:
            thread.start()
        poll_until(lambda: len(self.outcomes) >= self.rate, "a second of callers", 60)
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=40)

    def statuses(self) -> dict[int, int]:
        found: dict[int, int] = {}
        for _, status, _ in self.outcomes:
            found[status] = found.get(status, 0) + 1
        return found

    def failed(self) -> list[tuple[float, int, str | None]]:
        return [o for o in self.outcomes if o[1] != 200]

    def send_time(self, number: int) -> float:
        """Seconds after the start that request `number` (from 0) is sent: n(t) = rate t^2 / (2 ramp) requests sent
        by t during the ramp, then `rate` a second."""
        during_ramp = self.rate * self.ramp_seconds / 2
        if number < during_ramp:
            return math.sqrt(2 * self.ramp_seconds * number / self.rate)
        return self.ramp_seconds + (number - during_ramp) / self.rate

    def _client(self, index: int, callers: int) -> None:
        import requests

        with requests.Session() as session:
            for number in range(index, int(self.seconds * self.rate), callers):
                if self._stop.wait(max(0.0, self._start + self.send_time(number) - time.monotonic())):
                    return
                sent = time.monotonic()
                try:
                    reply = session.post(self.url, json=self.body, headers={"Host": self.host}, timeout=30)
                    mark = reply.json()["results"].get("build") if reply.status_code == 200 else reply.text[:120]
                    self.outcomes.append((sent, reply.status_code, mark))
                except (requests.RequestException, ValueError) as exc:
                    self.outcomes.append((sent, 0, repr(exc)[:120]))
