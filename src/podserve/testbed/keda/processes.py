"""KEDA (built by build.py) as plain processes against a control plane: its operator and its metrics API server,
registered with the apiserver's aggregation layer as the external metrics API.

    keda = Keda.start(plane, work)            # operator + adapter, the APIService Available
    keda.external_metric("ns", "s0-prometheus", "scaledobject.keda.sh/name=svc")   # through the apiserver
    keda.stop()

The operator reconciles ScaledObjects into HPAs and serves the scalers' values over gRPC (mutual TLS, certificates
from the cluster's CA in <work>/certs as KEDA's ca.crt, tls.crt and tls.key: cert rotation off, as it would patch the
APIService); the adapter serves external.metrics.k8s.io/v1beta1 from them. The apiserver reaches the adapter through
a Service: the test cluster has no kube-proxy and EndpointSlices refuse 127.0.0.1, so the Service is an ExternalName
for localhost on the adapter's free port, and the adapter's serving certificate names
<service>.<namespace>.svc as the aggregator checks. Both run with the admin's kubeconfig (KEDA's own RBAC is its
chart's, not the platform chart's). Every port is a free one on 127.0.0.1.
"""

from __future__ import annotations

import base64
import json
import shutil
import urllib.request
from pathlib import Path

from podserve.testbed.keda import build
from podserve.testbed.processes import Program, StartError, built, free_port

NAMESPACE = "keda"
METRICS_SERVICE = "keda-metrics-apiserver"
OPERATOR_SERVICE = "keda-operator"
EXTERNAL_METRICS = ("external.metrics.k8s.io", "v1beta1")
API_SERVICE = f"{EXTERNAL_METRICS[1]}.{EXTERNAL_METRICS[0]}"
START_TIMEOUT_SECONDS = 90.0


class Keda:
    """KEDA's operator and adapter processes and how to reach them."""

    def __init__(self, plane, operator: Program, adapter: Program, health_port: int, metrics_port: int):
        self.plane, self.operator, self.adapter, self.health_port = plane, operator, adapter, health_port
        #: The operator's Prometheus endpoint (plain HTTP on 127.0.0.1: keda_scaler_metrics_value and the rest).
        self.metrics_port = metrics_port

    @classmethod
    def start(cls, plane, work: Path, binaries: Path | None = None) -> "Keda":
        """Start both against `plane`, register the adapter, and wait until the APIService is Available."""
        binaries = binaries or build.ENGINE.binaries_dir()
        operator_binary = built(binaries / build.OPERATOR, "keda-operator", "keda")
        adapter_binary = built(binaries / build.ADAPTER, "keda-adapter", "keda")
        work = Path(work)
        certs = work / "certs"
        certs.mkdir(parents=True, exist_ok=True)
        names = tuple(f"{service}.{NAMESPACE}.svc" for service in (METRICS_SERVICE, OPERATOR_SERVICE))
        pair = plane.authority.issue("tls", "keda", server=True, client=True, folder=certs, names=names)
        shutil.copyfile(plane.ca_path, certs / "ca.crt")
        _ensure_namespace(plane)
        grpc, metrics, health, secure, adapter_metrics = (free_port() for _ in range(5))
        env = {"PATH": "/usr/bin:/bin", "HOME": str(work), "KUBECONFIG": str(plane.kubeconfig), "WATCH_NAMESPACE": "",
               "KEDA_CLUSTER_OBJECT_NAMESPACE": NAMESPACE, "POD_NAMESPACE": NAMESPACE, "POD_NAME": "keda-operator"}
        operator = Program("keda-operator", [
            "setpriv", "--pdeathsig", "KILL", "--", operator_binary, "--leader-elect=false",
            f"--metrics-bind-address=127.0.0.1:{metrics}", f"--health-probe-bind-address=127.0.0.1:{health}",
            f"--metrics-service-bind-address=127.0.0.1:{grpc}", f"--cert-dir={certs}", f"--ca-dir={certs}",
            "--enable-cert-rotation=false", "--enable-webhook-patching=false", "--enable-apiservice-patching=false",
            "--zap-encoder=console"], work / "keda-operator.log", env=env, cwd=work)
        adapter = None
        try:
            operator.wait_until(lambda: _ok(f"http://127.0.0.1:{health}/healthz"), START_TIMEOUT_SECONDS,
                                "/healthz ok")
            adapter = Program("keda-adapter", [
                "setpriv", "--pdeathsig", "KILL", "--", adapter_binary, f"--secure-port={secure}",
                "--bind-address=127.0.0.1", f"--tls-cert-file={pair.cert}", f"--tls-private-key-file={pair.key}",
                f"--cert-dir={certs}", f"--metrics-service-address=127.0.0.1:{grpc}", f"--port={adapter_metrics}",
                f"--lister-kubeconfig={plane.kubeconfig}", f"--authentication-kubeconfig={plane.kubeconfig}",
                f"--authorization-kubeconfig={plane.kubeconfig}", "--zap-encoder=console"],
                work / "keda-adapter.log", env=env, cwd=work)
            keda = cls(plane, operator, adapter, health, metrics)
            keda._register(secure)
            adapter.wait_until(keda.available, START_TIMEOUT_SECONDS, f"APIService {API_SERVICE} Available")
        except BaseException:
            for program in (adapter, operator):
                if program is not None:
                    program.stop()
            raise
        return keda

    def _register(self, port: int) -> None:
        """The adapter's Service (ExternalName localhost, its port) and the APIService naming it, CA pinned."""
        from kubernetes import client
        from kubernetes.client.exceptions import ApiException

        api = self.plane.api_client()
        service = {"metadata": {"name": METRICS_SERVICE, "namespace": NAMESPACE},
                   "spec": {"type": "ExternalName", "externalName": "localhost",
                            "ports": [{"name": "https", "port": port, "targetPort": port}]}}
        ca = base64.b64encode(Path(self.plane.ca_path).read_bytes()).decode()
        registration = {"apiVersion": "apiregistration.k8s.io/v1", "kind": "APIService",
                        "metadata": {"name": API_SERVICE},
                        "spec": {"group": EXTERNAL_METRICS[0], "version": EXTERNAL_METRICS[1], "caBundle": ca,
                                 "groupPriorityMinimum": 100, "versionPriority": 100,
                                 "service": {"name": METRICS_SERVICE, "namespace": NAMESPACE, "port": port}}}
        core = client.CoreV1Api(api)
        try:
            core.create_namespaced_service(NAMESPACE, service)
        except ApiException as exc:
            if exc.status != 409:
                raise StartError(f"KEDA's Service: the apiserver refused it ({exc.status}): {exc.body}") from exc
            core.replace_namespaced_service(METRICS_SERVICE, NAMESPACE, {
                **service, "metadata": {**service["metadata"], "resourceVersion":
                                        core.read_namespaced_service(METRICS_SERVICE, NAMESPACE).metadata.resource_version}})
        registrations = client.ApiregistrationV1Api(api)
        try:
            registrations.create_api_service(registration)
        except ApiException as exc:
            if exc.status != 409:
                raise StartError(f"KEDA's APIService: the apiserver refused it ({exc.status}): {exc.body}") from exc
            registrations.patch_api_service(API_SERVICE, {"spec": registration["spec"]})

    def available(self) -> bool:
        """The aggregator's own verdict: the APIService's Available condition is True."""
        from kubernetes import client

        status = client.ApiregistrationV1Api(self.plane.api_client()).read_api_service_status(API_SERVICE).status
        return any(c.type == "Available" and c.status == "True" for c in (status.conditions or []))

    def external_metric(self, namespace: str, metric: str, selector: str) -> list[dict]:
        """The external metrics API's items for `metric` in `namespace` (the label selector KEDA's HPA sends),
        asked of the apiserver, which proxies to the adapter."""
        api = self.plane.api_client()
        group, version = EXTERNAL_METRICS
        method, url, headers, _, _ = api.param_serialize(
            "GET", f"/apis/{group}/{version}/namespaces/{namespace}/{metric}",
            query_params=[("labelSelector", selector)], header_params={"Accept": "application/json"},
            auth_settings=["BearerToken"])
        response = api.call_api(method, url, header_params=headers)
        text = response.read()
        if response.status != 200:
            raise LookupError(f"external metric {namespace}/{metric}: {response.status} {text!r}")
        return json.loads(text)["items"]

    def log_lines(self, word: str) -> list[str]:
        return [line for program in (self.operator, self.adapter)
                for line in program.log_tail(100000).splitlines() if word in line]

    def stop(self) -> None:
        for program in (self.adapter, self.operator):
            program.stop(timeout=10)


def _ensure_namespace(plane) -> None:
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException

    try:
        client.CoreV1Api(plane.api_client()).create_namespace({"metadata": {"name": NAMESPACE}})
    except ApiException as exc:
        if exc.status != 409:
            raise StartError(f"namespace {NAMESPACE}: the apiserver refused it ({exc.status}): {exc.body}") from exc


def _ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as reply:  # noqa: S310 (loopback)
            return reply.status == 200
    except OSError:
        return False
