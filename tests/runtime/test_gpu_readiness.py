"""A GPU pod that cannot use its GPU is not ready and says why; `make serve` of a GPU service serves on the CPU.

The three causes found before any CUDA library loads (runtime/core/devices.py), each named: the CPU onnxruntime
package, a CUDA_VISIBLE_DEVICES that hides the GPU (empty, or -1), and no GPU device file; with the CUDA libraries
that do not load beside them. The rendered Deployment of a GPU service sets PODSERVE_REQUIRE_GPU=1 (the pod: no
instance loads, /api/ping answers 503 with the causes, the log says them); `make serve` sets 0 (a warning, and the
CPU). What is real here: this machine's onnxruntime is the CPU package, it has no /dev/nvidia*, and no CUDA library
loads; the other causes are given to the planner as its inputs (the environment, the device files it would see).
"""

from __future__ import annotations

import json
import logging

import pytest
import requests

from podserve.handler import Handler
from podserve.runtime.batching.pool import InstancePool
from podserve.runtime.core.devices import gpu_problems, plan_devices
from podserve.runtime.core.lifecycle import Lifecycle
from podserve.runtime.core.metrics import Metrics
from podserve.runtime.protocols.probes import Probes
from podserve.settings import ServingSettings
from podserve.testbed.processes import poll_until
from podserve.tooling.serve_local import local_environment

from serving import REPO

GPU_POD = ServingSettings(gpu_num=1, require_gpu=1)


def _loads(name: str) -> None:
    """Every CUDA library loads (a GPU node's image on a GPU node)."""


#: cause: (environment, onnxruntime's CUDA version or None for the CPU package, device files, words naming it)
CAUSES = {
    "the CPU package": ({}, None, ["/dev/nvidia0"], "onnxruntime here is the CPU package, without the CUDA provider"),
    "an empty CUDA_VISIBLE_DEVICES": ({"CUDA_VISIBLE_DEVICES": ""}, "13.0", ["/dev/nvidia0"],
                                      "CUDA_VISIBLE_DEVICES='' shows 0 GPU(s), fewer than gpu_num"),
    "CUDA_VISIBLE_DEVICES=-1": ({"CUDA_VISIBLE_DEVICES": "-1"}, "13.0", ["/dev/nvidia0"],
                                "CUDA_VISIBLE_DEVICES='-1' shows 0 GPU(s)"),
    "no GPU device": ({"NVIDIA_VISIBLE_DEVICES": "all"}, "13.0", [],
                      "no GPU device is visible (no /dev/nvidia[0-9]*; NVIDIA_VISIBLE_DEVICES='all')"),
}


@pytest.mark.parametrize("cause", CAUSES)
def test_each_cause_alone_is_named(cause):
    environ, version, device_files, words = CAUSES[cause]
    found = gpu_problems(GPU_POD, environ, version, device_files, load=_loads)
    assert len(found) == 1 and words in found[0], found


def test_with_every_cause_each_is_named_and_so_are_the_libraries_that_do_not_load():
    def missing(name: str) -> None:
        if name.startswith(("libcudart", "libcudnn")):
            raise OSError(f"{name}: cannot open shared object file")

    found = gpu_problems(GPU_POD, {"CUDA_VISIBLE_DEVICES": ""}, "13.0", [], load=missing)
    assert [f.split(" ")[0] for f in found] == ["CUDA_VISIBLE_DEVICES=''", "no", "these"], found
    assert found[-1] == "these CUDA and cuDNN libraries do not load here: libcudart.so.13, libcudnn.so.9"
    assert gpu_problems(GPU_POD, {"CUDA_VISIBLE_DEVICES": "0"}, "13.0", ["/dev/nvidia0"], load=missing) == []


def test_a_gpu_pod_gets_its_gpus_each_saying_why_it_cannot_be_used_and_logs_it(caplog):
    settings = ServingSettings(gpu_num=1, ins_num_per_gpu=2, gpu_memory=3, require_gpu=1)
    with caplog.at_level(logging.ERROR):
        devices = plan_devices(settings, {"CUDA_VISIBLE_DEVICES": ""}, cuda_available=True,
                               device_files=["/dev/nvidia0"])
    assert [(d.kind, d.index) for d in devices] == [("cuda", 0), ("cuda", 0)]
    assert all(d.unusable.startswith("asked for 1 GPU(s) (gpu_num = 1) and will not serve on the CPU, but "
                                     "CUDA_VISIBLE_DEVICES=''") for d in devices)
    assert "set gpu_num = 0 in value.py" in devices[0].unusable  # the fix, as CudaUnavailable's says it
    assert "cannot use its GPU" in caplog.text and "CUDA_VISIBLE_DEVICES=''" in caplog.text
    usable = plan_devices(settings, {}, cuda_available=True, device_files=["/dev/nvidia0"])
    assert [d.unusable for d in usable] == ["", ""]


def test_make_serve_of_a_gpu_service_serves_on_the_cpu_with_the_reason_as_a_warning(caplog):
    laptop = ServingSettings(gpu_num=1, ins_num_per_gpu=2, cpu=4, require_gpu=0)
    with caplog.at_level(logging.WARNING):
        devices = plan_devices(laptop, {}, cuda_available=False, device_files=[])
    assert [d.kind for d in devices] == ["cpu", "cpu"]
    assert "serving on the CPU (a pod of this service would not be ready)" in caplog.text
    assert "CPU package" in caplog.text and "no GPU device is visible" in caplog.text
    # make serve says so in the environment it gives the server; the rendered pod says the opposite (test_manifests)
    env = local_environment(str(REPO / "value.py"), {})
    assert env["PODSERVE_GPU_NUM"] == "1" and env["PODSERVE_REQUIRE_GPU"] == "0"
    assert local_environment(str(REPO / "value.py"), {"PODSERVE_REQUIRE_GPU": "1"})["PODSERVE_REQUIRE_GPU"] == "1"


class Never(Handler):
    """A handler that must never be loaded."""

    def load(self, model_path, device):
        raise AssertionError("an instance was loaded on a GPU the pod cannot use")


def test_the_pool_loads_no_instance_on_an_unusable_gpu_and_ping_says_why():
    devices = plan_devices(GPU_POD, {}, cuda_available=False, device_files=[])
    metrics = Metrics("gpu-pod")
    pool = InstancePool(Never, devices, GPU_POD, metrics)
    pool.load()
    assert not pool.ready and pool.workers == []
    assert pool.failure.startswith("instance cuda0-0 failed to load: CudaUnavailable: asked for 1 GPU(s)")
    answer = Probes(pool, Lifecycle()).ping()
    body = json.loads(answer.body)
    assert answer.status == 503 and body["msg"] == f"not ready: {pool.failure}"


@pytest.mark.parametrize("decoders", [0, 1], ids=["one-process", "split"])
def test_a_gpu_pod_on_this_machine_is_not_ready_and_names_the_cpu_package_and_the_missing_device(
        start_server, example_model, decoders):
    """The server as the pod runs it (PODSERVE_REQUIRE_GPU=1), on this machine: no instance loads, /api/ping answers
    503 naming both causes, the log names them; /api/live stays 200 (no restart loop: the kubelet's startup probe
    and the deploy tool's diagnosis report it)."""
    server = start_server(wait=False, handler="server:TextDirection", model_path=str(example_model), gpu_num=1,
                          gpu_memory=1, require_gpu=1, decode_processes=decoders)
    status, message = poll_until(lambda: _failed_ping(server), "/api/ping saying why no instance loaded", 60,
                                 every=0.2)
    assert status == 503 and message.startswith("not ready: instance cuda0-0 failed to load: "
                                                           "CudaUnavailable: asked for 1 GPU(s)"), message
    for words in ("onnxruntime here is the CPU package", "no GPU device is visible", "set gpu_num = 0 in value.py"):
        assert words in message and words in server.log(), words
    assert requests.get(server.url("/api/live"), timeout=5).status_code == 200


def test_make_serve_s_environment_serves_a_gpu_service_on_this_machine(start_server, example_model):
    server = start_server(handler="server:TextDirection", model_path=str(example_model), gpu_num=1, gpu_memory=1,
                          require_gpu=0)
    assert requests.get(server.url("/api/ping"), timeout=5).status_code == 200
    assert "serving on the CPU (a pod of this service would not be ready)" in server.log()


def _failed_ping(server):
    try:
        reply = requests.get(server.url("/api/ping"), timeout=2)
    except requests.RequestException:
        return None
    return (reply.status_code, reply.json()["msg"]) if "failed to load" in reply.text else None
