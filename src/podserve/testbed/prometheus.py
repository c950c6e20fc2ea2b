"""A real Prometheus (Debian's `prometheus` package) on loopback, scraping targets with the PodMonitor's labels.

    prom = Prometheus(workdir, [ScrapeTarget("127.0.0.1:8080", {...labels...})], rule_files=[...])
    prom.start(); prom.query('up'); prom.stop()

What is simulated: Kubernetes service discovery. In a cluster the Prometheus operator turns
each PodMonitor into `kubernetes_sd_configs` plus relabelings that give every series the
labels `namespace`, `pod`, `container`, `endpoint`, `job` (<namespace>/<PodMonitor name>) and
the pod labels named in `podTargetLabels`; here the same labels are static target labels
(`pod_monitor_labels` derives them from the rendered PodMonitor and Deployment), or, against a
real cluster, a file `PodTargetFeed` keeps equal to the live PodMonitors' pods (Prometheus'
file_sd follows it as pods come and go). Prometheus still sets `instance` (the target's
address) itself, which is why our label is `model_instance`. Every scrape holds the caps every PodMonitor carries
(conf/platform.yaml monitoring: sampleLimit and labelLimit, which the operator writes as sample_limit and
label_limit): a scrape past either fails whole, so a test scraping our pods shows they stay within them.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from podserve.testbed.polling import Poller
from podserve.testbed.processes import Program, StartError, free_port
from podserve.tooling.conf import load_conf
from podserve.tooling.rollout import stable_pod_labels

#: The package `make prometheus` installs (Makefile pins the same version).
DEBIAN_PACKAGE = "prometheus"


class QueryError(RuntimeError):
    """Prometheus refused a query; the message carries its error type and text."""


@dataclass(frozen=True)
class ScrapeTarget:
    """One pod's /metrics and the target labels the PodMonitor would give its series."""

    address: str
    labels: dict[str, str]
    path: str = "/metrics"


def pod_monitor_labels(podmonitor: dict, deployment: dict, pod_name: str) -> dict[str, str]:
    """Return the target labels the Prometheus operator gives a stable pod of `deployment` (a Deployment or
    Rollout) selected by `podmonitor`.

    namespace, pod, container (the container exposing the port), endpoint (the port's name),
    job (<namespace>/<name>) and each `podTargetLabels` label copied from the pod template.
    """
    pod_labels = stable_pod_labels(deployment)
    selector = podmonitor["spec"]["selector"]["matchLabels"]
    if any(pod_labels.get(k) != v for k, v in selector.items()):
        raise ValueError(f"PodMonitor {podmonitor['metadata']['name']} does not select the Deployment's pods "
                         f"(selector {selector}, pod labels {pod_labels})")
    return pod_target_labels(podmonitor, pod_labels, deployment["spec"]["template"]["spec"], pod_name)


def pod_target_labels(podmonitor: dict, pod_labels: dict, pod_spec: dict, pod_name: str) -> dict[str, str]:
    """The target labels a PodMonitor gives one pod of its (with those labels and that spec)."""
    spec = podmonitor["spec"]
    endpoint = spec["podMetricsEndpoints"][0]["port"]
    container = next(c["name"] for c in pod_spec["containers"]
                     if any(p.get("name") == endpoint for p in c.get("ports", [])))
    namespace = podmonitor["metadata"]["namespace"]
    labels = {"namespace": namespace, "pod": pod_name, "container": container, "endpoint": endpoint,
              "job": f"{namespace}/{podmonitor['metadata']['name']}"}
    # as the operator writes them: a label name's characters Prometheus does not allow become _
    labels.update({re.sub(r"[^a-zA-Z0-9_]", "_", name): pod_labels[name] for name in spec.get("podTargetLabels", [])
                   if name in pod_labels})
    return labels


@dataclass
class Prometheus:
    """One Prometheus server with its own data folder and a free port; `start()` waits until it is ready."""

    workdir: Path
    targets: list[ScrapeTarget]
    rule_files: list[Path] = field(default_factory=list)
    scrape_interval: str = "1s"
    binary: str = "prometheus"
    port: int = 0
    program: Program | None = None
    file_targets: Path | None = None  # a file_sd file of targets (PodTargetFeed), followed as it changes

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def config(self) -> dict:
        jobs: dict[str, list[ScrapeTarget]] = {}
        for target in self.targets:
            jobs.setdefault(target.labels.get("job", "podserve"), []).append(target)
        monitoring = load_conf().platform.monitoring
        limits = {"sample_limit": monitoring.scrape_sample_limit, "label_limit": monitoring.scrape_label_limit}
        return {
            "global": {"scrape_interval": self.scrape_interval, "evaluation_interval": self.scrape_interval,
                       "scrape_timeout": self.scrape_interval},
            "rule_files": [str(p) for p in self.rule_files],
            "scrape_configs": [{"job_name": job, "metrics_path": targets[0].path, "honor_labels": False, **limits,
                                "static_configs": [{"targets": [t.address], "labels": t.labels} for t in targets]}
                               for job, targets in jobs.items()] + ([{
                                   "job_name": "pod-monitors", "honor_labels": False, **limits,
                                   "file_sd_configs": [{"files": [str(self.file_targets)], "refresh_interval": "1s"}]}]
                                   if self.file_targets else []),
        }

    def start(self, timeout: float = 60.0) -> "Prometheus":
        path = shutil.which(self.binary)
        if path is None:
            raise StartError(f"{self.binary} is not installed: Debian's `{DEBIAN_PACKAGE}` package provides it "
                             "(`make prometheus` installs the pinned version)")
        self.workdir.mkdir(parents=True, exist_ok=True)
        config = self.workdir / "prometheus.yml"
        config.write_text(yaml.safe_dump(self.config(), sort_keys=False))
        self.port = free_port()
        self.program = Program("prometheus", [
            path, f"--config.file={config}", f"--storage.tsdb.path={self.workdir / 'data'}",
            f"--web.listen-address=127.0.0.1:{self.port}", "--storage.tsdb.retention.time=1d",
            "--web.enable-lifecycle", "--log.level=warn"], self.workdir / "prometheus.log")
        self.program.wait_until(self._ready, timeout, "ready on /-/ready")
        return self

    def _ready(self) -> bool:
        with urllib.request.urlopen(self.url + "/-/ready", timeout=1) as reply:
            return reply.status == 200

    def stop(self) -> None:
        if self.program is not None:
            self.program.stop()

    def api(self, path: str, **params) -> dict:
        """GET /api/v1/<path>; return `data`, or raise QueryError with Prometheus' own message."""
        url = f"{self.url}/api/v1/{path}?{urllib.parse.urlencode(params)}"
        try:
            with urllib.request.urlopen(url, timeout=30) as reply:
                body = json.load(reply)
        except urllib.error.HTTPError as exc:
            body = json.load(exc)
        if body.get("status") != "success":
            raise QueryError(f"{body.get('errorType')}: {body.get('error')}")
        return body["data"]

    def query(self, expr: str, at: float | None = None) -> list[dict]:
        """Evaluate an instant query; return its result list (empty when nothing matched)."""
        params = {"query": expr}
        if at is not None:
            params["time"] = f"{at:.3f}"
        return self.api("query", **params)["result"]

    def query_range(self, expr: str, start: float, end: float, step: float) -> list[dict]:
        return self.api("query_range", query=expr, start=f"{start:.3f}", end=f"{end:.3f}", step=f"{step}")["result"]

    def wait_for(self, expr: str, timeout: float = 30.0) -> list[dict]:
        """Poll an instant query until it returns data; raise StartError naming it if it never does."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            result = self.query(expr)
            if result:
                return result
            time.sleep(0.5)
        raise StartError(f"Prometheus had no data for {expr!r} after {timeout:.0f}s; targets: "
                         f"{[(t['labels'].get('pod'), t['health'], t.get('lastError')) for t in self.targets_health()]}")

    def targets_health(self) -> list[dict]:
        return self.api("targets")["activeTargets"]


class PodTargetFeed(Poller):
    """Keeps a file_sd file equal to the pods the live PodMonitors of `namespaces` select (running, with an IP):
    each pod's address and port, its labels as the Prometheus operator gives them, and the metrics path."""

    def __init__(self, api_client, path: Path, namespaces: list[str], every: float = 1.0):
        from kubernetes import client

        self.core, self.objects = client.CoreV1Api(api_client), client.CustomObjectsApi(api_client)
        super().__init__(every, "pod-targets")
        self.path, self.namespaces = Path(path), namespaces
        self.written: list[dict] | None = None

    def targets(self) -> list[dict]:
        found = []
        for namespace in self.namespaces:
            monitors = self.objects.list_namespaced_custom_object("monitoring.coreos.com", "v1", namespace,
                                                                  "podmonitors").get("items") or []
            for monitor in monitors:
                selector = ",".join(f"{k}={v}" for k, v in sorted(monitor["spec"]["selector"]["matchLabels"].items()))
                endpoint = monitor["spec"]["podMetricsEndpoints"][0]
                for pod in self.core.list_namespaced_pod(namespace, label_selector=selector).items:
                    if pod.status.phase != "Running" or not pod.status.pod_ip or pod.metadata.deletion_timestamp:
                        continue
                    spec = pod.to_dict()["spec"]
                    spec = {"containers": [{"name": c["name"], "ports": c.get("ports") or []}
                                           for c in spec["containers"]]}
                    port = next(p["container_port"] for c in spec["containers"] for p in c["ports"]
                                if p.get("name") == endpoint["port"])
                    labels = pod_target_labels(monitor, dict(pod.metadata.labels or {}), spec, pod.metadata.name)
                    found.append({"targets": [f"{pod.status.pod_ip}:{port}"],
                                  "labels": dict(labels, __metrics_path__=endpoint.get("path", "/metrics"))})
        return sorted(found, key=lambda t: t["targets"][0])

    def sync(self) -> bool:
        targets = self.targets()
        if targets == self.written:
            return False
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text(json.dumps(targets))
        os.replace(tmp, self.path)
        self.written = targets
        return True

    def prepare(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
