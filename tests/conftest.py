"""Fixtures shared by every test: the repo's paths, and a tiny ONNX model made on the spot."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

# Subprocesses the tests start (the server, the render CLI) import podserve from src/ too,
# however pytest itself was started.
os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO / "src"), os.environ.get("PYTHONPATH")) if p)

# The suite runs the tools as a checkout's, also when a CI runner runs it (.ci/run): the runner's variables would
# switch them to a CI job's rules (platform_rules.run_refusal, the deploy tool's --local, image tags from
# CI_COMMIT_SHORT_SHA). A test that needs a CI job's variables sets them itself.
CI_RUNNER_VARIABLES = [name for name in os.environ if name in ("CI", "GITLAB_CI") or name.startswith("CI_")]
for name in CI_RUNNER_VARIABLES:
    del os.environ[name]


#: Tests that use what a machine has one of (the real node: one kubelet, held under its lock for a session's life;
#: the image builds the pipeline suite shares): `make test`'s workers (pytest-xdist) run them all on one worker,
#: started first since together they take the longest. Every other module is a unit of its own.
ONE_PER_MACHINE = ("tests/pipeline/", "tests/cluster/test_real_node.py")
ONE_PER_MACHINE_UNIT = "one-per-machine"


def _unit(nodeid: str) -> str:
    """The work unit of a test: ONE_PER_MACHINE's one, else its module."""
    module = nodeid.split("::")[0]
    return ONE_PER_MACHINE_UNIT if module.startswith(ONE_PER_MACHINE) else module


def pytest_collection_modifyitems(config, items):
    """Put ONE_PER_MACHINE's tests first (a stable sort: every module keeps its order)."""
    items.sort(key=lambda item: _unit(item.nodeid) != ONE_PER_MACHINE_UNIT)


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
    """xdist's scheduling by scope, with _unit's scopes (its loadgroup marks do not reach pytest 9's node ids)."""
    from xdist.scheduler import LoadScopeScheduling

    class ByUnit(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return _unit(nodeid)

    return ByUnit(config, log)


@pytest.fixture(scope="session")
def repo() -> Path:
    return REPO


def _save_affine(path: Path, batch_axis: str | int) -> Path:
    """Write the ONNX model y = 2x + 1 over float32 [batch_axis, D], D free, to `path`."""
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Mul", ["x", "two"], ["doubled"]), helper.make_node("Add", ["doubled", "one"], ["y"])],
        "affine",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch_axis, "D"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch_axis, "D"])],
        [helper.make_tensor("two", TensorProto.FLOAT, [], [2.0]), helper.make_tensor("one", TensorProto.FLOAT, [], [1.0])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return path


@pytest.fixture(scope="session")
def affine_model(tmp_path_factory) -> Path:
    """An ONNX model y = 2x + 1 over float32 [N, D], D free: cheap, and its answers are known."""
    return _save_affine(tmp_path_factory.mktemp("models") / "affine.onnx", "N")


@pytest.fixture(scope="session")
def affine_batch_of_one_model(tmp_path_factory) -> Path:
    """The same model with its batch axis fixed at 1 (float32 [1, D]), as many exported models are: onnxruntime
    refuses a run of any other batch."""
    return _save_affine(tmp_path_factory.mktemp("models") / "affine-batch-1.onnx", 1)


@pytest.fixture(scope="session")
def example_model() -> Path:
    """The real example model, fetched by `make test` (make model) before pytest starts."""
    path = REPO / "model" / "ch_ppocr_mobile_v2.0_cls_mobile.onnx"
    assert path.is_file(), "the example model is missing: run `make model` (make test does it first)"
    return path


@pytest.fixture(scope="session")
def control_plane(tmp_path_factory):
    """A real Kubernetes control plane (podserve.testbed.cluster) on free ports, set up as region hk's cluster.

    Started once per session: etcd, apiserver, controller-manager, scheduler, kwok's fake node
    pools of every region, the CRDs and the platform chart. Fails (never skips) naming the part
    and why when a binary is missing (`make cluster-binaries`) or a part does not start.
    """
    from podserve.testbed.cluster import StartError, start

    try:
        plane = start(tmp_path_factory.mktemp("control-plane"), region="hk")
    except StartError as exc:
        pytest.fail(f"the test control plane did not start: {exc}", pytrace=False)
    yield plane
    plane.stop()


@pytest.fixture(scope="session")
def istiod(control_plane, tmp_path_factory):
    """istiod (pilot-discovery, `make istiod`) against the session's control plane, once; the chart's Gateway with
    TLS left out (podserve.testbed.mesh.istiod.plaintext_gateway). Every mesh of the session is fed by it. At the
    session's end it must have had no update refused by any gateway (pilot_total_xds_rejects 0)."""
    from podserve.testbed.mesh.istiod import Istiod, plaintext_gateway
    from podserve.testbed.processes import StartError
    from podserve.tooling.conf import load_conf

    gateway = load_conf().stages["hk"].gateway
    plaintext_gateway(control_plane.api_client(), *gateway.split("/"))
    try:
        started = Istiod.start(control_plane, tmp_path_factory.mktemp("istiod"))
    except StartError as exc:
        pytest.fail(f"istiod did not start: {exc}", pytrace=False)
    yield started
    rejects = started.rejects()
    started.stop()
    assert rejects == 0, f"istiod counted {rejects} xDS updates refused by a gateway (pilot_total_xds_rejects)"


@pytest.fixture(scope="session")
def rollouts_controller(control_plane, tmp_path_factory):
    """Argo Rollouts' controller (`make argo-rollouts`) against the session's control plane, once, as the platform
    chart's ServiceAccount (its RBAC). At the session's end its log must show no request the RBAC refused."""
    from podserve.testbed.processes import StartError
    from podserve.testbed.rollouts.controller import RolloutsController

    try:
        started = RolloutsController.start(control_plane, tmp_path_factory.mktemp("argo-rollouts"))
    except StartError as exc:
        pytest.fail(f"the Argo Rollouts controller did not start: {exc}", pytrace=False)
    yield started
    # RBAC's refusal names the user ("... is forbidden: User "system:serviceaccount:..." cannot ...", quotes escaped
    # in Argo's own lines, not in client-go's), unlike the apiserver's other "forbidden" (a namespace being deleted
    # under a test's Rollout: "forbidden: unable to create new content in namespace ...")
    forbidden = started.log_lines("forbidden: User ")
    started.stop()
    assert not forbidden, "the chart's RBAC refused the controller:\n" + "\n".join(forbidden[:5])


@pytest.fixture(scope="session")
def keda(control_plane, tmp_path_factory):
    """KEDA's operator and metrics API server (`make keda`) against the session's control plane, once, the adapter
    registered as the external metrics API (podserve.testbed.keda.processes)."""
    from podserve.testbed.keda.processes import Keda
    from podserve.testbed.processes import StartError

    try:
        started = Keda.start(control_plane, tmp_path_factory.mktemp("keda"))
    except StartError as exc:
        pytest.fail(f"KEDA did not start: {exc}", pytrace=False)
    yield started
    started.stop()


@pytest.fixture(scope="session")
def real_node(control_plane, tmp_path_factory):
    """The real node (containerd, runc, kubelet, fake GPU plugin) joined to the session's control plane, once.

    The cluster suite and the pipeline suite's real-node deploys share it.
    Before its start, with its lock held, a crashed run's leftovers are planted (tests/real_node_leftovers.py):
    the start must remove them. Fails (never skips) naming what is missing (`make node-tools cluster-binaries`).
    """
    from real_node_leftovers import plant

    from podserve.testbed.cluster import StartError
    from podserve.testbed.cluster.node import RealNode

    planted = []
    try:
        node = RealNode.start(control_plane, tmp_path_factory.mktemp("real-node"),
                              after_lock=lambda: planted.extend(plant()))
    except StartError as exc:
        pytest.fail(f"the real node did not start: {exc}", pytrace=False)
    node.planted = planted
    yield node
    node.stop()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """A failed test that used the real node gets the node's own account (conditions, taints, log errors)."""
    outcome = yield
    report = outcome.get_result()
    node = getattr(item, "funcargs", {}).get("real_node")
    if report.failed and report.when == "call" and node is not None:
        report.sections.append(("the real node", node.diagnostics()))
