"""What a platform cluster has before services deploy: fake GPU node pools, the CRDs, the platform chart.

The node pools are those conf/regions.yaml declares for every region (kwok runs them): labels
from each pool's node_selector plus the region's topology label, taints implied by the pool's
tolerations, allocatable as declared with the region's own GPU resource. The CRDs are the
ones we emit objects for: Istio's from the istio module istiod is built from (`make istiod`: its
crd-all.gen.yaml, beside pilot-discovery in the shared cache), Argo Rollouts' from its module (`make
argo-rollouts`, beside the controller), KEDA's from its module (`make keda`, beside the operator),
prometheus-operator's from ../shared/schemas/crds. The
chart is charts/podserve-platform, installed with the real helm (.tools/bin/helm) and the
region's values (podserve.tooling.chart_values).
"""

from __future__ import annotations

import re
import subprocess
import time
from pathlib import Path

import yaml

from podserve.testbed.cluster import versions
from podserve.testbed.processes import StartError, built, poll_until
from podserve.tooling.chart_values import chart_values
from podserve.tooling.conf import Conf, Region, load_conf

CRDS = versions.REPO.parent / "shared" / "schemas" / "crds"
#: Where the kinds we emit are written: a CRD is installed when one of these names its kind.
TEMPLATE_FOLDERS = (versions.REPO / "templates", versions.REPO / "charts" / "podserve-platform" / "templates")
CHART = versions.REPO / "charts" / "podserve-platform"
HELM = versions.REPO / ".tools" / "bin" / "helm"
RELEASE = "podserve-platform"
REGION_LABEL = "topology.kubernetes.io/region"
FAKE_NODE_LABEL = {"type": "kwok"}  # on every node kwok runs, none other
#: Nodes per pool: more than one, so spreading and "any node of the pool" mean something.
NODES_PER_POOL = 2
#: Namespaces Istio and Prometheus create in a real cluster before the chart goes in.
PLATFORM_NAMESPACES = ("istio-system", "monitoring")
READY_TIMEOUT_SECONDS = 60.0


def gpu_resources(region: Region, gpus: int) -> dict[str, str]:
    """The extended resources a node with `gpus` GPUs (or MIG slices) of `region` advertises."""
    if gpus == 0:
        return {}
    resources = {region.gpu.resource: str(gpus)}
    if region.gpu.memory_resource:  # HAMi: GPU memory in MiB across the node's GPUs
        resources[region.gpu.memory_resource] = str(gpus * region.gpu.memory_gib * 1024)
    return resources


def taints_for(tolerations: list[dict]) -> list[dict]:
    """The taints a pool's tolerations imply (a pool is tainted with what its pods must tolerate)."""
    taints = []
    for toleration in tolerations:
        taint = {"key": toleration["key"], "effect": toleration.get("effect", "NoSchedule")}
        if toleration.get("operator", "Equal") == "Equal" and toleration.get("value"):
            taint["value"] = toleration["value"]
        taints.append(taint)
    return taints


def fake_nodes(conf: Conf) -> list[dict]:
    """Node objects for every pool of every region, status (allocatable, capacity) included."""
    nodes = []
    for region_name, region in sorted(conf.regions.items()):
        for pool_name in ("gpu", "cpu"):
            pool = getattr(region.node_pools, pool_name)
            allocatable = {"cpu": str(pool.allocatable.cpu), "memory": str(pool.allocatable.memory),
                           "pods": "110", "ephemeral-storage": "500Gi",
                           **gpu_resources(region, pool.allocatable.gpus)}
            for index in range(NODES_PER_POOL):
                name = f"{region_name}-{pool_name}-{index}"
                nodes.append({
                    "apiVersion": "v1", "kind": "Node",
                    "metadata": {"name": name, "annotations": {"kwok.x-k8s.io/node": "fake"},
                                 "labels": {**pool.node_selector, REGION_LABEL: region_name,
                                            "kubernetes.io/hostname": name, "kubernetes.io/os": "linux",
                                            "kubernetes.io/arch": "amd64", **FAKE_NODE_LABEL}},
                    "spec": {"taints": taints_for(pool.tolerations)},
                    "status": {"allocatable": allocatable, "capacity": allocatable},
                })
    return nodes


def emitted_kinds() -> set[str]:
    """Every kind our templates and the platform chart write (`kind: X` lines)."""
    return {match for folder in TEMPLATE_FOLDERS for path in folder.iterdir() if path.is_file()
            for match in re.findall(r"^\s*kind:\s*([A-Za-z]+)\s*$", path.read_text(), re.MULTILINE)}


def crd_documents(folder: Path = CRDS, kinds: set[str] | None = None) -> list[dict]:
    """The CRDs in `folder`'s YAML files, only those of `kinds` when given."""
    if not folder.is_dir():
        raise StartError(f"CRDs: {folder} is missing (the shared schemas are ../shared/schemas/crds from the repo)")
    return [doc for path in sorted(folder.glob("*.yaml"))
            for doc in yaml.load_all(path.read_text(), Loader=yaml.CSafeLoader)
            if doc and doc.get("kind") == "CustomResourceDefinition"
            and (kinds is None or doc["spec"]["names"]["kind"] in kinds)]


def istio_crds(kinds: set[str], binaries: Path | None = None) -> list[dict]:
    """Istio's CRDs of `kinds` as the istio module ships them (the file `make istiod` puts beside pilot-discovery)."""
    from podserve.testbed.mesh import build

    path = built((binaries or build.binaries_dir()) / build.CRD_FILE, "Istio's CRDs (from the istio module)", "istiod")
    return [doc for doc in yaml.load_all(path.read_text(), Loader=yaml.CSafeLoader)
            if doc and doc.get("kind") == "CustomResourceDefinition" and _is_istio(doc)
            and doc["spec"]["names"]["kind"] in kinds]


def _is_istio(crd: dict) -> bool:
    return crd["spec"]["group"].endswith(".istio.io")


def argo_crds(tools: Path | None = None) -> list[dict]:
    """Argo Rollouts' CRDs (all five: the controller watches every kind) as its module ships them (`make
    argo-rollouts` copies them beside the controller)."""
    from podserve.testbed.rollouts import build

    return _engine_crds(build.ENGINE, "Argo Rollouts' CRDs (from the argo-rollouts module)", tools)


def _engine_crds(engine, what: str, tools: Path | None) -> list[dict]:
    """The CRDs an engine's build copied beside its binaries (podserve.testbed.engine_build)."""
    paths = [built(path, what, engine.name) for path in engine.crd_paths(tools)]
    return [doc for path in paths for doc in yaml.load_all(path.read_text(), Loader=yaml.CSafeLoader)
            if doc and doc.get("kind") == "CustomResourceDefinition"]


def _is_argo(crd: dict) -> bool:
    return crd["spec"]["group"] == "argoproj.io"


def keda_crds(tools: Path | None = None) -> list[dict]:
    """KEDA's CRDs (all six: the operator watches every kind) as its module ships them (`make keda` copies them beside
    the operator)."""
    from podserve.testbed.keda import build

    return _engine_crds(build.ENGINE, "KEDA's CRDs (from the keda module)", tools)


def _is_keda(crd: dict) -> bool:
    return crd["spec"]["group"].endswith("keda.sh")


def platform_crds() -> list[dict]:
    """The CRDs of every kind we emit objects of: Istio's from the istio module, Argo Rollouts' and KEDA's from
    theirs, the others from the shared schemas."""
    kinds = emitted_kinds()
    return [crd for crd in crd_documents(CRDS, kinds) if not (_is_istio(crd) or _is_argo(crd) or _is_keda(crd))] + \
        istio_crds(kinds) + argo_crds() + keda_crds()


def _create(call, what: str, **kwargs) -> None:
    from kubernetes.client.exceptions import ApiException

    try:
        call(_preload_content=False, **kwargs)
    except ApiException as exc:
        if exc.status != 409:
            raise StartError(f"{what}: the apiserver refused it ({exc.status}): {exc.body}") from exc


def set_up(plane) -> None:
    """Create the node pools, CRDs and platform namespaces, then install the chart with the region's values."""
    from kubernetes import client

    t0 = time.monotonic()
    conf = load_conf()
    api = plane.api_client()
    core = client.CoreV1Api(api)
    for node in fake_nodes(conf):
        _create(core.create_node, f"node {node['metadata']['name']}", body=node)
    extensions = client.ApiextensionsV1Api(api)
    crds = platform_crds()  # the CRDs we emit objects of (Istio, Argo Rollouts, KEDA, prometheus-operator)
    for crd in crds:
        _create(extensions.create_custom_resource_definition, f"CRD {crd['metadata']['name']}", body=crd)
    plane.timings["nodes, CRDs"] = round(time.monotonic() - t0, 2)
    for namespace in PLATFORM_NAMESPACES:
        _create(core.create_namespace, f"namespace {namespace}", body={"metadata": {"name": namespace}})
    # The Gateways' namespaces (istio-ingress): where Istio's ingress gateway runs.
    for gateway in chart_values(conf, plane.region)["gateways"]:
        _create(core.create_namespace, f"namespace {gateway['namespace']}",
                body={"metadata": {"name": gateway["namespace"]}})
    _wait(lambda: _established(extensions, {crd["metadata"]["name"] for crd in crds}), "CRDs Established")
    plane.timings["CRDs established"] = round(time.monotonic() - t0, 2)
    install_chart(plane, conf)
    plane.timings["chart installed"] = round(time.monotonic() - t0, 2)


def create_crds(extensions, folder: Path) -> None:
    """Create the CRDs of `folder` and wait until the apiserver serves them all."""
    crds = crd_documents(folder)
    for crd in crds:
        _create(extensions.create_custom_resource_definition, f"CRD {crd['metadata']['name']}", body=crd)
    _wait(lambda: _established(extensions, {crd["metadata"]["name"] for crd in crds}), f"CRDs of {folder} Established")


def _established(extensions, names: set[str]) -> bool:
    import json

    items = json.loads(extensions.list_custom_resource_definition(_preload_content=False).data)["items"]
    done = {item["metadata"]["name"] for item in items
            if any(c["type"] == "Established" and c["status"] == "True"
                   for c in (item.get("status") or {}).get("conditions") or [])}
    return names <= done


def _wait(ready, what: str, timeout: float = READY_TIMEOUT_SECONDS) -> None:
    try:
        poll_until(ready, what, timeout)
    except TimeoutError as exc:
        raise StartError(str(exc)) from None


def install_chart(plane, conf: Conf) -> None:
    """`helm upgrade --install` the platform chart with the region's values, as the platform team does."""
    if not HELM.is_file():
        raise StartError(f"platform chart: {HELM} is missing; run `make tools`")
    values = plane.workdir / f"values-{plane.region}.yaml"
    values.write_text(yaml.safe_dump(chart_values(conf, plane.region)))
    done = subprocess.run([str(HELM), "upgrade", "--install", RELEASE, str(CHART), "--namespace", "default",
                           "-f", str(values), "--kubeconfig", str(plane.kubeconfig)],
                          capture_output=True, text=True, timeout=120, env=plane.tool_env())
    if done.returncode != 0:
        raise StartError(f"platform chart: helm install failed ({done.returncode}):\n{done.stdout}{done.stderr}")


#: The ConfigMap (and its key) the pod policies read the region's registries from (chart_values.pod_limits).
LIMITS_CONFIGMAP, REGISTRIES_KEY = ("podserve-system", "podserve-limits"), "registries"


def allow_registry(plane, registry: str) -> None:
    """List `registry` among the region's registries the admission policy podserve-images admits images from, beside
    the chart's (as the platform team lists a registry of the region). The pipeline's checkouts name the local registry
    in their conf (podserve.testbed.image.pipeline): the cluster then admits what they build, as the region's
    cluster admits what its registry holds."""
    from kubernetes import client

    core = client.CoreV1Api(plane.api_client())
    namespace, name = LIMITS_CONFIGMAP
    listed = core.read_namespaced_config_map(name, namespace).data[REGISTRIES_KEY].split(",")
    if registry not in listed:
        core.patch_namespaced_config_map(name, namespace, {"data": {REGISTRIES_KEY: ",".join([*listed, registry])}})


#: Taints the node-lifecycle controller manages on a node that is not (yet) Ready.
LIFECYCLE_TAINTS = ("node.kubernetes.io/not-ready", "node.kubernetes.io/unreachable")


def wait_until_ready(plane) -> None:
    """Wait until every fake node is Ready and each chart namespace has its default ServiceAccount."""
    import json

    from kubernetes import client

    t0 = time.monotonic()
    core = client.CoreV1Api(plane.api_client())
    expected = len(fake_nodes(load_conf()))

    def nodes_ready() -> bool:
        # Ready, and the node-lifecycle controller has lifted the not-ready taint it puts on new nodes:
        # until then the scheduler refuses every pod there.
        items = json.loads(core.list_node(_preload_content=False).data)["items"]
        ready = [n for n in items if any(c["type"] == "Ready" and c["status"] == "True"
                                         for c in (n.get("status") or {}).get("conditions") or [])
                 and not any(t["key"] in LIFECYCLE_TAINTS for t in (n.get("spec") or {}).get("taints") or [])]
        return len(ready) >= expected

    def service_accounts() -> bool:
        namespaces = [ns["name"] for ns in chart_values(load_conf(), plane.region)["namespaces"]]
        items = json.loads(core.list_service_account_for_all_namespaces(
            field_selector="metadata.name=default", _preload_content=False).data)["items"]
        return set(namespaces) <= {sa["metadata"]["namespace"] for sa in items}

    _wait(nodes_ready, "kwok: every fake node Ready")
    _wait(service_accounts, "kube-controller-manager: default ServiceAccounts in the chart's namespaces")
    plane.timings["nodes ready"] = round(time.monotonic() - t0, 2)
