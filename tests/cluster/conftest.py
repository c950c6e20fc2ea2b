"""Fixtures for the control-plane tests: clients on the session's control plane, rendered services, scratch namespaces."""

from __future__ import annotations

import sys
import uuid
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
# The varied services are defined once, in the tooling tests.
sys.path.insert(0, str(REPO / "tests" / "tooling"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from service_files import write_values  # noqa: E402
from waiting import wait_for  # noqa: E402
from test_varied_values import VARIED  # noqa: E402

from podserve.tooling import render  # noqa: E402
from podserve.tooling.conf import load_conf  # noqa: E402


@pytest.fixture(scope="session")
def conf():
    return load_conf()


@pytest.fixture(scope="session")
def api(control_plane):
    return control_plane.api_client()


@pytest.fixture(scope="session")
def core(api):
    from kubernetes import client

    return client.CoreV1Api(api)


@pytest.fixture(scope="session")
def apps(api):
    from kubernetes import client

    return client.AppsV1Api(api)


@pytest.fixture(scope="session")
def applier(api):
    from podserve.testbed.cluster.apply import Applier

    return Applier(api, field_manager="podserve-tests")


@pytest.fixture(scope="session")
def services(tmp_path_factory, conf) -> dict[str, render.Rendered]:
    """Every service the tooling tests render: the example, the offline example, the varied ones."""
    folder = tmp_path_factory.mktemp("cluster-values")
    rendered = {"example": render.render(REPO / "value.py", conf=conf, image_tag="t"),
                "offline-example": render.render(REPO / "examples" / "offline" / "value.py", conf=conf, image_tag="t")}
    for name, changes in VARIED.items():
        rendered[name] = render.render(write_values(folder, f"{name}.py", **changes), conf=conf, image_tag="t")
    return rendered


@pytest.fixture
def scratch_namespace(core):
    """Make namespaces for one test (name prefix, labels); delete them (and what is in them) afterwards."""
    made = []

    def make(prefix: str, labels: dict | None = None) -> str:
        name = f"{prefix}-{uuid.uuid4().hex[:6]}"
        core.create_namespace({"metadata": {"name": name, "labels": labels or {}}})
        made.append(name)
        # Pods need the namespace's default ServiceAccount (the controller-manager makes it).
        wait_for(lambda: core.list_namespaced_service_account(name, field_selector="metadata.name=default").items,
                 f"the default ServiceAccount of namespace {name}")
        return name

    yield make
    for name in made:
        core.delete_namespace(name)

