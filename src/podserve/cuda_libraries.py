"""Why a session asked for onnxruntime's CUDA provider runs on the CPU: the libraries it needs that do not load.

onnxruntime-gpu lists the CUDA provider whether or not CUDA's libraries are there
(`get_available_providers()`); creating a session then logs the loader's error on stderr and falls
back to the CPU, which only `session.get_providers()` shows. An instance that asked for a GPU and
got the CPU must not serve (a GPU pod on the CPU answers a fiftieth of what it should, and looks
healthy): `OnnxHandler.load` raises `CudaUnavailable` with `why_not_cuda`'s message, which names the
libraries that do not load here (tried with the same loader onnxruntime uses) and the fix. The pool
records it and `/api/ping` answers 503 with it.
"""

from __future__ import annotations

import ctypes
import os
from typing import Callable, Iterable

#: The CUDA major onnxruntime-gpu 1.31 (requirements/gpu.txt) is built with, where the package does not say.
DEFAULT_CUDA_MAJOR = "13"
#: The driver's library: not in any image, the node's container runtime mounts it into a GPU container.
DRIVER_LIBRARY = "libcuda.so.1"
#: What each fix is, once: where the libraries come from.
FIX = ("run the GPU image (its base carries CUDA {major} and cuDNN 9) on a GPU node, or put CUDA {major}'s and "
       "cuDNN 9's libraries on LD_LIBRARY_PATH, or set gpu_num = 0 in value.py to serve on the CPU")


class CudaUnavailable(RuntimeError):
    """An instance asked for a GPU, and its onnxruntime session would run on the CPU; the message says why and
    what to do."""


def cuda_major(cuda_version: str | None) -> str:
    """The CUDA major of the version onnxruntime-gpu says it was built with ('13.0' -> '13'), or DEFAULT_CUDA_MAJOR."""
    return cuda_version.split(".")[0] if cuda_version else DEFAULT_CUDA_MAJOR


def cuda_libraries(cuda_version: str) -> tuple[str, ...]:
    """The shared libraries onnxruntime-gpu's CUDA provider needs, for the CUDA version it was built with
    ('13.0'): CUDA's runtime, cuDNN 9, CUDA's maths libraries (what `onnxruntime.preload_dlls()` loads), and the
    driver's."""
    major = cuda_major(cuda_version)
    cufft = "12" if major.isdigit() and int(major) >= 13 else "11"  # cuFFT's own numbering (onnxruntime's rule)
    return (f"libcudart.so.{major}", "libcudnn.so.9", f"libcublas.so.{major}", f"libcublasLt.so.{major}",
            "libcurand.so.10", f"libcufft.so.{cufft}", f"libnvrtc.so.{major}", DRIVER_LIBRARY)


def unloadable(names: Iterable[str], load: Callable[[str], object] = ctypes.CDLL) -> dict[str, str]:
    """{library: the loader's error} for each of `names` that does not load in this process."""
    failed = {}
    for name in names:
        try:
            load(name)
        except OSError as exc:
            failed[name] = str(exc)
    return failed


def why_not_cuda(ort, device: str, load: Callable[[str], object] = ctypes.CDLL) -> str:
    """Say why `ort` (the onnxruntime module) gave a session asked for `device` ('cuda:0') the CPU, and the fix."""
    version = getattr(ort, "__version__", "?")
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        return (f"asked for {device} (gpu_num > 0) but onnxruntime {version} here is the CPU package, without the "
                f"CUDA provider: install onnxruntime-gpu (requirements/gpu.txt; the GPU image has it), or set "
                f"gpu_num = 0 in value.py to serve on the CPU")
    cuda_version = getattr(ort, "cuda_version", "") or ""
    major = cuda_major(cuda_version)
    missing = unloadable(cuda_libraries(cuda_version), load)
    provider = os.path.join(os.path.dirname(ort.__file__), "capi", "libonnxruntime_providers_cuda.so")
    provider_error = unloadable([provider], load).get(provider) if os.path.exists(provider) else None
    said = f"asked for {device} (gpu_num > 0) but onnxruntime-gpu {version} could not start its CUDA provider"
    if missing:
        names = ", ".join(missing)
        driver = (f" ({DRIVER_LIBRARY} is the NVIDIA driver's: a GPU node's container runtime mounts it)"
                  if DRIVER_LIBRARY in missing else "")
        cause = f"; these of the CUDA {major} and cuDNN 9 libraries it needs do not load here: {names}{driver}"
    else:
        cause = (f"; its CUDA {major} and cuDNN 9 libraries load here, so onnxruntime's own log lines above say why "
                 f"(a driver older than CUDA {major}, or no GPU visible: CUDA_VISIBLE_DEVICES="
                 f"{os.environ.get('CUDA_VISIBLE_DEVICES')!r}, NVIDIA_VISIBLE_DEVICES="
                 f"{os.environ.get('NVIDIA_VISIBLE_DEVICES')!r})")
    if provider_error:
        cause += f" (loading {os.path.basename(provider)}: {provider_error})"
    return f"{said}, so it would run on the CPU{cause}. Fix: {FIX.format(major=major)}"
