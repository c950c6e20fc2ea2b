"""The mesh tests' gateway: a real Envoy fed by the real istiod from the rendered objects, in front of real server
processes.

One mesh for the whole suite (starting pods is what costs): services `test` and `test-2`
side by side in region hk, each with its grey, ab and production stage; `test` runs three
production pods. Pods serve the tiny affine model with `mesh_handlers.Switchable`, which a
test slows down or breaks per pod. The platform's conf/ is copied with shorter probe,
preStop and outlier-detection times so that the suite stays short; every figure the tests
use is read back from the rendered objects, never assumed. istiod and the control plane are the session's
(tests/conftest.py): every Envoy of the session is fed by the one istiod. The mesh stops after the last test of this
folder, not at the session's end: its Pods hold places in the team's namespaces (the preview quota's 8 pods) that
later suites' deploys need.
"""

from __future__ import annotations

import pytest

from pathlib import Path

from podserve.testbed.mesh.mesh import Mesh
from podserve.tooling.conf import load_conf

from mesh_setup import HERE, PRODUCTION_PODS, RUNTIME_TESTS, SERVICES, fast_conf_dir, stop_checked, write_values


@pytest.fixture(scope="session")
def mesh(tmp_path_factory, affine_model, control_plane, istiod) -> Mesh:
    work = tmp_path_factory.mktemp("mesh")
    conf = load_conf(fast_conf_dir(work))
    paths = [write_values(work, service_name=name) for name in SERVICES]
    replicas = {"test/hk": PRODUCTION_PODS, "test-2/hk": 1}
    pod_env = {}
    for service in SERVICES:
        for stage in ("grey", "ab", "hk"):
            for index in range(replicas.get(f"{service}/{stage}", 1)):
                folder = work / "switch" / f"{service}-{stage}-{index}"
                folder.mkdir(parents=True)
                pod_env[(service, stage, index)] = {"SWITCH_DIR": str(folder)}
    started = Mesh(paths, work, plane=control_plane, istiod=istiod, region="hk", conf=conf, replicas=replicas,
                   env={"PODSERVE_MODEL_PATH": str(affine_model)}, pod_env=pod_env,
                   extra_python_path=(HERE, RUNTIME_TESTS))
    started.start()
    _running.append(started)
    yield started
    _stop()


_running: list[Mesh] = []


def _stop() -> None:
    while _running:
        stop_checked(_running.pop())


def pytest_runtest_teardown(item, nextitem):
    """Stop the folder's mesh once its last test has run (the next test, if any, is another folder's)."""
    if _running and (nextitem is None or Path(nextitem.path).parent != HERE):
        _stop()
