"""The serving settings a pod runs with: names, defaults, and their environment variables.

This module is the one source of truth for every setting that crosses from CI to the pod.
The tooling turns `value.py` into these settings and then into environment variables
(`to_env`); the server reads them back once at start-up (`from_env`). Nothing else in the
runtime reads the environment for its configuration.
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass, field
from typing import Mapping

ENV_PREFIX = "PODSERVE_"
#: A setting's `owner` when it is the platform's (conf/platform.yaml), not the service's (value.py).
PLATFORM = "platform"

#: The port the server listens on inside the pod; the Service, probes and Kong use it.
HTTP_PORT = 8080


class SettingsError(ValueError):
    """A setting from the environment is missing or malformed."""


@dataclass(frozen=True)
class ServingSettings:
    """Everything the in-pod server needs to know, with the defaults a service gets."""

    service_name: str = field(default="example", metadata={"doc": "route /api/<service_name>"})
    handler: str = field(default="server:Handler", metadata={"doc": "module:Class of the handler"})
    model_path: str = field(default="model/model.onnx", metadata={"doc": "model file or folder"})
    host: str = field(default="0.0.0.0", metadata={"doc": "address to listen on (0.0.0.0 in a pod)"})
    port: int = field(default=HTTP_PORT, metadata={"doc": "HTTP port"})
    gpu_num: int = field(default=0, metadata={"doc": "GPUs this pod owns (0: CPU only)"})
    ins_num_per_gpu: int = field(default=1, metadata={"doc": "model instances per GPU (or on the CPU)"})
    gpu_memory: int = field(default=0, metadata={"doc": "GiB of GPU memory per instance (0: no limit)"})
    cpu: float = field(default=0.0, metadata={"doc": "CPU cores of the pod (0: detect from cgroup)"})
    max_batch_size: int = field(default=8, metadata={"doc": "largest batch one predict call gets"})
    max_batch_delay_ms: float = field(default=2.0, metadata={"doc": "longest wait after a batch's first item"})
    queue_size: int = field(default=64, metadata={"doc": "queued requests per instance before 503"})
    request_timeout_ms: int = field(default=10_000, metadata={"doc": "default deadline of a request"})
    drain_seconds: float = field(default=5.0, metadata={"doc": "seconds /api/ping is 503 before closing"})
    http_threads: int = field(default=1, metadata={"doc": "request threads that parse, decode and encode what "
                                                                "the event loop does not (a step over 2 ms); 0: one "
                                                                "per CPU core, for a decode that releases the GIL"})
    require_gpu: int = field(default=0, metadata={
        "doc": "1 (the rendered Deployment of a GPU service): an instance that cannot use its GPU does not load, so "
               "the pod is never ready on the CPU and /api/ping says why; 0 (make serve of a GPU service on a laptop): "
               "it serves on the CPU with a warning", "from": "gpu_num"})
    decode_processes: int = field(default=-1, metadata={
        "doc": "processes that decode and encode requests beside the one that owns the model (the split layout, "
               "docs/processes.md); 0: one process does everything; -1: one per core of the pod on a GPU pod "
               "(gpu_num > 0), none on a CPU pod"})
    memory_bytes: int = field(default=0, metadata={
        "doc": "the pod's memory (value.py's memory) its budgets are planned in (podserve/memory_plan.py); 0: the "
               "container's limit, or the machine's memory", "from": "memory"})
    max_body_bytes: int = field(default=10 * 1024 * 1024, metadata={"doc": "largest request body (413 above)"})
    max_image_pixels: int = field(default=12_500_000, metadata={
        "doc": "largest decoded image (400 above); each thread that decodes may hold 16 bytes a pixel of it "
               "(podserve/memory_plan.py), so the default fits a 1Gi pod of one core"})
    video_fps: float = field(default=1.0, metadata={"doc": "frames sampled per second of a video (the old platform's "
                                                           "one a second)"})
    max_video_bytes: int = field(default=32 * 1024 * 1024, metadata={"doc": "largest video, raw or before base64 "
                                                                             "(413 above)"})
    max_video_seconds: float = field(default=60.0, metadata={"doc": "longest video, claimed or actual (400 above)"})
    max_video_frames: int = field(default=60, metadata={"doc": "most sampled frames of one video (400 above); never "
                                                               "more than the pod holds (queue_size per instance)"})
    max_video_pixels: int = field(default=3840 * 2160, metadata={"doc": "largest video frame (400 above, before "
                                                                        "decoding)"})
    video_decode_timeout_seconds: float = field(default=10.0, metadata={"doc": "longest decoding of one video (400 "
                                                                               "above)"})
    stuck_batch_seconds: float = field(default=120.0, metadata={"doc": "a batch running longer fails liveness"})
    init_delay_second: int = field(default=120, metadata={"doc": "start-up budget (load + warm-up) before a "
                                                                  "restart; exported as a metric for alerts"})
    slo_availability: float = field(default=0.0, metadata={"doc": "availability objective, exported for the alert "
                                                                  "rules (0: the platform's)"})
    slo_latency_target: float = field(default=0.0, metadata={"doc": "share of requests under the platform's latency "
                                                                    "threshold, exported (0: the platform's)"})
    # The HTTP front end's limits (runtime/http/messages.py: HttpLimits): the platform's, from conf/platform.yaml's
    # `http` section (value.py cannot set them). Defaults and their reasons: docs/http-limits.md.
    max_head_bytes: int = field(default=64 * 1024, metadata={
        "doc": "largest request line and headers, counted as they arrive (431 above)", "owner": PLATFORM})
    header_timeout_seconds: float = field(default=15.0, metadata={
        "doc": "a request head not complete this long after its first byte gets 408 and is closed", "owner": PLATFORM})
    write_timeout_seconds: float = field(default=30.0, metadata={
        "doc": "a caller that reads none of its answers this long is disconnected", "owner": PLATFORM})
    idle_timeout_seconds: float = field(default=300.0, metadata={
        "doc": "a keep-alive connection idle this long is closed (the mesh's idle timeout is shorter)",
        "owner": PLATFORM})
    max_connections: int = field(default=1000, metadata={
        "doc": "open connections; a new one beyond it gets 503 and is closed", "owner": PLATFORM})
    min_upload_bytes_per_second: int = field(default=1024 * 1024, metadata={
        "doc": "the slowest upload a large body (over max_body_bytes: a video) may arrive at: its body deadline is "
               "its length at this rate on top of the request's deadline", "owner": PLATFORM})
    control_queue_size: int = field(default=64, metadata={
        "doc": "requests waiting for the control thread (/metrics, 404s); 503 above", "owner": PLATFORM})

    @staticmethod
    def env_name(name: str) -> str:
        """Return the environment variable that carries setting `name`."""
        return ENV_PREFIX + name.upper()

    @classmethod
    def names(cls) -> list[str]:
        """Return every setting's name, in declaration order."""
        return [f.name for f in dataclasses.fields(cls)]

    @classmethod
    def derived_names(cls) -> dict[str, str]:
        """The settings the tooling derives from another value.py field, by the field's name (memory_bytes: memory)."""
        return {f.name: f.metadata["from"] for f in dataclasses.fields(cls) if "from" in f.metadata}

    @classmethod
    def platform_names(cls) -> list[str]:
        """Return the settings the platform sets for every service (conf/platform.yaml's `http`), not value.py."""
        return [f.name for f in dataclasses.fields(cls) if f.metadata.get("owner") == PLATFORM]

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> "ServingSettings":
        """Read the settings from environment variables; unset ones take their defaults."""
        environ = os.environ if environ is None else environ
        values = {}
        for f in dataclasses.fields(cls):
            raw = environ.get(cls.env_name(f.name))
            if raw is None or raw == "":
                continue
            values[f.name] = _parse(f, raw, cls.env_name(f.name))
        settings = cls(**values)
        settings.check()
        return settings

    def to_env(self) -> dict[str, str]:
        """Return the environment variables that reproduce these settings."""
        return {self.env_name(name): _format(getattr(self, name)) for name in self.names()}

    def request_threads(self, cores: float) -> int:
        """The request threads a process that decodes runs, on `cores` cores: `http_threads`, or when 0 one per core."""
        return self.http_threads or max(1, int(cores))

    @staticmethod
    def video_threads(cores: float) -> tuple[int, int]:
        """(videos one process decodes at once, FFmpeg's threads for each) on `cores` cores: a video thread per two
        cores, each video's decoder using the cores of its share (on 2 cores: one video at a time on 2 threads)."""
        workers = max(1, int(cores) // 2)
        return workers, max(1, max(1, int(cores)) // workers)

    def video_json_bytes(self) -> int:
        """The largest JSON body holding a video of max_video_bytes (base64, plus room for the ids)."""
        return math.ceil(self.max_video_bytes / 3) * 4 + 64 * 1024

    def largest_body_bytes(self) -> int:
        """The largest body the service route reads: an image's, or a video's in base64 JSON."""
        return max(self.max_body_bytes, self.max_video_bytes, self.video_json_bytes())

    def check(self) -> None:
        """Raise SettingsError naming the first setting that is out of range."""
        positive = ("port", "ins_num_per_gpu", "max_batch_size", "queue_size", "request_timeout_ms",
                    "max_body_bytes", "max_image_pixels", "stuck_batch_seconds", "video_fps", "max_video_bytes",
                    "max_video_seconds", "max_video_frames", "max_video_pixels", "video_decode_timeout_seconds",
                    "init_delay_second", *self.platform_names())
        for name in positive:
            if getattr(self, name) <= 0:
                raise SettingsError(f"{self.env_name(name)}={getattr(self, name)!r} must be above 0")
        for name in ("gpu_num", "gpu_memory", "cpu", "max_batch_delay_ms", "drain_seconds", "http_threads",
                     "memory_bytes"):
            if getattr(self, name) < 0:
                raise SettingsError(f"{self.env_name(name)}={getattr(self, name)!r} must be 0 or more")
        if self.require_gpu not in (0, 1):
            raise SettingsError(f"{self.env_name('require_gpu')}={self.require_gpu!r} must be 0 or 1")
        if self.decode_processes < -1:
            raise SettingsError(f"{self.env_name('decode_processes')}={self.decode_processes!r} must be -1 (auto), 0 "
                                f"(one process) or a number of decoder processes")
        for name in ("slo_availability", "slo_latency_target"):
            if not 0 <= getattr(self, name) < 1:
                raise SettingsError(f"{self.env_name(name)}={getattr(self, name)!r} must be a share below 1 "
                                    "(e.g. 0.999), or 0 for the platform's objective")
        if ":" not in self.handler:
            raise SettingsError(
                f"{self.env_name('handler')}={self.handler!r} must be 'module:Class', e.g. 'server:Handler'")


def _parse(f: dataclasses.Field, raw: str, env: str):
    kind = f.type if isinstance(f.type, type) else {"int": int, "float": float, "str": str}[f.type]
    try:
        return kind(raw)
    except ValueError:
        raise SettingsError(f"{env}={raw!r} is not a valid {kind.__name__}") from None


def _format(value) -> str:
    return str(value)
