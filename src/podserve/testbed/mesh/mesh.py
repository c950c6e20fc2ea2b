"""One region's gateway in front of its stages' pods: render, translate, start, keep endpoints, roll, stop.

`Mesh.start()` renders each service's value.py for the region's stages (production gets
`pods` pods, grey and ab one each, unless `replicas` says otherwise) and the platform
chart's Gateway, translates them (istio.py -> ir -> envoy.py), starts every pod, writes
each cluster's endpoints once every first pod is ready, then starts Envoy. From then on a
Prober per mesh keeps the endpoint files equal to "ready and not terminating", as the
EndpointSlice controller and istiod would. Simulated: the kubelet (probing, restarts) and
istiod (the files stand in for xDS); real: our server processes and Envoy.
"""

from __future__ import annotations

import json
import signal
import subprocess
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from podserve.testbed.mesh import envoy as envoy_config
from podserve.testbed.mesh import ir, istio
from podserve.testbed.mesh.gateway import Envoy, validate
from podserve.testbed.mesh.pods import Pod, Probe, Prober, python_path
from podserve.testbed.processes import StartError, free_port
from podserve.testbed.prometheus import ScrapeTarget, pod_monitor_labels
from podserve.tooling import chart_values, render
from podserve.tooling.conf import Conf, load_conf

REPO = Path(__file__).resolve().parents[4]
HELM = REPO / ".tools" / "bin" / "helm"
CHART = REPO / "charts" / "podserve-platform"


def gateway_objects(conf: Conf, region: str) -> list[dict]:
    """Render the platform chart's Gateways for `region` with the real helm (`make tools` fetches it)."""
    if not HELM.is_file():
        raise StartError(f"{HELM} is missing: run `make tools` (the mesh renders the chart's Gateway with helm)")
    with tempfile.TemporaryDirectory() as tmp:
        values = Path(tmp) / "values.yaml"
        values.write_text(yaml.safe_dump(chart_values.chart_values(conf, region)))
        env = {"HOME": tmp, "XDG_CACHE_HOME": tmp, "XDG_CONFIG_HOME": tmp, "XDG_DATA_HOME": tmp,
               "KUBECONFIG": "/dev/null", "PATH": "/usr/bin:/bin"}
        done = subprocess.run([str(HELM), "template", "podserve-platform", str(CHART), "-f", str(values),
                               "--show-only", "templates/gateway.yaml"], capture_output=True, text=True,
                              timeout=120, env=env)
    if done.returncode != 0:
        raise StartError(f"helm could not render the chart's Gateway: {done.stderr}")
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc]


@dataclass
class Workload:
    """One stage of one service: its cluster, its pods' environment, probe and shutdown budget."""

    service: str
    stage: str
    cluster: str  # where its traffic goes: its Service's cluster, or in production the subset of its pods (stable)
    env: dict[str, str]
    probe: Probe
    prestop_s: float
    grace_s: float
    replicas: int
    pods: list[Pod] = field(default_factory=list)
    prober: Prober | None = None
    labels: dict = field(default_factory=dict)  # its pods' labels (the pod template's): subsets select by them
    host: str = ""  # its Service, <name>.<namespace>.svc.cluster.local
    docs: list[dict] = field(default_factory=list)  # what render wrote for the stage


class Mesh:
    """The gateway Envoy of one region and the pods of every stage there, for `make mesh` and the tests."""

    def __init__(self, values_paths: list[Path], work: Path, *, region: str = "hk", pods: int = 3,
                 conf: Conf | None = None, port: int = 0, stages: list[str] | None = None,
                 replicas: dict[str, int] | None = None, env: dict[str, str] | None = None,
                 pod_env: dict[tuple[str, str, int], dict] | None = None,
                 extra_python_path: tuple[Path, ...] = (), local_any_host: bool = True):
        self.values_paths = [Path(p) for p in values_paths]
        self.work = Path(work)
        self.region, self.production_pods = region, pods
        self.conf = conf if conf is not None else load_conf()
        self.port = port
        self.stage_names = stages or [name for name, s in self.conf.stages.items() if s.region == region]
        self.replicas = replicas or {}
        self.env = env or {}
        self.pod_env = pod_env or {}
        self.extra_python_path = tuple(extra_python_path)
        self.local_any_host = local_any_host
        self.workloads: list[Workload] = []
        self.objects: list[dict] = []
        self.envoy: Envoy | None = None
        self.config: ir.GatewayConfig | None = None
        self._eds_lock = threading.RLock()
        self._eds_version = 0
        self._xds_version = 0
        self._probers: list[Prober] = []
        self._rollouts = 0

    # --- start ------------------------------------------------------------------------------------

    def render(self) -> list[dict]:
        """Render every service's stages in the region and the region's Gateway; return all objects."""
        objects = gateway_objects(self.conf, self.region)
        for path in self.values_paths:
            rendered = render.render(path, stages=self.stage_names, conf=self.conf, image_tag="local",
                                     handler_paths=[REPO / "src", *self.extra_python_path])
            for stage, docs in rendered.stages.items():
                objects.extend(docs)
                self.workloads.append(self._workload(stage, docs))
        self.objects = objects
        return objects

    def _workload(self, stage: str, docs: list[dict]) -> Workload:
        by_kind = {d["kind"]: d for d in docs}
        deployment, service = by_kind["Deployment"], by_kind["Service"]
        pod_spec = deployment["spec"]["template"]["spec"]
        container = pod_spec["containers"][0]
        env = {e["name"]: e["value"] for e in container["env"]}
        host = f"{service['metadata']['name']}.{service['metadata']['namespace']}.svc.cluster.local"
        cluster = ir.cluster_name(host, service["spec"]["ports"][0]["port"])
        name = deployment["metadata"]["name"]
        default = self.production_pods if self.conf.stages[stage].production else 1
        replicas = self.replicas.get(f"{name}/{stage}", self.replicas.get(stage, default))
        return Workload(name, stage, cluster, env, Probe.from_container(container),
                        container["lifecycle"]["preStop"]["sleep"]["seconds"],
                        pod_spec["terminationGracePeriodSeconds"], replicas,
                        labels=dict(deployment["spec"]["template"]["metadata"]["labels"]), host=host, docs=docs)

    def start(self) -> "Mesh":
        """Render, translate, start the pods, wait for them, write endpoints, start Envoy; return self."""
        self.work.mkdir(parents=True, exist_ok=True)
        try:
            self._start()
        except BaseException:
            self.stop()
            raise
        return self

    def _start(self) -> None:
        objects = self.render()
        gateway = self.conf.stages[self.stage_names[0]].gateway
        self.config = istio.translate(objects, gateway)
        for workload in self.workloads:
            workload.cluster = self._cluster_of(workload)
        for workload in self.workloads:
            for index in range(workload.replicas):
                workload.pods.append(self._new_pod(workload, index))
        self._wait_ready([pod for w in self.workloads for pod in w.pods], timeout=120)
        self.port = self.port or free_port()
        self._check_with_envoy(self.config)
        self._xds_version += 1
        envoy_config.write_xds(self.config, self.work, self.work, self._xds_version, self.local_any_host)
        for workload in self.workloads:
            self._write_workload_endpoints(workload)
        config_path = self.work / "envoy.json"
        config_path.write_text(json.dumps(envoy_config.dynamic_bootstrap(
            gateway, port=self.port, admin_port=0, xds_folder=self.work), indent=1))
        validate(config_path)
        self.envoy = Envoy(config_path, self.work)
        self.envoy.program.wait_until(self._envoy_sees_every_pod, 30, "every ready pod in Envoy's clusters")
        for workload in self.workloads:
            prober = Prober(workload.probe, lambda pod, w=workload: self._write_workload_endpoints(w))
            for pod in workload.pods:
                prober.watch(pod)
            self._probers.append(prober)
            workload.prober = prober

    def _check_with_envoy(self, config: ir.GatewayConfig) -> None:
        """Have Envoy validate `config` as a bootstrap first: an xDS update it rejects would be kept out silently."""
        path = self.work / "envoy-check.json"
        path.write_text(json.dumps(envoy_config.bootstrap(config, port=self.port, admin_port=0, eds_folder=self.work,
                                                          local_any_host=self.local_any_host)))
        envoy_config.write_empty_endpoints(config, self.work)
        validate(path)

    def update(self, objects: list[dict], timeout: float = 30) -> None:
        """Serve `objects` (every Gateway, VirtualService and DestinationRule of the region, as render writes them)
        from now on, as istiod pushes a change: translate, validate, write the routes and clusters Envoy reads, feed
        each cluster's endpoints, and wait until Envoy runs that version."""
        config = istio.translate(objects, self.config.name)
        if config == self.config:  # Envoy keeps a version whose content it already runs: nothing to push
            self.objects = objects
            return
        self._check_with_envoy(config)
        with self._eds_lock:
            self.objects, self.config = objects, config
            for workload in self.workloads:
                workload.cluster = self._cluster_of(workload)
        for workload in self.workloads:
            self._write_workload_endpoints(workload)
        self._xds_version += 1
        envoy_config.write_xds(config, self.work, self.work, self._xds_version, self.local_any_host)
        self.envoy.program.wait_until(lambda: self.envoy.route_version() == str(self._xds_version), timeout,
                                      f"Envoy serving routes version {self._xds_version}")
        self.envoy.program.wait_until(self._envoy_sees_every_pod, timeout, "every ready pod in Envoy's clusters")

    def _new_pod(self, workload: Workload, index: int, rollout: int = 0) -> Pod:
        env = {**workload.env, **self.env, **self.pod_env.get((workload.service, workload.stage, index), {})}
        env["PYTHONPATH"] = python_path(REPO / "src", *self.extra_python_path)
        name = f"{workload.service}-{workload.stage}-{index}" + (f"-r{rollout}" if rollout else "")
        return Pod(name, workload.cluster, env, self.work / "logs", REPO)

    def _wait_ready(self, pods: list[Pod], timeout: float) -> None:
        for pod in pods:
            def ready(pod=pod) -> bool:
                with urllib.request.urlopen(pod.url(self.workloads[0].probe.path), timeout=2) as reply:
                    return reply.status == 200
            pod.program.wait_until(ready, timeout, "ready (/api/ping 200)")
            pod.ready = True

    def _envoy_sees_every_pod(self) -> bool:
        clusters = self.envoy.clusters()
        return all(len(clusters.get(c.name, [])) == sum(p.ready for w in self._workloads_of(c) for p in w.pods)
                   for c in self.config.clusters)

    # --- endpoints --------------------------------------------------------------------------------

    def _cluster_of(self, workload: Workload) -> str:
        """The gateway's cluster that serves a workload's traffic: a subset of its Service that selects its pods
        (production's stable), else its Service's own cluster."""
        found = [c for c in self.config.clusters if c.service_host == workload.host and c.selects(workload.labels)]
        return max(found, key=lambda c: len(c.subset_labels)).name if found else workload.cluster

    def _workloads_of(self, cluster: ir.Cluster) -> list[Workload]:
        """The workloads whose pods are endpoints of `cluster` (its Service's, of its subset)."""
        return [w for w in self.workloads if w.host == cluster.service_host and cluster.selects(w.labels)]

    def _write_workload_endpoints(self, workload: Workload) -> None:
        """Rewrite the endpoint file of every cluster a workload's pods belong to."""
        for cluster in self.config.clusters:
            if workload in self._workloads_of(cluster):
                self._write_endpoints(cluster.name)

    def _write_endpoints(self, cluster: str) -> None:
        """Rewrite one cluster's endpoint file: its pods that are ready and not terminating."""
        with self._eds_lock:
            self._eds_version += 1
            ports = [p.port for w in self._workloads_of(self.config.cluster(cluster)) for p in w.pods
                     if p.ready and not p.terminating]
            envoy_config.write_atomically(envoy_config.eds_path(self.work, cluster),
                                          envoy_config.load_assignment(cluster, ports, self._eds_version))

    def endpoints(self, cluster: str) -> list[int]:
        """Return the ports in a cluster's endpoint file now."""
        data = json.loads(envoy_config.eds_path(self.work, cluster).read_text())
        return [e["endpoint"]["address"]["socket_address"]["port_value"]
                for group in data["resources"][0]["endpoints"] for e in group["lb_endpoints"]]

    # --- what a person or a test does to it ---------------------------------------------------------

    def workload(self, stage: str, service: str | None = None) -> Workload:
        return next(w for w in self.workloads if w.stage == stage and (service is None or w.service == service))

    def rolling_restart(self, stage: str, service: str | None = None, on_step=lambda message: None) -> None:
        """Replace every pod of a stage one at a time, as a Deployment rollout with maxSurge 1, maxUnavailable 0.

        New pod started and ready (in the endpoints); the old one leaves the endpoints as a
        terminating pod does, then gets SIGTERM after the preStop sleep, and SIGKILL after
        the grace period.
        """
        workload = self.workload(stage, service)
        self._rollouts += 1
        for index, old in enumerate(list(workload.pods)):
            new = self._new_pod(workload, index, rollout=self._rollouts)
            workload.pods.append(new)
            workload.prober.watch(new)
            new.program.wait_until(lambda: new.ready and new.port in self.endpoints(workload.cluster), 120,
                                   "ready and in the endpoints")
            on_step(f"{new.name} ready on :{new.port}")
            old.terminating = True
            self._write_workload_endpoints(workload)
            time.sleep(workload.prestop_s)
            code = old.terminate(workload.grace_s)
            workload.prober.forget(old)
            workload.pods.remove(old)
            on_step(f"{old.name} on :{old.port} left the endpoints, SIGTERM after {workload.prestop_s}s, exit {code}")

    def scrape_targets(self) -> list[ScrapeTarget]:
        """Each pod's /metrics with the labels its stage's PodMonitor gives it (as the Prometheus operator would)."""
        targets = []
        for workload in self.workloads:
            by_kind = {d["kind"]: d for d in workload.docs}
            monitor, deployment = by_kind["PodMonitor"], by_kind["Deployment"]
            path = monitor["spec"]["podMetricsEndpoints"][0]["path"]
            targets += [ScrapeTarget(f"127.0.0.1:{pod.port}", pod_monitor_labels(monitor, deployment, pod.name), path)
                        for pod in workload.pods]
        return targets

    def state(self) -> dict:
        """Return what build/mesh/state.json holds: Envoy's addresses and each pod's stage, pid and port."""
        return {"listener": f"127.0.0.1:{self.port}", "envoy_admin": self.envoy.admin if self.envoy else None,
                "envoy_pid": self.envoy.program.pid if self.envoy else None,
                "pods": [{"name": p.name, "service": w.service, "stage": w.stage, "cluster": w.cluster, "pid": p.pid,
                          "port": p.port, "ready": p.ready} for w in self.workloads for p in w.pods]}

    def stop(self) -> None:
        """Stop the probers, Envoy and every pod (SIGTERM, then SIGKILL)."""
        for prober in self._probers:
            prober.stop()
        if self.envoy is not None:
            self.envoy.stop()
        pods = [pod for workload in self.workloads for pod in workload.pods]
        for pod in pods:  # SIGTERM all at once, so that their drain windows overlap
            pod.terminating = True
            pod.program.signal(signal.SIGTERM)
        for pod in pods:
            pod.program.stop(timeout=30)
