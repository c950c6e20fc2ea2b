"""What a pod's memory holds, from value.py's `memory`: its code and processes, shared memory, decoded pixels and
videos, the bodies it reads and holds, their parsing.

Both the pod and the tooling read it: the pod sizes its budgets by it (the HTTP server reads bodies within
`uploads`; runtime/http/admission.py holds admitted bodies within `bodies`; runtime/protocols/api.py refuses a JSON
body whose parse would take more than `per_parse`; decoders and the model process split `arenas` by
podserve/arena_sizing.py), and render refuses a value.py whose plan does not fit (`problems`), naming the field to
change.
What does not fit a budget waits or gets a 503 (a body over it) or a 413 (a body that could never be parsed here): the
pod's memory stays within its limit, and the kernel never has to kill it (docs/processes.md, "Memory").

Every figure is measured (bench/results/pod-memory/: `python -m bench.pod_memory` and `python -m bench.decode_memory`
on the example model), with the margin named beside it; the plan is checked against the peaks measured under its
worst admitted load there and on the real node (tests/pipeline/test_real_node_deploy.py).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

from podserve.arena_sizing import ArenaSizes, arena_sizes

MIB = 1 << 20
GIB = 1 << 30
#: Measured figures are counted with this margin on top (rounded up to the MiB): allocator slack, a module more.
MARGIN = 0.2
#: What each process holds once it has served (ordinary requests, its first video), measured on the example model
#: (bench/results/pod-memory/): (its own anonymous memory, the file pages it maps: code), in MiB. The model process's
#: figure is without its model's files, which each instance adds; a decoder's holds PyAV and FFmpeg (8 MiB of their
#: own memory and 21 of code once it has decoded a video), as does one process's.
PROCESS_MIB = {"supervisor": (25.2, 19.2), "front": (26.5, 20.2), "decoder": (37.2, 41.3), "model": (51.9, 40.3),
               "one process": (57.1, 61.3)}
#: The code the pod's processes map, charged to its memory once however many map it (file pages): the interpreter,
#: numpy, Pillow, onnxruntime, PyAV and FFmpeg, in MiB (the one process's, which maps all of it).
CODE_MIB = 61.3
#: What a CUDA context costs the host, in MiB: (the driver's and CUDA's and cuDNN's own memory, their shared memory
#: included; the file pages of their libraries). The model process on an H200, example model, after 20 s of ordinary
#: load: 560.6 anonymous + 13.4 shared + 324.6 file, against 51.9 + 40.3 on the CPU (bench/results/pod-memory/).
CUDA_CONTEXT_MIB = (522.1, 284.3)
#: What decoding one image holds at its peak, per pixel: WebP's (its decoder's two canvases, Pillow's copy and the
#: conversion to the mode asked: 4 x 4 bytes, 16.0 measured); every other format the server reads measured 9 or less
#: (bench/results/pod-memory/decode.md). Each thread that may decode an image holds this at once, and keeps it once
#: it has (the allocator keeps a thread's freed memory for its next decode).
DECODED_PIXEL_BYTES = 16
#: What decoding one video holds at its peak, per pixel of its frames (FFmpeg's reference frames and buffers, 1.5
#: bytes a pixel each): on one thread (a decoder's) 20.1 measured for 4K h264 with 16 reference frames and B-frames
#: (3.4 with one reference, hevc 2.1, vp9 0.01), the 16 frames a stream may keep 24; frame-threaded (the one process's
#: video threads, two or three FFmpeg threads each) 31.0 with two threads, 29.0 with three.
VIDEO_PIXEL_BYTES = 24
VIDEO_PIXEL_BYTES_THREADED = 40
#: What parsing a JSON body costs, as a bound: the text and what decoding its strings gives (2 bytes a byte), and
#: this much for each JSON value (a number, a string, a list) in it, counted by the bytes that are not base64 text
#: (the commas, colons and brackets between values). A 10 MiB body of small values became a tree of 250-290 MB.
JSON_VALUE_BYTES = 64
#: The largest body a process's event loop parses itself (runtime/batching/inline_policy.py's INLINE_BODY_BYTES): a
#: larger one goes to a request thread. So the loop's parse takes at most json_parse_bytes of this.
LOOP_BODY_BYTES = 1 << 20
#: What is left once everything above is counted, split: bodies still being sent (read by the HTTP server) get
#: UPLOAD_SHARE, admitted bodies BODY_SHARE, and the parses the pod may run at once the rest.
UPLOAD_SHARE = 0.2
BODY_SHARE = 0.3
#: Shared memory (the decoders' input arenas and their output shares in the model process): this share of the pod's
#: memory, and one decoder's arenas more while a replaced decoder's are still mapped (`replacement`). A sixteenth:
#: 128 MiB in a 2Gi pod, what the measured runs held (bench/results/pod-memory/, the real node's 2Gi case), where a
#: batch of 16 of the example's inputs is 1.8 MB of float32; a tenth left a 2Gi GPU pod too little for one video's
#: upload.
ARENA_SHARE = 1 / 16
MIN_ARENA_BYTES = 16 * MIB
#: A body declared larger than this, or chunked (its size unknown until it ends), may use only LARGE_BODY_SHARE of a
#: pod-wide body budget (bodies still being sent, runtime/http/parser.py; bodies held, runtime/http/admission.py): the
#: rest is kept for ordinary requests, so that slow large uploads and chunk floods cannot starve them.
LARGE_BODY_BYTES = 1024 * 1024
LARGE_BODY_SHARE = 0.75


def measured(nbytes: float) -> int:
    """A measured figure with MARGIN on top, rounded up to the MiB."""
    return math.ceil(nbytes * (1 + MARGIN) / MIB) * MIB


@dataclass(frozen=True)
class MemoryPlan:
    """The pod's memory, and how it is shared (bytes). Each share is one kind of memory, counted once."""

    memory: int
    decoders: int  # 0: one process
    threads: int  # threads of each process that decodes (the event loop and the request threads): each may parse
    # and decode at once
    videos: int  # videos the pod decodes at once
    code: int  # the code every process maps, once
    processes: int  # what the processes hold at rest, the model's weights and a CUDA context included
    replacement: int  # a replaced decoder's successor, while the one it replaces still holds its memory
    arenas: int  # shared memory, all arenas together: what podserve/arena_sizing.py splits between them
    pixels: int  # decoded images: each thread that may decode holding the largest image the pod admits
    video_frames: int  # the videos decoded at once, at the largest frame the pod admits
    uploads: int  # bodies still being sent, pod-wide (the HTTP server)
    bodies: int  # admitted request bodies, pod-wide (runtime/http/admission.py)
    per_parse: int  # the most one body's parsing may take (runtime/protocols/api.py refuses more with a 413)
    loop_parse: int  # the most an event loop's parse takes (its bodies are small), at most per_parse
    largest_body: int  # the largest body the service takes (a video's JSON, in base64)
    process_bytes: tuple  # ((role, what it holds at rest, its code included), ...), for process_figures

    @property
    def parsers(self) -> int:
        """Parses the pod may run at once, pod-wide."""
        return max(1, self.decoders) * self.threads

    @property
    def arena_sizes(self) -> ArenaSizes:
        """Each decoder's input arena and its output share in the model process, carved from `arenas`."""
        return arena_sizes(self.arenas, self.decoders)

    @property
    def parses(self) -> int:
        """All the parses the pod may run at once: each request thread's per_parse, each event loop's loop_parse."""
        loops = max(1, self.decoders)
        return self.per_parse * (self.parsers - loops) + self.loop_parse * loops

    def shares(self) -> dict[str, int]:
        """Every share in bytes, by name, adding up to at most `memory`."""
        return {"code": self.code, "processes": self.processes, "replacement": self.replacement, "arenas": self.arenas,
                "pixels": self.pixels, "videos": self.video_frames, "uploads": self.uploads, "bodies": self.bodies,
                "parses": self.parses}

    def describe(self) -> dict[str, str]:
        """What each share is, with its size: what the pod logs at start."""
        layout = f"{self.decoders} decoders beside the model process" if self.decoders else "one process"
        sizes = self.arena_sizes
        each = (f" (each decoder's inputs {_mib(sizes.inputs)} and its outputs {_mib(sizes.outputs)}; "
                f"{_mib(sizes.allocated)} allocated)") if self.decoders else ""
        return {"memory": f"{_mib(self.memory)}, {layout}",
                "code": f"{_mib(self.code)}: the interpreter, libraries and modules every process maps, once",
                "processes": f"{_mib(self.processes)}: the processes' own memory at rest, the model's weights and any "
                             f"CUDA context included (each with the code it maps: "
                             + ", ".join(f"{role} {_mib(size)}" for role, size in self.process_bytes) + ")",
                "replacement": f"{_mib(self.replacement)}: a replaced decoder's successor and its arenas, while the "
                               "one it replaces still holds its memory",
                "arenas": f"{_mib(self.arenas)}: shared memory, the most the arenas hold{each}",
                "pixels": f"{_mib(self.pixels)}: {max(1, self.decoders) * self.threads} threads each decoding the "
                          f"largest image admitted",
                "videos": f"{_mib(self.video_frames)}: {self.videos} video(s) decoded at once at the largest frame",
                "uploads": f"{_mib(self.uploads)}: bodies still being sent (503 at the headers beyond it)",
                "bodies": f"{_mib(self.bodies)}: bodies of the requests held (503 beyond it)",
                "parses": f"{_mib(self.parses)}: {self.parsers} parses at once, {_mib(self.per_parse)} each (413 for "
                          f"a body whose parse would take more; an event loop's, of small bodies, "
                          f"{_mib(self.loop_parse)})"}

    def process_figures(self) -> dict[str, int]:
        """The most each process of the pod may hold under the plan (its memory at rest with its code, and what the
        shares it holds may put in it at once), by role: 'supervisor', 'front', 'decoder', 'model' (the split layout)
        or 'one process'. The arenas a process maps are counted in `arenas`, not here; the bodies of admitted requests
        in both the front (on their way to a decoder) and a decoder, as either may hold them all."""
        at_rest = dict(self.process_bytes)
        decoding = self.pixels // max(1, self.decoders) + self.per_parse * (self.threads - 1) + self.loop_parse
        if not self.decoders:
            return {"one process": at_rest["one process"] + decoding + self.video_frames + self.uploads + self.bodies}
        return {"supervisor": at_rest["supervisor"], "front": at_rest["front"] + self.uploads + self.bodies,
                "decoder": at_rest["decoder"] + decoding + self.video_frames // self.decoders + self.bodies,
                "model": at_rest["model"]}

    def _before_bodies(self) -> dict[str, int]:
        return {name: size for name, size in self.shares().items() if name not in ("uploads", "bodies", "parses")}

    @property
    def takes_no_body(self) -> bool:
        """Whether what the pod needs before any request body fills its memory: such a pod could answer nothing."""
        return sum(self._before_bodies().values()) >= self.memory

    def problems(self) -> list[str]:
        """What does not fit, each with the fix (empty when the plan holds)."""
        found = []
        fixed = self._before_bodies()
        if self.takes_no_body:
            counted = ", ".join(f"{name} {_mib(size)}" for name, size in fixed.items() if size)
            found.append(f"memory: {_mib(self.memory)} does not hold what the pod needs before any request body "
                         f"({_mib(sum(fixed.values()))}: {counted}; docs/processes.md, \"Memory\"); raise memory, or "
                         f"lower max_image_pixels (each of {max(1, self.decoders) * self.threads} threads may decode "
                         f"one), decode_processes or http_threads")
            return found
        if self.uploads * LARGE_BODY_SHARE < self.largest_body:
            found.append(f"max_video_bytes: its base64 JSON ({_mib(self.largest_body)}) could never be read: memory "
                         f"{_mib(self.memory)} leaves {_mib(self.uploads)} for bodies being sent, of which large "
                         f"uploads may hold three quarters; raise memory, or lower max_video_bytes")
        if self.bodies * LARGE_BODY_SHARE < self.largest_body:
            found.append(f"memory: {_mib(self.memory)} leaves {_mib(self.bodies)} for request bodies, of which large "
                         f"ones may hold three quarters: less than one largest body ({_mib(self.largest_body)}: "
                         f"max_video_bytes in base64, or max_body_bytes); raise memory, or lower max_video_bytes")
        needed = json_parse_bytes(self.largest_body, values=0)
        if self.per_parse < needed:
            found.append(f"memory: {_mib(self.memory)} leaves {_mib(self.per_parse)} for each of the {self.parsers} "
                         f"parses the pod may run at once, less than the largest body's ({_mib(needed)}); raise "
                         f"memory, or lower decode_processes, http_threads or max_video_bytes")
        return found


def smallest_memory(settings, decoders: int, on_gpu: bool, model_bytes: int, cores: float | None = None) -> int:
    """The least memory (to the MiB) whose plan holds for these settings: what to raise `memory` to."""
    low, high = 64 * MIB, 1 << 40
    if plan(settings, decoders, on_gpu, model_bytes, memory=high, cores=cores).problems():
        return high
    while high - low > MIB:
        middle = (low + high) // 2
        if plan(settings, decoders, on_gpu, model_bytes, memory=middle, cores=cores).problems():
            low = middle
        else:
            high = middle
    return -(-high // MIB) * MIB


def least_memory_note(settings, decoders: int, on_gpu: bool, model_bytes: int, cores: float | None = None) -> str:
    """What a refusal of a plan that does not hold ends with: the least memory whose plan holds, as value.py writes
    it."""
    least = smallest_memory(settings, decoders, on_gpu, model_bytes, cores)
    return f"this pod needs memory = \"{-(-least // MIB)}Mi\" at least"


def json_parse_bytes(length: int, values: int) -> int:
    """What parsing a JSON body of `length` bytes holding about `values` values takes, as a bound."""
    return 2 * length + JSON_VALUE_BYTES * values


def plan(settings, decoders: int, on_gpu: bool, model_bytes: int, memory: int | None = None,
         cores: float | None = None) -> MemoryPlan:
    """The plan of a pod with `settings` (ServingSettings) and `decoders` decoder processes (0: one process), its
    model's files `model_bytes` large, its instances on a GPU or not; `memory` overrides settings.memory_bytes, `cores`
    the pod's cores (default: settings.cpu, or this machine's when it is 0)."""
    memory = memory or settings.memory_bytes or pod_memory_limit()
    cores = cores or settings.cpu or len(os.sched_getaffinity(0))
    instances = max(1, settings.gpu_num) * settings.ins_num_per_gpu
    cuda = CUDA_CONTEXT_MIB if on_gpu else (0.0, 0.0)
    weights = instances * model_bytes
    threads = settings.request_threads(cores) + 1  # and the event loop: each may parse and decode
    if decoders:
        workers, video_pixel_bytes = decoders, VIDEO_PIXEL_BYTES  # a decoder decodes one video at a time, on one thread
        counts = {"supervisor": 1, "front": 1, "decoder": decoders, "model": 1}
    else:
        workers, ffmpeg_threads = settings.video_threads(cores)
        video_pixel_bytes = VIDEO_PIXEL_BYTES_THREADED if ffmpeg_threads > 1 else VIDEO_PIXEL_BYTES
        counts = {"one process": 1}
    model_role = "model" if decoders else "one process"
    own = {role: measured((PROCESS_MIB[role][0] + PROCESS_MIB[role][1]) * MIB) for role in counts}
    own[model_role] += measured((cuda[0] + cuda[1]) * MIB) + weights
    anonymous = {role: measured(PROCESS_MIB[role][0] * MIB) for role in counts}
    anonymous[model_role] += measured(cuda[0] * MIB) * max(1, settings.gpu_num) + weights
    processes = sum(anonymous[role] * count for role, count in counts.items())
    code = measured((CODE_MIB + cuda[1]) * MIB)
    if decoders:
        arenas = max(MIN_ARENA_BYTES * (decoders + 1), int(memory * ARENA_SHARE))
        # its successor's input arena and the model process's new output share for it, while the old ones are mapped
        replacement = anonymous["decoder"] + arena_sizes(arenas, decoders).allocated // decoders
    else:
        arenas = replacement = 0
    pixels = max(1, decoders) * threads * settings.max_image_pixels * DECODED_PIXEL_BYTES
    video_frames = workers * settings.max_video_pixels * video_pixel_bytes
    left = max(0, memory - code - processes - replacement - arenas - pixels - video_frames)
    # Never 0 (which its users read as "no limit"): a pod whose plan does not hold takes no body rather than any.
    uploads, bodies = max(1, int(left * UPLOAD_SHARE)), max(1, int(left * BODY_SHARE))
    loops, parsers = max(1, decoders), max(1, decoders) * threads
    per_parse = loop_parse = max(1, (left - uploads - bodies) // parsers)
    small = json_parse_bytes(LOOP_BODY_BYTES, LOOP_BODY_BYTES)
    if per_parse > small:  # the loops need less: the request threads get the rest
        loop_parse = small
        per_parse = (left - uploads - bodies - loops * small) // (parsers - loops)
    return MemoryPlan(memory=memory, decoders=decoders, threads=threads, videos=workers, code=code,
                      processes=processes, replacement=replacement, arenas=arenas, pixels=pixels,
                      video_frames=video_frames, uploads=uploads, bodies=bodies, per_parse=per_parse,
                      loop_parse=loop_parse, largest_body=settings.largest_body_bytes(),
                      process_bytes=tuple(own.items()))


def pod_memory_limit(cgroup: Path = Path("/sys/fs/cgroup")) -> int:
    """The container's memory limit (cgroup v2 or v1), or the machine's memory when it has none."""
    for limit_file in (cgroup / "memory.max", cgroup / "memory" / "memory.limit_in_bytes"):
        try:
            raw = limit_file.read_text().strip()
        except OSError:
            continue
        if raw.isdigit() and int(raw) < 1 << 60:  # v1 writes a huge number for "no limit"
            return int(raw)
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def _mib(size: int) -> str:
    return f"{size / MIB:,.0f} MiB"
