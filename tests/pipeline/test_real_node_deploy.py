"""Our image on the real node: CI's jobs build it, the deploy tool deploys grey, the kubelet starts, probes, logs it."""

from __future__ import annotations

import json
import subprocess

import pytest

from real_node_service import REPO, RealNodeService

KUBECTL = str(REPO / ".tools" / "bin" / "kubectl")


@pytest.fixture(scope="session")
def grey_service(build_stage, control_plane, real_node, tmp_path_factory):
    service = RealNodeService(build_stage, control_plane, real_node, tmp_path_factory.mktemp("real-node"),
                              "on-real-node", "realnode1")
    service.build()
    service.let_the_node_pull()
    return service


def test_grey_deploy_starts_the_built_image_on_the_real_node_ready_by_its_probes(grey_service, real_node):
    from kubernetes import client

    try:
        run = grey_service.deploy("apply")
        print(f"grey deploy on the real node: exit {run.returncode} in {run.seconds:.1f}s")
        assert run.returncode == 0, run.output
        core = client.CoreV1Api(grey_service.plane.api_client())
        (pod,) = core.list_namespaced_pod(grey_service.namespace, label_selector=f"service={grey_service.name}").items
        assert pod.spec.node_name == real_node.name
        assert pod.spec.containers[0].image.endswith(f"/{grey_service.name}:{grey_service.commit}")
        assert all(c.ready for c in pod.status.container_statuses)
        logs = subprocess.run([KUBECTL, "logs", "-n", grey_service.namespace, pod.metadata.name, "-c", "server"],
                              capture_output=True, text=True, timeout=60, env=grey_service.plane.tool_env())
        assert logs.returncode == 0, logs.stderr
        lines = [json.loads(line) for line in logs.stdout.splitlines() if line.startswith("{")]
        assert lines, logs.stdout[-2000:]
    finally:
        grey_service.deploy("delete")
