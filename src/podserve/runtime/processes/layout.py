"""Which layout a pod runs in: one process, or the split layout with how many decoder processes (docs/processes.md)."""

from __future__ import annotations

from pathlib import Path

from podserve import memory_plan
from podserve.arena_sizing import ArenaSizes
from podserve.runtime.core.devices import cpu_share, gpu_devices
from podserve.settings import ServingSettings

AUTO = -1


def gpu_visible() -> bool:
    """Whether an NVIDIA GPU is visible to this process (its device files), without loading any CUDA library."""
    return bool(gpu_devices())


def decoder_processes(settings: ServingSettings) -> int:
    """The decoder processes of the split layout, or 0 for the one-process layout: `decode_processes`, or when it
    is -1 (auto) one per core of the pod on a GPU pod with a GPU in sight, and none on a CPU pod (or a GPU pod's
    settings run where there is no GPU, as `make serve` does on a laptop).

    On a GPU one interpreter cannot keep the device busy: every request's HTTP, decoding and encoding take its
    one GIL while the thread that drives the GPU waits for it (bench/results/gpu-runs.md: about 6% of what the
    GPU does for the example). On a CPU pod the model's own runs take the cores, and the one-process layout's
    hand-offs cost least there (bench/results/latest.md)."""
    if settings.decode_processes != AUTO:
        return settings.decode_processes
    if settings.gpu_num > 0 and gpu_visible():
        return max(1, int(cpu_share(settings)))
    return 0


def planned_instances(settings: ServingSettings) -> int:
    """The model instances the model process plans (runtime/core/devices.py: `ins_num_per_gpu` per GPU, or on the
    CPU), known without loading onnxruntime: what the front and decoders size the pod's limits by."""
    return max(1, settings.gpu_num) * settings.ins_num_per_gpu


def holding_limit(settings: ServingSettings) -> int:
    """Requests the pod holds at once before refusing more: `queue_size` per instance (runtime/http/admission.py)."""
    return planned_instances(settings) * settings.queue_size


# What the supervisor tells the processes it spawns, beside the ServingSettings every process reads.
#: The shared state's memfd (runtime/processes/pod_state.py), inherited.
STATE_FD = "PODSERVE_SPLIT_STATE_FD"
#: The process's slot in the shared state.
SLOT = "PODSERVE_SPLIT_SLOT"
#: The front's listening HTTP socket, inherited (the supervisor keeps it, so a replaced front listens at once).
HTTP_FD = "PODSERVE_SPLIT_HTTP_FD"
#: The Unix sockets the front and the model process listen on for decoders: their fds (inherited) and paths.
FRONT_FD, FRONT_PATH = "PODSERVE_SPLIT_FRONT_FD", "PODSERVE_SPLIT_FRONT_PATH"
MODEL_FD, MODEL_PATH = "PODSERVE_SPLIT_MODEL_FD", "PODSERVE_SPLIT_MODEL_PATH"
#: The supervisor's pid (its start is the pod's: process_start_time_seconds).
SUPERVISOR_PID = "PODSERVE_SPLIT_SUPERVISOR_PID"


def model_bytes(model_path: str) -> int:
    """The size of the model's files (a file, or every file of a folder): what each instance's weights take."""
    path = Path(model_path)
    if path.is_file():
        return path.stat().st_size
    return sum(entry.stat().st_size for entry in path.rglob("*") if entry.is_file()) if path.is_dir() else 0


def _pod_shape(settings: ServingSettings) -> tuple[int, bool, int]:
    """What this pod's memory plan is made of besides its settings: its decoders, whether on a GPU, its model's
    bytes."""
    return decoder_processes(settings), settings.gpu_num > 0 and gpu_visible(), model_bytes(settings.model_path)


def pod_memory_plan(settings: ServingSettings) -> memory_plan.MemoryPlan:
    """This pod's memory plan (podserve/memory_plan.py), the same in every process of it."""
    return memory_plan.plan(settings, *_pod_shape(settings))


def pod_least_memory(settings: ServingSettings) -> str:
    """The least memory whose plan would hold for this pod, as a refusal says it."""
    return memory_plan.least_memory_note(settings, *_pod_shape(settings))


def pod_arena_sizes(settings: ServingSettings) -> ArenaSizes:
    """Each decoder's input arena and its output share in the model process (podserve/arena_sizing.py), from the
    plan's shared memory."""
    return pod_memory_plan(settings).arena_sizes


#: What a link's frame holds beside the largest body it carries (a request's head, an answer's headers).
FRAME_SLACK_BYTES = 1 << 20
#: The frame cap of a decoder's link to the model process (descriptors, small arrays inline, values that are not
#: arrays pickled: a handler's list or string).
MODEL_FRAME_BYTES = 64 << 20


def front_frame_cap(settings: ServingSettings) -> int:
    """The frame cap of a decoder's link to the front: the largest body a request may hold (a video's base64 JSON),
    or an answer as large, with room for its head."""
    return max(MODEL_FRAME_BYTES, settings.largest_body_bytes() + FRAME_SLACK_BYTES)
