"""The GPU path without a GPU: an instance that asked for one and would run on the CPU does not load, and says why;
one shape per session, a model whose batch axis is fixed at 1, and the padding counted.

What is real: onnxruntime (this machine's CPU package, whose lack of the CUDA provider is real), the dynamic loader
(CUDA's libraries are really absent here), the ONNX models, the pool, its batchers and metrics. What is simulated,
where a test says so: the CUDA provider, by a session that reports "CUDAExecutionProvider" while onnxruntime's CPU
provider runs it, so that `OnnxHandler.load` takes its GPU path (padding to one shape) on the CPU.
"""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from podserve.cuda_libraries import CudaUnavailable, cuda_libraries, unloadable, why_not_cuda
from podserve.handler import Device, OnnxHandler
from podserve.runtime.batching.pool import InstancePool
from podserve.runtime.core.lifecycle import Lifecycle
from podserve.runtime.core.metrics import Metrics
from podserve.runtime.protocols.probes import Probes
from podserve.settings import ServingSettings

from fixture_handlers import record_runs

SERVICE = "gpu-path"


class Affine(OnnxHandler):
    """y = 2x + 1 over two numbers (the conftest's affine models)."""

    input_shape = (2,)


def _pool(model, max_batch_size: int, device: Device = Device("cuda", 0)) -> tuple[InstancePool, CollectorRegistry]:
    registry = CollectorRegistry()
    settings = ServingSettings(service_name=SERVICE, model_path=str(model), max_batch_size=max_batch_size,
                               max_batch_delay_ms=20, init_delay_second=60)
    metrics = Metrics(SERVICE, registry)
    pool = InstancePool(Affine, [device], settings, metrics)
    metrics.set_limits(settings, pool.names)
    return pool, registry


@pytest.fixture
def simulated_cuda(monkeypatch):
    """onnxruntime's sessions report the CUDA provider while its CPU provider runs them (the GPU is simulated)."""
    import onnxruntime

    class SaysCuda(onnxruntime.InferenceSession):
        def get_providers(self):
            return ["CUDAExecutionProvider", *super().get_providers()]

    monkeypatch.setattr(onnxruntime, "InferenceSession", SaysCuda)


def _serve(pool: InstancePool, count: int) -> list:
    """Queue `count` inputs at once (the batch thread finds several queued) and return their outputs."""
    items = [pool.submit(np.full(2, float(i), dtype=np.float32), None, time.monotonic() + 30) for i in range(count)]
    return [item.wait() for item in items]


def test_an_instance_asked_for_a_gpu_that_gets_the_cpu_does_not_load_and_ping_says_why(affine_model):
    """This machine's onnxruntime is the CPU package (no CUDA provider, for real): an instance on cuda:0 would run on
    the CPU, so it fails to load with the fix, the pool is not ready, and /api/ping answers 503 with the reason."""
    import onnxruntime

    assert "CUDAExecutionProvider" not in onnxruntime.get_available_providers()
    with pytest.raises(CudaUnavailable, match=r"asked for cuda:0 .*the CPU package.*install onnxruntime-gpu.*"
                                              r"set gpu_num = 0 in value.py"):
        Affine().load(str(affine_model), Device("cuda", 0))
    pool, _ = _pool(affine_model, max_batch_size=4)
    pool.load()
    assert not pool.ready and pool.workers == []
    assert pool.failure.startswith("instance cuda0-0 failed to load: CudaUnavailable: asked for cuda:0")
    answer = Probes(pool, Lifecycle()).ping()
    body = json.loads(answer.body)
    assert answer.status == 503 and body["error"] == "not_ready" and "gpu_num = 0" in body["msg"]
    # The CPU keeps serving as before: the same model on a CPU device loads.
    cpu_pool, _ = _pool(affine_model, max_batch_size=4, device=Device("cpu", 0, cpu_threads=1))
    cpu_pool.load()
    try:
        assert cpu_pool.ready and _serve(cpu_pool, 1)[0].tolist() == [1.0, 1.0]
    finally:
        cpu_pool.stop()


def test_the_cuda_libraries_that_do_not_load_are_named_with_the_fix():
    """onnxruntime-gpu lists the CUDA provider however its libraries stand (a stand-in module says so here); the
    message names each library the loader refused, the driver's as such, and the three fixes."""
    import onnxruntime

    class OnnxruntimeGpu:  # the onnxruntime-gpu 1.31.1 package, as `why_not_cuda` reads it
        __version__, cuda_version, __file__ = "1.31.1", "13.0", onnxruntime.__file__

        @staticmethod
        def get_available_providers():
            return ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]

    def loader(present):
        def load(name):
            if name not in present:
                raise OSError(f"{name}: cannot open shared object file: No such file or directory")
        return load

    assert cuda_libraries("13.0") == ("libcudart.so.13", "libcudnn.so.9", "libcublas.so.13", "libcublasLt.so.13",
                                      "libcurand.so.10", "libcufft.so.12", "libnvrtc.so.13", "libcuda.so.1")
    nothing = why_not_cuda(OnnxruntimeGpu, "cuda:0", loader(set()))  # the stand-in GPU image: no CUDA at all
    assert "could not start its CUDA provider, so it would run on the CPU" in nothing
    assert "do not load here: libcudart.so.13, libcudnn.so.9, libcublas.so.13" in nothing
    assert "libcuda.so.1 is the NVIDIA driver's" in nothing
    assert nothing.endswith("Fix: run the GPU image (its base carries CUDA 13 and cuDNN 9) on a GPU node, or put "
                            "CUDA 13's and cuDNN 9's libraries on LD_LIBRARY_PATH, or set gpu_num = 0 in value.py to "
                            "serve on the CPU")
    no_cudnn = why_not_cuda(OnnxruntimeGpu, "cuda:0", loader(set(cuda_libraries("13.0")) - {"libcudnn.so.9"}))
    assert "do not load here: libcudnn.so.9." in no_cudnn and "driver" not in no_cudnn.split("Fix:")[0]
    everything = why_not_cuda(OnnxruntimeGpu, "cuda:0", loader(set(cuda_libraries("13.0"))))
    assert "its CUDA 13 and cuDNN 9 libraries load here, so onnxruntime's own log lines above say why" in everything


def test_the_loader_is_asked_for_real():
    """`unloadable` tries the real dynamic loader: the C library loads, a library that is nowhere does not."""
    refused = unloadable(["libc.so.6", "libpodserve-nowhere.so.1"])
    assert list(refused) == ["libpodserve-nowhere.so.1"] and "cannot open shared object file" in refused[
        "libpodserve-nowhere.so.1"]


def test_a_model_whose_batch_axis_is_fixed_at_1_loads_on_a_gpu_and_runs_one_input_a_run(
        affine_batch_of_one_model, simulated_cuda):
    """Simulated GPU. The model refuses any batch but 1: its warm-up used to run batches of 2 and more there (the
    batcher's largest is max_batch_size on a GPU) and the instance failed to load. Now its runs are padded to the
    batch it fixes, and the batcher gives it one input a call."""
    pool, _ = _pool(affine_batch_of_one_model, max_batch_size=8)
    pool.load()
    try:
        assert pool.ready, pool.status()
        (worker,) = pool.workers
        assert worker.handler.provider == "CUDAExecutionProvider" and worker.handler.padded_size == 1
        assert worker.largest == 1
        shapes = record_runs(worker.handler)
        outputs = _serve(pool, 5)
        assert [o.tolist() for o in outputs] == [[2.0 * i + 1] * 2 for i in range(5)]
        assert set(shapes) == {(1, 2)} and len(shapes) == 5
    finally:
        pool.stop()


def test_gpu_runs_are_one_shape_and_the_padding_is_counted_per_instance(affine_model, simulated_cuda):
    """Simulated GPU, max_batch_size 4: every run is 4 rows; podserve_padded_rows_total is exported at 0 from the
    start and then counts the rows run beyond the inputs, beside podserve_batch_size's sum of inputs."""
    pool, registry = _pool(affine_model, max_batch_size=4)
    labels = {"service": SERVICE, "model_instance": "cuda0-0"}
    assert registry.get_sample_value("podserve_padded_rows_total", labels) == 0.0
    pool.load()
    try:
        assert pool.ready, pool.status()
        (worker,) = pool.workers
        assert worker.handler.padded_size == 4 and worker.largest == 4
        assert registry.get_sample_value("podserve_padded_rows_total", labels) == 0.0  # warm-up runs are not served
        shapes = record_runs(worker.handler)
        outputs = _serve(pool, 3) + _serve(pool, 1)
        assert [o.tolist() for o in outputs] == [[2.0 * i + 1] * 2 for i in (0, 1, 2, 0)]
        assert set(shapes) == {(4, 2)}
        inputs = registry.get_sample_value("podserve_batch_size_sum", labels)
        padded = registry.get_sample_value("podserve_padded_rows_total", labels)
        assert inputs == 4 and padded == 4 * len(shapes) - 4 and padded >= 3  # the lone input ran with 3 copies
    finally:
        pool.stop()


def test_a_gpu_instance_learns_what_a_row_costs_from_runs_timed_padded_and_not(affine_model, simulated_cuda):
    """Simulated GPU: `load` times a run of 1 input unpadded and one padded to max_batch_size, which the instance's
    batch cost starts from, so it is split into a call's and a row's cost (runs all padded to one size cannot
    tell them apart)."""
    pool, _ = _pool(affine_model, max_batch_size=64)
    pool.load()
    try:
        assert pool.ready, pool.status()
        (worker,) = pool.workers
        (one, one_seconds), (full, full_seconds) = worker.handler.run_costs
        assert (one, full) == (1, 64) and 0 < one_seconds and 0 < full_seconds
        assert worker.cost.padded_size == 64 and worker.cost.fixed is not None and worker.cost.per_item is not None
        assert "ms per row, runs padded to 64 rows" in worker.cost.describe()
    finally:
        pool.stop()
