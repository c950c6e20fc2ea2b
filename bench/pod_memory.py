"""What each process of a pod holds, measured: at rest, and under the memory plan's worst admitted load.

    python -m bench.pod_memory [--layout split|one] [--decoders N] [--http-threads N] [--cpu C] [--memory 2Gi]
                               [--gpu] [--seconds S] [--out DIR]

The example model's server (value.py's environment, as `make serve` derives it; the layout, cores, request threads and
memory as given), started in a memory cgroup of its own where the machine allows one. At rest (ready, then idle), and
then for `--seconds` under the plan's worst admitted load: every thread that may decode an image decoding the largest
WebP the pod admits (`max_image_pixels`: WebP is the format whose decode holds the most per pixel, bench.decode_memory),
every video thread a 4K video, parses of bodies just under the plan's `per_parse`, clients that upload a body and hang
up, and ordinary requests, all at once, each loop bounded in time. Each process's /proc/<pid>/status is sampled at
20 Hz: its own memory (RssAnon + RssFile) at rest and at its peak, its shared memory (RssShmem: the arenas it maps),
and VmHWM; the pod's cgroup peak (memory.max_usage_in_bytes) where there is one. Beside each, the plan's figure for
that process (podserve/memory_plan.py: `MemoryPlan.process_figures`). Writes <out>/pod-memory-<layout>.json and .md.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import math
import os
import platform
import socket
import sys
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(REPO))

from bench.decode_memory import VIDEO_OPTIONS, noise_video  # noqa: E402
from bench.systems import Server, free_port  # noqa: E402
from podserve import memory_plan  # noqa: E402
from podserve.settings import ServingSettings  # noqa: E402
from podserve.tooling import quantity  # noqa: E402

MODEL = REPO / "model" / "ch_ppocr_mobile_v2.0_cls_mobile.onnx"
IMAGE = REPO / "examples" / "text-line.png"
SAMPLE_SECONDS = 0.05
MIB = 1 << 20
#: The most nested-list JSON one request carries by default (--junk-mib): json.loads holds the GIL 0.26 s of CPU a MB
#: of it here, and a decoder whose heartbeat stops 3 s is killed.
JUNK_MIB = 2.0
CGROUP_V1 = Path("/sys/fs/cgroup/memory")
#: Which module each process of a pod runs (its command line), and its role in the plan.
ROLES = {"podserve.runtime.processes.front_process": "front", "podserve.runtime.processes.decoder_process": "decoder",
         "podserve.runtime.processes.model_process": "model"}


def status_fields(pid: int) -> dict[str, int] | None:
    """RssAnon, RssFile, RssShmem and VmHWM of a process, in bytes (None once it is gone)."""
    try:
        lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    except OSError:
        return None
    wanted = ("RssAnon:", "RssFile:", "RssShmem:", "VmHWM:", "VmRSS:")
    return {line.split(":")[0]: int(line.split()[1]) * 1024 for line in lines if line.startswith(wanted)}


def role_of(pid: int, main: int) -> str:
    try:
        command = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return "gone"
    for argument in command:
        role = ROLES.get(argument.decode(errors="replace"))
        if role:
            return role
    return "main" if pid == main else "other"


class Sampler(threading.Thread):
    """Each process's own memory (RssAnon + RssFile) and shared memory at its most, sampled every SAMPLE_SECONDS."""

    def __init__(self, server: Server):
        super().__init__(daemon=True)
        self.server, self.stop = server, threading.Event()
        self.peaks: dict[int, dict[str, int]] = {}
        self.roles: dict[int, str] = {}
        self.pod_peak = 0

    def run(self) -> None:
        while not self.stop.is_set():
            total = 0
            for pid in self.server.pids():
                fields = status_fields(pid)
                if not fields:
                    continue
                own = fields["RssAnon"] + fields["RssFile"]
                if pid not in self.roles:
                    self.roles[pid] = role_of(pid, self.server.process.pid)
                peak = self.peaks.setdefault(pid, {"own": 0, "shmem": 0})
                peak["own"], peak["shmem"] = max(peak["own"], own), max(peak["shmem"], fields["RssShmem"])
                total += own
            self.pod_peak = max(self.pod_peak, total)
            time.sleep(SAMPLE_SECONDS)


def snapshot(server: Server) -> dict[int, dict]:
    main = server.process.pid
    return {pid: {"role": role_of(pid, main), **(status_fields(pid) or {})} for pid in server.pids()}


def reset_peaks(server: Server, cgroup: Path | None) -> None:
    """Set every process's VmHWM (and the cgroup's peak) back to what it holds now."""
    for pid in server.pids():
        try:
            Path(f"/proc/{pid}/clear_refs").write_text("5")
        except OSError:
            pass
    if cgroup is not None:
        (cgroup / "memory.max_usage_in_bytes").write_text("0")


def make_cgroup() -> Path | None:
    """A memory cgroup (v1) of its own for the server, without a limit, or None where the machine has none for us."""
    folder = CGROUP_V1 / f"podserve-bench-{os.getpid()}"
    try:
        folder.mkdir()
    except OSError:
        return None
    return folder


def largest_webp(pixels: int) -> bytes:
    """A lossless WebP of `pixels` pixels (4:5), its body small (a repeating tile): the decode that holds the most."""
    from PIL import Image

    width = int((pixels * 5 / 4) ** 0.5)
    height = pixels // width
    tile = np.random.default_rng(3).integers(0, 256, (64, 64, 4), dtype=np.uint8)
    pixels_array = np.tile(tile, (height // 64 + 1, width // 64 + 1, 1))[:height, :width]
    out = io.BytesIO()
    Image.fromarray(pixels_array, "RGBA").save(out, "WEBP", lossless=True, method=0)
    return out.getvalue()


def video_4k(max_bytes: int, max_pixels: int) -> bytes:
    """An h264 MP4 at the largest frame the pod admits (3840x2160 by default), 2 frames a second, under max_bytes,
    with 16 reference frames and B-frames: the most a decoder keeps (bench.decode_memory)."""
    width = 3840 if max_pixels >= 3840 * 2160 else int((max_pixels * 16 / 9) ** 0.5) // 16 * 16
    height = width * 9 // 16 // 16 * 16
    for count in (20, 12, 8, 4):
        video = noise_video(width, height, count, "libx264", VIDEO_OPTIONS["libx264 16 references, B-frames"])
        if len(video) <= max_bytes:
            return video
    raise RuntimeError("no 4K video fits max_video_bytes")


def largest_request(image: bytes, per_parse: int, max_body: int, junk_bytes: int) -> bytes:
    """The worst request one thread may hold at once: a JSON body carrying `image` and, beside it, lists nested 900
    deep (the JSON whose tree holds the most per byte: 47 bytes a byte beyond its text, bench.decode_memory), as many
    as the plan's per_parse admits (api.py counts every byte that is not base64 text as a value) within
    max_body_bytes. Its tree is alive while its image is decoded."""
    head = json.dumps({"postid": "largest", "image": base64.b64encode(image).decode()})[:-1].encode() + b', "junk": ['
    chunk = b"[" * 900 + b"]" * 900
    room = min(max_body - len(head) - 2, (per_parse - 2 * len(head)) // (2 + memory_plan.JSON_VALUE_BYTES), junk_bytes)
    return head + b",".join([chunk] * max(0, room // (len(chunk) + 1))) + b"]}"


class Load:
    """Loops of requests, each bounded by the window's end, counting each answer's status by kind."""

    def __init__(self, port: int, path: str, until: float):
        self.port, self.path, self.until = port, path, until
        self.outcomes: dict[str, dict[str, int]] = {}
        self.lock = threading.Lock()
        self.threads: list[threading.Thread] = []

    def count(self, kind: str, outcome) -> None:
        with self.lock:
            kinds = self.outcomes.setdefault(kind, {})
            kinds[str(outcome)] = kinds.get(str(outcome), 0) + 1

    def post(self, kind: str, body: bytes, content_type: str) -> None:
        request = urllib.request.Request(f"http://127.0.0.1:{self.port}{self.path}", data=body, method="POST",
                                         headers={"Content-Type": content_type})
        try:
            with urllib.request.urlopen(request, timeout=60) as reply:
                reply.read()
                self.count(kind, reply.status)
        except urllib.error.HTTPError as exc:
            self.count(kind, exc.code)
        except OSError as exc:
            self.count(kind, type(exc).__name__)

    def trickle(self, body: bytes, chunk: int = 1 << 20, pause: float = 0.25, kind: str = "slow_upload") -> None:
        """Send a request's body a chunk at a time (a slow upload: its bytes held by the HTTP server as they come),
        then read its answer."""
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=60) as sock:
                sock.sendall(f"POST {self.path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                             f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode())
                for start in range(0, len(body), chunk):
                    sock.sendall(body[start:start + chunk])
                    time.sleep(pause)
                answer = sock.recv(64)
            self.count(kind, answer.split(b" ")[1].decode() if answer.count(b" ") else "closed")
        except OSError as exc:
            self.count(kind, type(exc).__name__)

    def hang_up(self, body: bytes) -> None:
        """Send a whole request, then close without reading its answer."""
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=10) as sock:
                sock.sendall(f"POST {self.path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                             f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
            self.count("hang_up", "sent")
        except OSError as exc:
            self.count("hang_up", type(exc).__name__)

    def loop(self, kind: str, send) -> None:
        def run() -> None:
            while time.monotonic() < self.until:
                send()

        thread = threading.Thread(target=run, name=kind, daemon=True)
        self.threads.append(thread)
        thread.start()

    def join(self) -> None:
        for thread in self.threads:
            thread.join(timeout=120)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layout", choices=("split", "one"), default="split")
    parser.add_argument("--decoders", type=int, default=1)
    parser.add_argument("--http-threads", type=int, default=1)
    parser.add_argument("--cpu", type=float, default=1.0)
    parser.add_argument("--memory", default="2Gi")
    parser.add_argument("--gpu", action="store_true", help="gpu_num = 1: the model process on CUDA")
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--junk-mib", type=float, default=JUNK_MIB,
                        help="nested-list JSON beside each largest image, at most what per_parse admits")
    parser.add_argument("--load", choices=("worst", "ordinary", "none"), default="worst",
                        help="the plan's worst admitted load, ordinary requests only (32 clients), or none")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "pod-memory")
    args = parser.parse_args(argv)

    from podserve.tooling.serve_local import local_environment

    decoders = args.decoders if args.layout == "split" else 0
    env = local_environment(str(REPO / "value.py"), dict(os.environ))
    port = free_port()
    env.update({"PODSERVE_PORT": str(port), "PODSERVE_MODEL_PATH": str(MODEL), "PODSERVE_DECODE_PROCESSES": str(decoders),
                "PODSERVE_CPU": str(args.cpu), "PODSERVE_HTTP_THREADS": str(args.http_threads),
                "PODSERVE_MEMORY_BYTES": str(quantity.memory_bytes(args.memory)),
                "PODSERVE_GPU_NUM": "1" if args.gpu else "0", "PODSERVE_GPU_MEMORY": "2" if args.gpu else "0",
                "PODSERVE_DRAIN_SECONDS": "0", "PODSERVE_REQUEST_TIMEOUT_MS": "60000", "PYTHONPATH": os.pathsep.join([os.environ.get("PYTHONPATH", ""), str(REPO / "src"), str(REPO)])})
    settings = ServingSettings.from_env(env)
    cores = max(1, int(min(args.cpu, len(os.sched_getaffinity(0)))))
    plan = memory_plan.plan(settings, decoders, args.gpu, MODEL.stat().st_size)
    args.out.mkdir(parents=True, exist_ok=True)
    name = f"pod-memory-{args.layout}{'-gpu' if args.gpu else ''}"
    cgroup = make_cgroup()
    if cgroup is not None:  # the server and every process it starts are charged to it
        env["PODSERVE_BENCH_CGROUP"] = str(cgroup / "cgroup.procs")
    command = [sys.executable, "-c", "import os, runpy; p = os.environ.pop('PODSERVE_BENCH_CGROUP', None); "
               "p and open(p, 'w').write(str(os.getpid())); runpy.run_module('podserve.runtime', run_name='__main__')"]
    server = Server(name, "ours", command, env, port, settings.service_name, args.out / f"{name}.log", "")
    result: dict = {"command": "python -m bench." + Path(__file__).stem + " " + " ".join(argv or sys.argv[1:]),
                    "machine": f"{platform.node()}, {os.cpu_count()} cores", "date": time.strftime("%Y-%m-%d %H:%M UTC",
                                                                                                time.gmtime()),
                    "settings": {"layout": args.layout, "decoders": decoders, "http_threads": args.http_threads,
                                 "cpu": args.cpu, "memory": args.memory, "gpu": args.gpu,
                                 "max_image_pixels": settings.max_image_pixels},
                    "plan": getattr(plan, "shares", lambda: plan.__dict__)(), "plan_processes": getattr(plan, "process_figures", dict)()}
    try:
        server.wait_ready(240)
        time.sleep(3)
        result["rest"] = {str(pid): fields for pid, fields in snapshot(server).items()}
        if cgroup is not None:
            result["rest_cgroup"] = int((cgroup / "memory.usage_in_bytes").read_text())
        if args.load != "none":
            result.update(run_load(server, settings, plan, cores, args.seconds, cgroup, args.load == "worst",
                                   args.junk_mib))
    finally:
        server.process.terminate()
        try:
            server.process.wait(60)
        except Exception:
            server.process.kill()
        if cgroup is not None:
            time.sleep(0.5)
            try:
                cgroup.rmdir()
            except OSError:
                pass
    (args.out / f"{name}.json").write_text(json.dumps(result, indent=2) + "\n")
    (args.out / f"{name}.md").write_text(markdown(result) + "\n")
    print(markdown(result))
    return 0


def run_load(server: Server, settings: ServingSettings, plan, cores: int, seconds: float, cgroup: Path | None,
             worst: bool, junk_mib: float = JUNK_MIB) -> dict:
    """The plan's worst admitted load (or 32 clients of ordinary requests) for `seconds`; each process's peaks and
    what each kind of request got."""
    image_json = json.dumps({"postid": "o", "image": base64.b64encode(IMAGE.read_bytes()).decode()}).encode()
    load = Load(server.port, server.path, 0)
    details: dict = {"seconds": seconds}
    senders = []
    if worst:
        webp = largest_webp(settings.max_image_pixels)
        video = video_4k(settings.max_video_bytes, settings.max_video_pixels)
        largest = largest_request(webp, plan.per_parse, settings.max_body_bytes, int(junk_mib * MIB))
        uploaded = video_json(video)
        details.update(largest_request_threads=plan.parsers, largest_image_bytes=len(webp),
                       largest_request_bytes=len(largest), video_threads=plan.videos, video_bytes=len(video))
        small = image_json + b" " * (memory_plan.LARGE_BODY_BYTES - len(image_json))
        # videos waiting for a video thread hold their bodies: enough of them to fill the bodies' share; slow uploads
        # of videos and of small bodies to fill the share of bodies being sent (large ones may hold three quarters)
        queued = plan.videos + math.ceil(plan.bodies * memory_plan.LARGE_BODY_SHARE / len(uploaded))
        slow_large = math.ceil(plan.uploads * memory_plan.LARGE_BODY_SHARE / len(uploaded)) + 1
        slow_small = math.ceil(plan.uploads * (1 - memory_plan.LARGE_BODY_SHARE) / len(small)) + 1
        details.update(video_clients=queued, slow_large=slow_large, slow_small=slow_small)
        senders += [("largest", lambda: load.post("largest", largest, "application/json"))] * plan.parsers
        senders += [("video_4k", lambda: load.post("video_4k", uploaded, "application/json"))] * queued
        senders += [("hang_up", lambda: load.hang_up(uploaded))] * 4
        senders += [("slow_upload", lambda: load.trickle(uploaded))] * slow_large
        senders += [("slow_small", lambda: load.trickle(small, 64 << 10, 0.5, "slow_small"))] * slow_small
    senders += [("ordinary", lambda: load.post("ordinary", image_json, "application/json"))] * (4 if worst else 32)
    reset_peaks(server, cgroup)
    sampler = Sampler(server)
    sampler.start()
    load.until = time.monotonic() + seconds
    if worst:  # the event loop decodes too: cheap requests first, then a small body with the most pixels, which the
        # loop takes itself while the steps it has timed are cheap (runtime/batching/inline_policy.py)
        for _ in range(4):
            load.loop("ordinary", lambda: load.post("ordinary", image_json, "application/json"))
        time.sleep(min(5.0, seconds / 4))
        load.post("inline_image", webp, "application/octet-stream")
        senders = senders[:-4]
    for kind, send in senders:
        load.loop(kind, send)
    load.join()
    sampler.stop.set()
    sampler.join()
    after = snapshot(server)
    processes = {}
    for pid, peaks in sampler.peaks.items():  # every process seen during the load, those since ended too
        fields = after.get(pid) or {"role": sampler.roles.get(pid, "gone"), "ended": True}
        processes[str(pid)] = {**fields, "peak_own": peaks["own"], "peak_shmem": peaks["shmem"]}
    return {"load": {**details, "outcomes": load.outcomes},
            "peak": processes, "pod_peak_own": sampler.pod_peak,
            "peak_cgroup": int((cgroup / "memory.max_usage_in_bytes").read_text()) if cgroup is not None else None}


_VIDEO_JSON: dict[int, bytes] = {}


def video_json(video: bytes) -> bytes:
    key = id(video)
    if key not in _VIDEO_JSON:
        _VIDEO_JSON[key] = json.dumps({"postid": "gone", "video": base64.b64encode(video).decode()}).encode()
    return _VIDEO_JSON[key]


def markdown(result: dict) -> str:
    mib = lambda n: f"{n / MIB:,.0f}" if n is not None else "n/a"  # noqa: E731
    lines = [f"# {result['settings']}", "", f"`{result['command']}`, {result['machine']}, {result['date']}", "",
             "| process | at rest: own (anon+file) MiB | shmem MiB | under load: own peak MiB | shmem peak MiB | "
             "VmHWM MiB | plan's figure MiB |", "|---|---|---|---|---|---|---|"]
    figures = result["plan_processes"]
    for pid in {**result["rest"], **result.get("peak", {})}:
        rest, peak = result["rest"].get(pid, {}), result.get("peak", {}).get(pid, {})
        role = rest.get("role") or peak.get("role", "?")
        if role == "main":  # the process started: the supervisor, or the one process
            role = "supervisor" if "supervisor" in figures else "one process"
        lines.append(f"| {role} ({pid}) | {mib(rest.get('RssAnon', 0) + rest.get('RssFile', 0))} | "
                     f"{mib(rest.get('RssShmem'))} | {mib(peak.get('peak_own'))} | {mib(peak.get('peak_shmem'))} | "
                     f"{mib(peak.get('VmHWM', rest.get('VmHWM')))} | {mib(figures.get(role))} |")
    lines += ["", f"cgroup at rest {mib(result.get('rest_cgroup'))} MiB; peak under load "
                  f"{mib(result.get('peak_cgroup'))} MiB; the plan: " + json.dumps(result["plan"])]
    if "load" in result:
        lines += ["", "load: " + json.dumps(result["load"])]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
