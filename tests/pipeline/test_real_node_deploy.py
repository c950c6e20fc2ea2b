"""Our image on the real node: CI's jobs build it, the deploy tool deploys grey, the kubelet starts, probes, logs it.

Then the four failures as the kubelet reports them (no podserve.io/simulate annotation), each from a
recipe here: a handler in the test's image (RECIPES, added to the checkout's src/ before CI's
service-image job builds it, so one build serves every case) chosen by the rendered PODSERVE_HANDLER,
or a tag never pushed. The deploy tool must exit 1 naming the cause and the value.py field to change.
"""

from __future__ import annotations

import json
import subprocess

import pytest

from real_node_service import REPO, RealNodeService

KUBECTL = str(REPO / ".tools" / "bin" / "kubectl")

#: A handler module that raises as it loads (at import): the process exits, the kubelet restarts it, backs off.
#: (A handler whose load() raises does not crash the pod: the runtime keeps serving 503 on /api/ping with no
#: instance, so the kubelet's startup probe restarts it after init_delay_second: the "startup" case's diagnosis.)
CRASHES = '''"""A handler that cannot load, for the real-node failure tests (tests/pipeline/test_real_node_deploy.py)."""
print("recipe: reading the weights", flush=True)
raise RuntimeError("recipe: the weights file is truncated")
'''

#: The recipes' handlers: what goes wrong happens in load, as a real model's load would go wrong.
RECIPES = '''"""Handlers that fail on purpose, for the real-node failure tests (tests/pipeline/test_real_node_failures.py)."""
import time

from podserve.handler import Handler


class OutgrowsMemory(Handler):
    def load(self, model_path, device):
        self.hog = [b"x" * (1 << 20) for _ in range(2048)]  # 2 GiB, written: far past the pod's limit


class LoadsForever(Handler):
    def load(self, model_path, device):
        time.sleep(3600)
'''

CASES = {
    "oom": ({"handler": "real_node_recipes:OutgrowsMemory", "memory": "300Mi"}, None,
            ["OOMKilled", "137", "memory"]),
    "crash": ({"handler": "real_node_crash:Handler"}, None,
              ["CrashLoopBackOff", "recipe: the weights file is truncated"]),
    "pull": ({}, "never-pushed", ["never-pushed"]),
    "startup": ({"handler": "real_node_recipes:LoadsForever", "init_delay_second": 5}, None,
                ["init_delay_second"]),
}



@pytest.fixture(scope="session")
def grey_service(build_stage, control_plane, real_node, tmp_path_factory):
    service = RealNodeService(build_stage, control_plane, real_node, tmp_path_factory.mktemp("real-node"),
                              "on-real-node", "realnode1", extra_src={"real_node_recipes.py": RECIPES, "real_node_crash.py": CRASHES})
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


@pytest.mark.parametrize("case", CASES)
def test_each_failure_is_the_kubelet_s_own_and_the_deploy_tool_names_it(grey_service, case):
    fields, tag, said = CASES[case]
    name = grey_service.name  # the image is named after the service: every recipe is this one service, redeployed
    manifests = grey_service.render(name, tag or grey_service.commit, **fields)
    try:
        run = grey_service.deploy("apply", manifests=manifests)
        print(f"real node, {case}: deploy exit {run.returncode} in {run.seconds:.1f}s")
        assert run.returncode == 1, run.output
        for words in said:
            assert words in run.output, run.output
        if case == "pull":
            assert "pull" in run.output.lower() and f"{name}:{tag}" in run.output, run.output
    finally:
        grey_service.deploy("delete", service=name)
