"""One region's gateway in front of its stages' pods, driven by istiod: render, apply, start, keep pods' status, roll, stop.

`Mesh.start()` renders each service's value.py for the region's stages (production gets `pods` pods, grey and ab
one each, unless `replicas` says otherwise) and applies its Services, VirtualServices and DestinationRules to the
control plane as the deploy tool does; the Gateway is the platform chart's, installed with the control plane (TLS
left out: istiod.plaintext_gateway). Each pod is a server process in the mesh's pod network (podnetwork.py), at its
own address, and a Pod object in the control plane (the Deployment's pod template) whose status
the mesh writes as the kubelet would (the scheduler places it on a kwok node of its pool; kwok leaves pods marked
`podserve.io/process` to the mesh): the real EndpointSlice controller turns them into EndpointSlices, istiod reads
those, the Services, the Istio objects and the pods' labels (subsets), and pushes the gateway Envoy its listeners,
routes, clusters and endpoints over xDS. Simulated: the kubelet (probing with the rendered probe's timings, restarts,
status) and the Deployment (the mesh creates and replaces the pods); real: istiod, Envoy, the control plane, our
server processes.
"""

from __future__ import annotations

import signal
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from podserve.testbed.cluster.apply import Applier
from podserve.testbed.mesh.forward import Forwarder
from podserve.testbed.mesh.gateway import Envoy, Gateway
from podserve.testbed.mesh.istiod import Istiod
from podserve.testbed.mesh.podnetwork import PodNetwork
from podserve.testbed.mesh.pods import Pod, Probe, Prober, pod_object, pod_status, python_path
from podserve.testbed.processes import StartError, poll_until
from podserve.testbed.prometheus import ScrapeTarget, pod_monitor_labels
from podserve.tooling import chart_values, provenance, render
from podserve.tooling.conf import Conf, load_conf
from podserve.tooling.rollout import stable_pod_labels, workload_of

REPO = Path(__file__).resolve().parents[4]
#: What the mesh applies of a stage's rendered objects (the rest: the Deployment's pods are the mesh's processes).
APPLIED_KINDS = ("Service", "VirtualService", "DestinationRule")
FIELD_MANAGER = "podserve-mesh"
#: How long the scheduler may take to place a pod the mesh creates.
SCHEDULE_TIMEOUT_SECONDS = 30.0


def cluster_name(host: str, port: int, subset: str = "") -> str:
    """istiod's name for the outbound cluster of a Service port (and DestinationRule subset)."""
    return f"outbound|{port}|{subset}|{host}"


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
    namespace: str
    port: int  # the container's port (the Service's targetPort `http`)
    template: dict  # the Deployment's pod template
    pods: list[Pod] = field(default_factory=list)
    prober: Prober | None = None
    labels: dict = field(default_factory=dict)  # its pods' labels (the pod template's): subsets select by them
    host: str = ""  # its Service, <name>.<namespace>.svc.cluster.local
    docs: list[dict] = field(default_factory=list)  # what render wrote for the stage


class Mesh:
    """The gateway Envoy of one region and the pods of every stage there, for `make mesh` and the tests."""

    def __init__(self, values_paths: list[Path], work: Path, *, plane, istiod: Istiod, region: str = "hk",
                 pods: int = 3, conf: Conf | None = None, stages: list[str] | None = None,
                 replicas: dict[str, int] | None = None, env: dict[str, str] | None = None,
                 pod_env: dict[tuple[str, str, int], dict] | None = None, extra_python_path: tuple[Path, ...] = (),
                 adopt: dict[tuple[str, str], list[str]] | None = None, source: provenance.Source | None = None):
        """`adopt`: {(service, stage): [pod names]}: that stage's pods are these Pod objects, already in the cluster
        (the deploy tool's, which kwok marked Running at an address no process has): the mesh runs their containers
        as its processes and reports them at its addresses, creating no Pod of its own for them. `source`: the branch
        grey is rendered from (default: none, whatever CI variables the environment holds: no mirror reaches grey;
        provenance.py)."""
        self.values_paths = [Path(p) for p in values_paths]
        self.work = Path(work)
        self.plane, self.istiod = plane, istiod
        self.region, self.production_pods = region, pods
        self.conf = conf if conf is not None else load_conf()
        self.stage_names = stages or [name for name, s in self.conf.stages.items() if s.region == region]
        self.replicas = replicas or {}
        self.env = env or {}
        self.pod_env = pod_env or {}
        self.extra_python_path = tuple(extra_python_path)
        self.adopt = adopt or {}
        self.source = source or provenance.Source()
        self._adopted: set[str] = set()
        self.workloads: list[Workload] = []
        self.objects: list[dict] = []
        self.gateway: Gateway | None = None  # the gateway pod: Envoy, its address, the live Gateway it serves
        self.network: PodNetwork | None = None
        self.envoy: Envoy | None = None
        self._forwarders: list[Forwarder] = []
        self._probers: list[Prober] = []
        self._rollouts = 0
        self._status_lock = threading.Lock()
        self._api = None

    # --- start ------------------------------------------------------------------------------------

    def render(self) -> list[dict]:
        """Render every service's stages in the region; return the objects."""
        objects = []
        for path in self.values_paths:
            rendered = render.render(path, stages=self.stage_names, conf=self.conf, image_tag="local",
                                     handler_paths=[REPO / "src", *self.extra_python_path], source=self.source)
            for stage, docs in rendered.stages.items():
                objects.extend(docs)
                self.workloads.append(self._workload(stage, docs))
        self.objects = objects
        return objects

    def _workload(self, stage: str, docs: list[dict]) -> Workload:
        by_kind = {d["kind"]: d for d in docs}
        deployment, service = workload_of(docs), by_kind["Service"]
        template = deployment["spec"]["template"]
        container = template["spec"]["containers"][0]
        env = {e["name"]: e["value"] for e in container["env"] if "value" in e}
        host = f"{service['metadata']['name']}.{service['metadata']['namespace']}.svc.cluster.local"
        port = next(p["containerPort"] for p in container["ports"] if p.get("name") == "http")
        name = deployment["metadata"]["name"]
        default = self.production_pods if self.conf.stages[stage].production else 1
        replicas = self.replicas.get(f"{name}/{stage}", self.replicas.get(stage, default))
        workload = Workload(name, stage, "", env, Probe.from_container(container),
                            container["lifecycle"]["preStop"]["sleep"]["seconds"],
                            template["spec"]["terminationGracePeriodSeconds"], replicas,
                            deployment["metadata"]["namespace"], port, template,
                            labels=stable_pod_labels(deployment), host=host, docs=docs)
        workload.cluster = self._cluster_of(workload, docs)
        return workload

    def _cluster_of(self, workload: Workload, objects: list[dict]) -> str:
        """The gateway's cluster that serves a workload's traffic: the DestinationRule subset of its Service that
        selects its pods (production's stable), else its Service's own cluster."""
        service_port = next(d for d in objects if d["kind"] == "Service")["spec"]["ports"][0]["port"]
        subsets = [s for d in objects if d["kind"] == "DestinationRule" and d["spec"]["host"] == workload.host
                   for s in d["spec"].get("subsets") or []
                   if all(workload.labels.get(k) == v for k, v in (s.get("labels") or {}).items())]
        chosen = max(subsets, key=lambda s: len(s.get("labels") or {}), default=None)
        return cluster_name(workload.host, service_port, chosen["name"] if chosen else "")

    def start(self) -> "Mesh":
        """Render, apply, start the pods and the gateway Envoy, wait until Envoy has every ready pod; return self."""
        self.work.mkdir(parents=True, exist_ok=True)
        try:
            self._start()
        except BaseException:
            self.stop()
            raise
        return self

    def _start(self) -> None:
        self._api = self.plane.api_client()
        self.render()
        self.network = PodNetwork.create()
        self.apply(self._owned_objects())
        for workload in self.workloads:
            for index in range(workload.replicas):
                workload.pods.append(self._new_pod(workload, index))
        self._wait_ready([pod for w in self.workloads for pod in w.pods], timeout=120)
        for workload in self.workloads:
            for pod in workload.pods:
                self._write_status(workload, pod)
        selector = chart_values.chart_values(self.conf, self.region)["gateways"][0]["selector"]
        self.gateway = Gateway.start(self._api, self.istiod, self.network, self.work,
                                     self.conf.stages[self.stage_names[0]].gateway, selector)
        self.envoy = self.gateway.envoy
        self.envoy.program.wait_until(self._envoy_sees_every_pod, 60, "every ready pod in Envoy's clusters")
        for workload in self.workloads:
            prober = Prober(workload.probe, lambda pod, w=workload: self._write_status(w, pod))
            for pod in workload.pods:
                prober.watch(pod)
            self._probers.append(prober)
            workload.prober = prober

    def _owned_objects(self) -> list[dict]:
        """The rendered objects of every stage but the adopted ones (those are their deploy's)."""
        return [doc for w in self.workloads if (w.service, w.stage) not in self.adopt for doc in w.docs]

    def apply(self, objects: list[dict]) -> None:
        """Server-side apply the Services, VirtualServices and DestinationRules among `objects`, as the admin."""
        applier = Applier(self._api, FIELD_MANAGER)
        for doc in objects:
            if doc.get("kind") in APPLIED_KINDS:
                applier.apply(doc)

    def update(self, objects: list[dict], until, timeout: float = 30, what: str = "Envoy running the change") -> None:
        """Apply `objects` (every object of the mesh's stages, as render writes them, changed) as the deploy tool
        applies a change, and wait until `until(envoy)` says Envoy runs what istiod pushed for it."""
        self.apply(objects)
        self.objects = objects
        poll_until(lambda: until(self.envoy), what, timeout)

    def _new_pod(self, workload: Workload, index: int, rollout: int = 0) -> Pod:
        from kubernetes import client

        env = {**workload.env, **self.env, **self.pod_env.get((workload.service, workload.stage, index), {})}
        env["PYTHONPATH"] = python_path(REPO / "src", *self.extra_python_path)
        env["PATH"] = "/usr/bin:/bin"
        adopted = self.adopt.get((workload.service, workload.stage), [])
        name = f"{workload.service}-{workload.stage}-{index}" + (f"-r{rollout}" if rollout else "")
        if not rollout and index < len(adopted):
            name = adopted[index]
            self._adopted.add(name)
        pod = Pod(name, workload.cluster, env, self.work / "logs", REPO, self.network.new_address(), workload.port,
                  inside=self.network.inside)
        if name not in self._adopted:
            core = client.CoreV1Api(self._api)
            core.create_namespaced_pod(workload.namespace,
                                       pod_object(pod, workload.template, workload.namespace, workload.labels))
            # the scheduler places it (a kwok node of its pool; kwok leaves it to the mesh): its status comes after
            poll_until(lambda: core.read_namespaced_pod(name, workload.namespace).spec.node_name,
                       f"the scheduler placing pod {workload.namespace}/{name}", SCHEDULE_TIMEOUT_SECONDS, every=0.05)
        return pod

    def _write_status(self, workload: Workload, pod: Pod) -> None:
        """Write `pod`'s status to its Pod object, as the kubelet reports it (Running, Ready as probed)."""
        from kubernetes import client
        from kubernetes.client import ApiException

        container = workload.template["spec"]["containers"][0]["name"]
        with self._status_lock:
            try:
                # a merge patch: its lists (podIPs, conditions) replace the Pod's, whoever wrote them (an adopted pod's
                # kwok status), where a strategic merge would add to them
                client.CoreV1Api(self._api).patch_namespaced_pod_status(
                    pod.name, workload.namespace, pod_status(pod, container),
                    _content_type="application/merge-patch+json")
            except ApiException as exc:
                if exc.status != 404:  # a pod the mesh deleted meanwhile
                    raise

    def _wait_ready(self, pods: list[Pod], timeout: float) -> None:
        for pod in pods:
            def ready(pod=pod) -> bool:
                with urllib.request.urlopen(pod.url(self.workloads[0].probe.path), timeout=2) as reply:
                    return reply.status == 200
            pod.program.wait_until(ready, timeout, "ready (/api/ping 200)")
            pod.ready = True

    def _envoy_sees_every_pod(self) -> bool:
        return all(set(self.endpoints(w.cluster)) == {p.address for p in w.pods if p.ready and not p.terminating}
                   for w in self.workloads)

    # --- what a person or a test reads ------------------------------------------------------------

    @property
    def url(self) -> str:
        """Where callers reach the gateway's HTTPS server's routes (TLS left out): http://<gateway>:443."""
        return self.gateway.url

    @property
    def plaintext_url(self) -> str:
        """The gateway's port-80 server as rendered (httpsRedirect: every request answered 301)."""
        return self.gateway.plaintext_url

    def gateway_problems(self) -> list[str]:
        """What a stock Envoy fed by istiod must never show: an update it refused (any update_rejected counter), an
        Istio extension in its config (a type URL istio.*: istio-proxy's, not Envoy's). Empty when none."""
        if self.envoy is None:
            return []
        problems = [f"Envoy refused updates: {name} = {count}" for name, count in
                    sorted(self.envoy.rejected_updates().items())]
        problems += [f"Envoy's config holds an Istio extension: type.googleapis.com/{url}"
                     for url in self.envoy.istio_type_urls()]
        return problems

    def endpoints(self, cluster: str) -> list[str]:
        """The addresses Envoy has for a cluster now (what istiod sent: ready, not terminating)."""
        return sorted(self.envoy.hosts(cluster)) if self.envoy else []

    # --- what a person or a test does to it ---------------------------------------------------------

    def workload(self, stage: str, service: str | None = None) -> Workload:
        return next(w for w in self.workloads if w.stage == stage and (service is None or w.service == service))

    def take_template(self, stage: str, docs: list[dict], service: str | None = None) -> Workload:
        """Take a stage's re-rendered objects `docs` (another branch's render, say) as its workload's: its next pods
        (a rolling_restart) get their template and labels, and its traffic cluster is the one that selects them."""
        workload = self.workload(stage, service)
        deployment = workload_of(docs)
        workload.template, workload.labels = deployment["spec"]["template"], stable_pod_labels(deployment)
        workload.cluster = self._cluster_of(workload, docs)
        return workload

    def rolling_restart(self, stage: str, service: str | None = None, on_step=lambda message: None) -> None:
        """Replace every pod of a stage one at a time, as a Deployment rollout with maxSurge 1, maxUnavailable 0.

        New pod started and ready (in Envoy's endpoints); the old one is deleted (its endpoint turns terminating and
        istiod drops it), gets SIGTERM after the preStop sleep, SIGKILL after the grace period, and its Pod object goes
        once it has exited, as the kubelet confirms a deletion.
        """
        workload = self.workload(stage, service)
        self._rollouts += 1
        for index, old in enumerate(list(workload.pods)):
            new = self._new_pod(workload, index, rollout=self._rollouts)
            workload.pods.append(new)
            workload.prober.watch(new)
            new.program.wait_until(lambda: new.ready and new.address in self.endpoints(workload.cluster), 120,
                                   "ready and in Envoy's endpoints")
            on_step(f"{new.name} ready at {new.address}")
            old.terminating = True
            self._delete_pod(workload, old, grace=int(workload.grace_s))
            time.sleep(workload.prestop_s)
            code = old.terminate(workload.grace_s)
            workload.prober.forget(old)
            workload.pods.remove(old)
            self._delete_pod(workload, old, grace=0)
            on_step(f"{old.name} at {old.address} left the endpoints, SIGTERM after {workload.prestop_s}s, exit {code}")

    def _delete_pod(self, workload: Workload, pod: Pod, grace: int) -> None:
        from kubernetes import client
        from kubernetes.client import ApiException

        try:
            client.CoreV1Api(self._api).delete_namespaced_pod(pod.name, workload.namespace,
                                                              grace_period_seconds=grace)
        except ApiException as exc:
            if exc.status != 404:
                raise

    def scrape_targets(self) -> list[ScrapeTarget]:
        """Each pod's /metrics with the labels its stage's PodMonitor gives it (as the Prometheus operator would)."""
        targets = []
        for workload in self.workloads:
            by_kind = {d["kind"]: d for d in workload.docs}
            monitor, deployment = by_kind["PodMonitor"], workload_of(workload.docs)
            path = monitor["spec"]["podMetricsEndpoints"][0]["path"]
            targets += [ScrapeTarget(f"{pod.address}:{pod.port}", pod_monitor_labels(monitor, deployment, pod.name),
                                     path) for pod in workload.pods]
        return targets

    def state(self) -> dict:
        """Return what build/mesh/state.json holds: Envoy's addresses and each pod's stage, pid and address."""
        return {"gateway": self.url, "gateway_port_80": self.plaintext_url,
                "envoy_admin": self.envoy.admin if self.envoy else None,
                "envoy_pid": self.envoy.program.pid if self.envoy else None,
                "istiod_debug": f"http://127.0.0.1:{self.istiod.http_port}/debug",
                "pods": [{"name": p.name, "service": w.service, "stage": w.stage, "cluster": w.cluster, "pid": p.pid,
                          "address": f"{p.address}:{p.port}", "ready": p.ready} for w in self.workloads for p in w.pods]}

    def forward(self, port: int) -> int:
        """Forward 127.0.0.1:`port` (0: a free one) to the gateway's HTTPS server's stand-in; return the port."""
        forwarder = Forwarder.tcp(("127.0.0.1", port), (self.gateway.address, self.gateway.server_port("HTTPS")))
        self._forwarders.append(forwarder)
        return forwarder.port

    def stop(self) -> None:
        """Stop the probers, Envoy and every pod (SIGTERM, then SIGKILL); delete what the mesh made in the cluster."""
        for prober in self._probers:
            prober.stop()
        if self.gateway is not None:
            self.gateway.stop()
        pods = [(workload, pod) for workload in self.workloads for pod in workload.pods]
        for _, pod in pods:  # SIGTERM all at once, so that their drain windows overlap
            pod.terminating = True
            pod.program.signal(signal.SIGTERM)
        for _, pod in pods:
            pod.program.stop(timeout=30)
        for forwarder in self._forwarders:
            forwarder.stop()
        if self._api is not None:
            self._clean_cluster(pods)
        if self.network is not None:
            self.network.remove()

    def _clean_cluster(self, pods: list) -> None:
        from kubernetes import dynamic
        from kubernetes.client import ApiException

        resources = dynamic.DynamicClient(self._api).resources
        try:
            for workload, pod in pods:
                if pod.name not in self._adopted:  # an adopted pod is its Deployment's to delete
                    self._delete_pod(workload, pod, grace=0)
            for doc in self._owned_objects():
                if doc.get("kind") in APPLIED_KINDS:
                    kind = resources.get(api_version=doc["apiVersion"], kind=doc["kind"])
                    try:
                        kind.delete(name=doc["metadata"]["name"], namespace=doc["metadata"]["namespace"])
                    except ApiException as exc:
                        if exc.status != 404:
                            raise
        except ApiException:
            pass  # the control plane may be gone first (the session's end)
