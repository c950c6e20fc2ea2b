"""What a pod's memory holds, from value.py's `memory`: its processes, shared memory, the bodies it admits, parsing.

Both the pod and the tooling read it: the pod sizes its budgets by it (runtime/http/admission.py admits
request bodies within `bodies`; runtime/protocols/api.py refuses a JSON body whose parse would take more
than `per_parse`; decoders size their shared memory by `arena_per_decoder`), and render refuses a
value.py whose plan does not fit (`problems`), naming the field to change. What does not fit a
budget waits or gets a 503 (a body over it) or a 413 (a body that could never be parsed here): the
pod's memory stays within its limit, and the kernel never has to kill it (docs/processes.md).

The processes' own sizes are measured figures, rounded up (docs/processes.md: Memory): a decoder
holds 45-72 MB (PyAV loaded once it has decoded a video), the front and the supervisor 45 MB, the
model process 91 MB with the example model on the CPU, 955-978 MB with a CUDA context on an H200.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

MIB = 1 << 20
GIB = 1 << 30
SUPERVISOR_BYTES = 64 * MIB
FRONT_BYTES = 64 * MIB
DECODER_BYTES = 96 * MIB
#: One process, or the model process, before its model's weights (counted `model_copies` times: per instance).
SERVER_BYTES = 160 * MIB
#: What a CUDA context costs the host (the pinned buffers and libraries it maps): 955-978 MB measured on an H200.
CUDA_CONTEXT_BYTES = GIB
#: What parsing a JSON body costs, as a bound: the text and what decoding its strings gives (2 bytes a byte), and
#: this much for each JSON value (a number, a string, a list) in it, counted by the bytes that are not base64 text
#: (the commas, colons and brackets between values). A 10 MiB body of small values became a tree of 250-290 MB.
JSON_VALUE_BYTES = 64
#: What is left once the processes and shared memory are counted, split: admitted bodies get this share, and the
#: parses the pod may run at once the rest.
BODY_SHARE = 0.4
#: Shared memory (the decoders' input arenas and the model process's outputs): this share of the pod's memory.
ARENA_SHARE = 0.1
MIN_ARENA_BYTES = 16 * MIB
#: A body declared larger than this, or chunked (its size unknown until it ends), may use only LARGE_BODY_SHARE of a
#: pod-wide body budget (bodies still being sent, runtime/http/parser.py; bodies held, runtime/http/admission.py): the
#: rest is kept for ordinary requests, so that slow large uploads and chunk floods cannot starve them.
LARGE_BODY_BYTES = 1024 * 1024
LARGE_BODY_SHARE = 0.75


@dataclass(frozen=True)
class MemoryPlan:
    """The pod's memory, and how it is shared (bytes)."""

    memory: int
    decoders: int  # 0: one process
    parsers: int  # threads that may parse a request body at once, pod-wide
    processes: int  # what the processes hold at rest
    arenas: int  # shared memory, all arenas together
    bodies: int  # admitted request bodies, pod-wide (runtime/http/admission.py)
    per_parse: int  # the most one body's parsing may take (runtime/protocols/api.py refuses more with a 413)
    largest_body: int  # the largest body the service takes (a video's JSON, in base64)

    @property
    def arena_per_decoder(self) -> int:
        return self.arenas // (self.decoders + 1) if self.decoders else 0

    def problems(self) -> list[str]:
        """What does not fit, each with the fix (empty when the plan holds)."""
        found = []
        left = self.memory - self.processes - self.arenas
        layout = (f"{self.decoders} decoder processes beside the model process" if self.decoders else "one process")
        if left <= 0:
            found.append(f"memory: {_mib(self.memory)} does not hold the pod's processes ({layout}: "
                         f"{_mib(self.processes)}) and shared memory ({_mib(self.arenas)}); raise memory, or lower "
                         f"decode_processes")
            return found
        if self.bodies < self.largest_body:
            found.append(f"memory: {_mib(self.memory)} leaves {_mib(self.bodies)} for request bodies, less than one "
                         f"largest body ({_mib(self.largest_body)}: max_video_bytes in base64, or max_body_bytes); "
                         f"raise memory, or lower max_video_bytes")
        needed = json_parse_bytes(self.largest_body, values=0)
        if self.per_parse < needed:
            found.append(f"memory: {_mib(self.memory)} leaves {_mib(self.per_parse)} for each of the {self.parsers} "
                         f"parses the pod may run at once ({layout}), less than the largest body's "
                         f"({_mib(needed)}); raise memory, or lower decode_processes, http_threads or max_video_bytes")
        return found


def smallest_memory(settings, decoders: int, on_gpu: bool, model_bytes: int) -> int:
    """The least memory (to the MiB) whose plan holds for these settings: what to raise `memory` to."""
    low, high = 64 * MIB, 1 << 40
    if plan(settings, decoders, on_gpu, model_bytes, memory=high).problems():
        return high
    while high - low > MIB:
        middle = (low + high) // 2
        if plan(settings, decoders, on_gpu, model_bytes, memory=middle).problems():
            low = middle
        else:
            high = middle
    return -(-high // MIB) * MIB


def video_upload_problem(settings) -> str | None:
    """Why the largest video upload could never be read (its JSON over what large bodies may use of the pod's budget
    for bodies still being sent): every such upload would get a 'retry shortly' 503, forever."""
    room = int(settings.max_pending_body_bytes * LARGE_BODY_SHARE)
    if settings.video_json_bytes() > room:
        return (f"is {settings.max_video_bytes} bytes: its base64 JSON ({_mib(settings.video_json_bytes())}) could "
                f"never be read, as large uploads may hold at most {_mib(room)} at once (three quarters of the "
                f"platform's max_pending_body_bytes); lower max_video_bytes to at most "
                f"{(room - 64 * 1024) * 3 // 4} bytes")
    return None


def json_parse_bytes(length: int, values: int) -> int:
    """What parsing a JSON body of `length` bytes holding about `values` values takes, as a bound."""
    return 2 * length + JSON_VALUE_BYTES * values


def plan(settings, decoders: int, on_gpu: bool, model_bytes: int, memory: int | None = None) -> MemoryPlan:
    """The plan of a pod with `settings` (ServingSettings) and `decoders` decoder processes (0: one process), its
    model's files `model_bytes` large, its instances on a GPU or not; `memory` overrides settings.memory_bytes."""
    memory = memory or settings.memory_bytes or pod_memory_limit()
    instances = max(1, settings.gpu_num) * settings.ins_num_per_gpu
    model = SERVER_BYTES + instances * model_bytes + (CUDA_CONTEXT_BYTES * max(1, settings.gpu_num) if on_gpu else 0)
    threads = (settings.http_threads or 1) + 1  # the request threads and the event loop, each of which may parse
    if decoders:
        processes = SUPERVISOR_BYTES + FRONT_BYTES + decoders * DECODER_BYTES + model
        parsers = decoders * threads
        arenas = max(MIN_ARENA_BYTES * (decoders + 1), int(memory * ARENA_SHARE))
    else:
        processes, parsers, arenas = model, threads, 0
    left = max(0, memory - processes - arenas)
    bodies = int(left * BODY_SHARE)
    return MemoryPlan(memory=memory, decoders=decoders, parsers=parsers, processes=processes, arenas=arenas,
                      bodies=bodies, per_parse=(left - bodies) // parsers, largest_body=settings.largest_body_bytes())


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
