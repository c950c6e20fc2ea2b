"""Decide where the model instances run: which GPUs, or the CPU with how many threads each."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Mapping

from podserve.handler import Device
from podserve.settings import ServingSettings

log = logging.getLogger(__name__)

GIB = 1024 ** 3


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


def visible_gpus(settings: ServingSettings, environ: Mapping[str, str], cuda_available: bool) -> list[int]:
    """Return the GPU indices to use: `gpu_num` of them, if onnxruntime has CUDA and any are visible."""
    if settings.gpu_num == 0 or not cuda_available:
        return []
    listed = environ.get("CUDA_VISIBLE_DEVICES")
    if listed is not None:
        ids = [d for d in listed.split(",") if d.strip() and d.strip() != "-1"]
        if len(ids) < settings.gpu_num:
            log.warning("gpu_num is %d but CUDA_VISIBLE_DEVICES=%r shows %d; using %d",
                        settings.gpu_num, listed, len(ids), len(ids))
        return list(range(min(settings.gpu_num, len(ids))))
    return list(range(settings.gpu_num))


def plan_devices(settings: ServingSettings, environ: Mapping[str, str] | None = None,
                 cuda_available: bool | None = None) -> list[Device]:
    """Return one Device per model instance: `ins_num_per_gpu` per GPU, or on the CPU when there is none."""
    environ = os.environ if environ is None else environ
    if cuda_available is None:
        cuda_available = _onnxruntime_has_cuda()
    gpus = visible_gpus(settings, environ, cuda_available)
    if gpus:
        limit = settings.gpu_memory * GIB
        return [Device("cuda", index, memory_limit_bytes=limit) for index in gpus
                for _ in range(settings.ins_num_per_gpu)]
    if settings.gpu_num:
        log.warning("gpu_num=%d but no GPU is usable (onnxruntime CUDA provider: %s); serving on the CPU",
                    settings.gpu_num, cuda_available)
    instances = settings.ins_num_per_gpu
    threads = max(1, int(cpu_share(settings) // instances))
    return [Device("cpu", 0, cpu_threads=threads) for _ in range(instances)]


def _onnxruntime_has_cuda() -> bool:
    try:
        import onnxruntime
    except ImportError:
        return False
    return "CUDAExecutionProvider" in onnxruntime.get_available_providers()
