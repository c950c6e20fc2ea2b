"""The video row of `make bench`: sampled frames/s of our server against PyAV decode + onnxruntime alone (the ceiling).

Both sides get the same videos (made here with PyAV: 720p h264, 30 fps, a text line upright
then upside down) at c=1 and c=8 in a closed loop bounded in time. The ceiling decodes with
podserve/videos.py's own decoder (same sampling, same limits), turns each sampled frame into
the example's input and runs one single-threaded onnxruntime session per core on a video's frames
as one batch: no HTTP, no batcher, no admission. Then the figures the sidecar question needs
(README, "Videos"): decode-only sampled frames/s on one core, the share of the GIL decoding holds
(a Python thread spinning beside it), and the peak memory one video adds to a process.
Writes bench/results/video.{json,md}.
"""

from __future__ import annotations

import argparse
import http.client
import io
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from podserve.settings import ServingSettings  # noqa: E402
from podserve.videos import VideoLimits, decode_video  # noqa: E402

RESULTS = REPO / "bench" / "results"
MODEL = REPO / "model" / "ch_ppocr_mobile_v2.0_cls_mobile.onnx"
SECONDS_PER_POINT = 10.0
CONCURRENCY = (1, 8)


def make_videos(count: int = 4, seconds: int = 10, rate: int = 30, size: tuple[int, int] = (1280, 720)) -> list[bytes]:
    """`count` h264 MP4s of a text line (from examples/text-line.png) on a page, flipping at a different time each."""
    import av

    line = Image.open(REPO / "examples" / "text-line.png").convert("RGB")
    videos = []
    for n in range(count):
        page = Image.new("RGB", size, "white")
        page.paste(line.resize((line.width * 3, line.height * 3)), (100, 300))
        upright, flipped = np.asarray(page), np.asarray(page.rotate(180))
        out = io.BytesIO()
        with av.open(out, "w", format="mp4") as container:
            stream = container.add_stream("libx264", rate=rate, options={"preset": "veryfast"})
            stream.width, stream.height, stream.pix_fmt = size[0], size[1], "yuv420p"
            for i in range(seconds * rate):
                pixels = upright if i < (n + 2) * rate else flipped
                for packet in stream.encode(av.VideoFrame.from_ndarray(pixels, format="rgb24")):
                    container.mux(packet)
            for packet in stream.encode():
                container.mux(packet)
        videos.append(out.getvalue())
    return videos


# --- our server --------------------------------------------------------------------------------------------------

def start_server(port: int, log: Path) -> subprocess.Popen:
    settings = ServingSettings(host="127.0.0.1", port=port, service_name="text-direction",
                               handler="server:TextDirection", model_path=str(MODEL), max_batch_size=16,
                               max_batch_delay_ms=5, queue_size=64)
    env = {**os.environ, **settings.to_env(), "PYTHONPATH": str(REPO / "src")}
    process = subprocess.Popen([sys.executable, "-m", "podserve.runtime"], env=env, cwd=REPO,
                               stdout=open(log, "wb"), stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            connection.request("GET", "/api/ping")
            if connection.getresponse().status == 200:
                return process
        except OSError:
            pass
        time.sleep(0.2)
    process.kill()
    raise RuntimeError(f"the server did not start: {log.read_text()[-2000:]}")


def server_point(port: int, videos: list[bytes], clients: int, seconds: float) -> dict:
    """Closed loop: `clients` connections each sending videos back to back for `seconds`; sampled frames/s."""
    frames, errors, stop = [0] * clients, [0] * clients, time.monotonic() + seconds

    def client(k: int) -> None:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        n = k
        while time.monotonic() < stop:
            connection.request("POST", "/api/text-direction", body=videos[n % len(videos)],
                               headers={"Content-Type": "video/mp4"})
            reply = connection.getresponse()
            body = reply.read()
            if reply.status == 200:
                frames[k] += len(json.loads(body)["results"]["frames"])
            else:
                errors[k] += 1
            n += 1

    wall = _run_threads(client, clients)
    return {"frames_per_second": round(sum(frames) / wall, 1), "errors": sum(errors), "seconds": round(wall, 1)}


def _run_threads(target, count: int) -> float:
    """Run target(0) .. target(count - 1) on their own threads; return the seconds until the last ended."""
    began = time.monotonic()
    threads = [threading.Thread(target=target, args=(k,)) for k in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return time.monotonic() - began


# --- the ceiling ---------------------------------------------------------------------------------------------------

def ceiling_point(videos: list[bytes], clients: int, seconds: float, cores: int) -> dict:
    """The better of two ways to spend the cores: min(clients, cores) threads each decoding on one FFmpeg thread, or
    one thread decoding on every core (FFmpeg's frame threads); each thread then runs a single-threaded session."""
    ways = {(max(1, min(clients, cores)), 1), (1, cores)}
    results = [_ceiling_way(videos, workers, threads, seconds / len(ways)) for workers, threads in sorted(ways)]
    return max(results, key=lambda r: r["frames_per_second"])


def _ceiling_way(videos: list[bytes], workers: int, ffmpeg_threads: int, seconds: float) -> dict:
    import onnxruntime as ort

    sys.path.insert(0, str(REPO / "src"))
    from server import TextDirection

    to_input = TextDirection().to_input
    options = ort.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    session = ort.InferenceSession(str(MODEL), sess_options=options, providers=["CPUExecutionProvider"])
    limits = VideoLimits(threads=ffmpeg_threads)
    frames, stop = [0] * workers, time.monotonic() + seconds

    def work(k: int) -> None:
        n = k
        while time.monotonic() < stop:
            batch = np.stack([to_input(frame.image) for frame in decode_video(videos[n % len(videos)], limits)])
            session.run(None, {"x": batch})
            frames[k] += len(batch)
            n += 1

    wall = _run_threads(work, workers)
    return {"frames_per_second": round(sum(frames) / wall, 1), "threads": workers, "ffmpeg_threads": ffmpeg_threads}


# --- the sidecar question --------------------------------------------------------------------------------------------

def decoder_figures(videos: list[bytes], seconds: float = 6.0) -> dict:
    """Decode-only sampled frames/s on one core; the GIL share decoding holds; peak memory of one video."""
    limits = VideoLimits(threads=1)
    count, decoded_at = 0, time.monotonic()
    while time.monotonic() - decoded_at < seconds:
        count += sum(1 for _ in decode_video(videos[count % len(videos)], limits))
    per_core = count / (time.monotonic() - decoded_at)

    def spin(stop: float) -> int:
        n = 0
        while time.monotonic() < stop:
            n += 1
        return n

    alone = spin(time.monotonic() + 2.0) / 2.0
    result: dict = {}
    stop_at = time.monotonic() + 3.0

    def decode_loop() -> None:
        samples = 0
        while time.monotonic() < stop_at:
            samples += sum(1 for _ in decode_video(videos[samples % len(videos)], limits))
        result["samples"] = samples

    decoder = threading.Thread(target=decode_loop)
    decoder.start()
    beside = spin(stop_at) / 3.0
    decoder.join()
    gil_share = max(0.0, 1.0 - beside / alone)
    gil_ms_per_frame = gil_share * 3.0 * 1000 / max(1, result["samples"])
    memory = subprocess.run([sys.executable, "-c", _MEMORY_PROBE], input=videos[0], capture_output=True, check=True)
    return {"decode_sampled_frames_per_second_one_core": round(per_core, 1),
            "decode_gil_share": round(gil_share, 3), "gil_ms_per_sampled_frame": round(gil_ms_per_frame, 2),
            "peak_memory_mib_one_video": json.loads(memory.stdout)["mib"], "video_bytes": len(videos[0])}


_MEMORY_PROBE = f"""
import json, sys
sys.path.insert(0, {str(REPO / 'src')!r})
from podserve.videos import VideoLimits, decode_video
sys.path.insert(0, {str(REPO / 'src')!r})
from server import TextDirection
to_input = TextDirection().to_input
data = sys.stdin.buffer.read()
small = data[:0]
import io, av, numpy as np
out = io.BytesIO()
with av.open(out, "w", format="mp4") as c:
    s = c.add_stream("libx264", rate=1); s.width, s.height, s.pix_fmt = 64, 64, "yuv420p"
    for p in s.encode(av.VideoFrame.from_ndarray(np.zeros((64, 64, 3), np.uint8), format="rgb24")): c.mux(p)
    for p in s.encode(): c.mux(p)
for f in decode_video(out.getvalue(), VideoLimits(threads=1)):  # warm: FFmpeg's libraries and the model code
    to_input(f.image)
def status(key):
    return next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith(key + ":"))
before = status("VmRSS")
open("/proc/self/clear_refs", "w").write("5")  # the peak (VmHWM) starts again from now
inputs = [to_input(f.image) for f in decode_video(data, VideoLimits(threads=1))]  # as the server keeps them
print(json.dumps({{"mib": round((status("VmHWM") - before) / 1024, 1)}}))
"""


def main(argv: list[str] | None = None) -> int:
    from bench.systems import free_port

    argparse.ArgumentParser(description=__doc__.splitlines()[0],
                            epilog="Takes no options: `make bench` runs it after bench.run.").parse_args(argv)

    cores = len(os.sched_getaffinity(0))
    videos = make_videos()
    print(f"videos: {len(videos)} x 10 s 720p h264 30 fps ({sum(map(len, videos)) // len(videos) // 1024} KiB each)")
    figures = decoder_figures(videos)
    print(f"decoder: {figures}")
    port = free_port()
    log = Path("/tmp") / f"bench-video-{port}.log"
    server = start_server(port, log)
    rows = []
    try:
        server_point(port, videos, 1, 2.0)  # warm-up
        for clients in CONCURRENCY:
            ours = server_point(port, videos, clients, SECONDS_PER_POINT)
            ceiling = ceiling_point(videos, clients, SECONDS_PER_POINT, cores)
            rows.append({"concurrency": clients, "ours": ours, "ceiling": ceiling,
                         "ratio": round(ours["frames_per_second"] / ceiling["frames_per_second"], 2)})
            print(f"c={clients}: ours {ours['frames_per_second']} sampled frames/s ({ours['errors']} errors), ceiling "
                  f"{ceiling['frames_per_second']}: {rows[-1]['ratio']}x")
    finally:
        server.terminate()
        server.wait(30)
    report = {"machine": {"cores": cores}, "command": os.environ.get("BENCH_COMMAND", "python -m bench.video"),
              "videos": "4 x 10 s 1280x720 h264 30 fps, sampled at 1 frame/s (10 frames each)",
              "rows": rows, "decoder": figures}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "video.json").write_text(json.dumps(report, indent=2) + "\n")
    lines = ["# Video: sampled frames/s, our server vs PyAV decode + onnxruntime alone", "",
             f"`{report['command']}` on {cores} cores; {report['videos']}.", "",
             "| c | ours (frames/s) | ceiling (frames/s) | ours / ceiling | errors |", "|---|---|---|---|---|"]
    lines += [f"| {r['concurrency']} | {r['ours']['frames_per_second']} | {r['ceiling']['frames_per_second']} | "
              f"{r['ratio']} | {r['ours']['errors']} |" for r in rows]
    lines += ["", "Decoding in-process (the sidecar question, docs/videos.md):", "",
              f"- decode only, one core: {figures['decode_sampled_frames_per_second_one_core']} sampled frames/s",
              f"- GIL held while decoding: {figures['decode_gil_share'] * 100:.0f}% of the decoder's time, "
              f"{figures['gil_ms_per_sampled_frame']} ms per sampled frame",
              f"- peak memory one video adds: {figures['peak_memory_mib_one_video']} MiB "
              f"({figures['video_bytes'] // 1024} KiB file)", ""]
    (RESULTS / "video.md").write_text("\n".join(lines))
    print(f"wrote {RESULTS / 'video.md'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
