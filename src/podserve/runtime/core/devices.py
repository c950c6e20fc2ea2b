"""Decide where the model instances run: which GPUs, or the CPU with how many threads each; and say why a GPU pod's
GPU cannot be used.

A GPU pod that cannot use its GPU must not serve on the CPU: it would answer a fiftieth of what it should and look
healthy. Where the rendered Deployment asks for one (`require_gpu`), every instance's device then carries why it
cannot be used (`Device.unusable`): the pool loads none (runtime/batching/pool.py), /api/ping answers 503 with the
reason and the log says it too. `make serve` of a GPU service on a laptop serves on the CPU with that reason as a
warning. The reasons found before any library loads: the CPU onnxruntime package, a CUDA_VISIBLE_DEVICES that shows
fewer GPUs than gpu_num (empty, or -1), no GPU device file (the node's container runtime mounted none), each with the
CUDA libraries that do not load here; past them, a session that still lands on the CPU says why when it is made
(podserve.cuda_libraries).
"""

from __future__ import annotations

import ctypes
import glob
import logging
import os
from pathlib import Path
from typing import Callable, Mapping

from podserve.cuda_libraries import FIX, cuda_libraries, cuda_major, unloadable
from podserve.handler import Device
from podserve.settings import ServingSettings

log = logging.getLogger(__name__)

GIB = 1024 ** 3
#: Where a GPU shows in a container given one (the NVIDIA device plugin mounts them; so does a GPU machine's driver).
GPU_DEVICES = "/dev/nvidia[0-9]*"


def gpu_devices(pattern: str = GPU_DEVICES) -> list[str]:
    """The NVIDIA GPU device files this process sees (without loading any CUDA library)."""
    return sorted(glob.glob(pattern))


def cpu_share(settings: ServingSettings, cgroup_root: Path = Path("/sys/fs/cgroup")) -> float:
    """Return the CPU cores this process may use: the least of the setting, the cgroup quota and the affinity.

    The setting is the pod's CPU in value.py; on a smaller machine (a laptop, CI) the
    cores actually there bound it, so instances never oversubscribe them.
    """
    limits = [float(len(os.sched_getaffinity(0)))]
    if settings.cpu > 0:
        limits.append(settings.cpu)
    try:
        quota, period = (cgroup_root / "cpu.max").read_text().split()
        if quota != "max":
            limits.append(int(quota) / int(period))
    except (OSError, ValueError):
        pass
    return max(1.0, min(limits))


def listed_gpus(environ: Mapping[str, str]) -> list[str] | None:
    """The GPU ids CUDA_VISIBLE_DEVICES shows (None when it is unset: every GPU the process has)."""
    listed = environ.get("CUDA_VISIBLE_DEVICES")
    if listed is None:
        return None
    return [d for d in listed.split(",") if d.strip() and d.strip() != "-1"]


def gpu_problems(settings: ServingSettings, environ: Mapping[str, str], onnxruntime_version: str | None,
                 device_files: list[str], load: Callable[[str], object] = ctypes.CDLL) -> list[str]:
    """Why this pod's `gpu_num` GPUs cannot be used, each cause in words ([] when nothing is known to be wrong):
    `onnxruntime_version` is None for the CPU package (or none), `device_files` the GPU device files visible."""
    found = []
    if onnxruntime_version is None:
        found.append("onnxruntime here is the CPU package, without the CUDA provider: install onnxruntime-gpu "
                     "(requirements/gpu.txt; the GPU image has it)")
    listed = listed_gpus(environ)
    if listed is not None and len(listed) < settings.gpu_num:
        found.append(f"CUDA_VISIBLE_DEVICES={environ['CUDA_VISIBLE_DEVICES']!r} shows {len(listed)} GPU(s), fewer "
                     f"than gpu_num: something in the pod's environment hides the GPU the node gave it; remove it (the "
                     f"node's device plugin sets what the container needs)")
    if not device_files:
        found.append(f"no GPU device is visible (no {GPU_DEVICES}; NVIDIA_VISIBLE_DEVICES="
                     f"{environ.get('NVIDIA_VISIBLE_DEVICES')!r}): the node's container runtime mounted none, so the "
                     f"pod is not on a working GPU node")
    if found and onnxruntime_version is not None:
        missing = unloadable(cuda_libraries(onnxruntime_version), load)
        if missing:
            found.append(f"these CUDA and cuDNN libraries do not load here: {', '.join(missing)}")
    return found


def plan_devices(settings: ServingSettings, environ: Mapping[str, str] | None = None,
                 cuda_available: bool | None = None, device_files: list[str] | None = None) -> list[Device]:
    """Return one Device per model instance: `ins_num_per_gpu` per GPU, or on the CPU when gpu_num is 0, or when no
    GPU is usable and the pod does not require one (`make serve`: with a warning). A GPU pod (`require_gpu`) with no
    usable GPU gets its GPU devices, each saying why it cannot be used (`Device.unusable`), and logs it."""
    environ = os.environ if environ is None else environ
    if settings.gpu_num == 0:
        return _cpu_devices(settings)
    cuda_version = _onnxruntime_cuda_version() if cuda_available is None else ("" if cuda_available else None)
    problems = gpu_problems(settings, environ, cuda_version, gpu_devices() if device_files is None else device_files)
    listed = listed_gpus(environ)
    count = settings.gpu_num if listed is None else min(settings.gpu_num, len(listed))
    if problems and not settings.require_gpu:
        log.warning("gpu_num=%d but no GPU is usable here (%s); serving on the CPU (a pod of this service would not be "
                    "ready)", settings.gpu_num, "; ".join(problems))
        return _cpu_devices(settings)
    why = ""
    if problems:
        why = (f"asked for {settings.gpu_num} GPU(s) (gpu_num = {settings.gpu_num}) and will not serve on the CPU, "
               f"but {'; and '.join(problems)}. Fix: {FIX.format(major=cuda_major(cuda_version))}")
        log.error("this GPU pod cannot use its GPU, so it loads no model instance and is not ready: %s", why)
        count = settings.gpu_num
    limit = settings.gpu_memory * GIB
    return [Device("cuda", index, memory_limit_bytes=limit, unusable=why) for index in range(count)
            for _ in range(settings.ins_num_per_gpu)]


def _cpu_devices(settings: ServingSettings) -> list[Device]:
    instances = settings.ins_num_per_gpu
    threads = max(1, int(cpu_share(settings) // instances))
    return [Device("cpu", 0, cpu_threads=threads) for _ in range(instances)]


def _onnxruntime_cuda_version() -> str | None:
    """The CUDA version onnxruntime-gpu was built with ("" when it does not say); None for the CPU package (or
    none)."""
    try:
        import onnxruntime
    except ImportError:
        return None
    if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
        return None
    return getattr(onnxruntime, "cuda_version", "") or ""
