"""What one decode holds at its peak, measured alone: an image of each format, a 4K video, a JSON body of each shape.

    python -m bench.decode_memory [--pixels 24000000] [--out bench/results/pod-memory]

Each case runs in a fresh process: its input is made first, then the process's peak resident set is reset
(/proc/self/clear_refs 5) and the platform's own decoder runs (podserve.images.decode_image in RGB with the example's
draft size, podserve.videos.decode_video scaled to the example's input, json.loads); the peak over the resident set
before it is what the decode held. Per pixel (images, video frames) or per byte of body (JSON): what
podserve/memory_plan.py counts per decoding thread. Writes <out>/decode.md and decode.json.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

#: A case's code: it makes `data` (its input) and names `run` (the decode); the harness measures `run()`.
IMAGE = """
import io, numpy as np
from PIL import Image
from podserve.images import decode_image
fmt, mode, pixels = {fmt!r}, {mode!r}, {pixels}
width = int((pixels * 5 / 4) ** 0.5); height = pixels // width
tile = np.random.default_rng(1).integers(0, 256, (64, 64, 4), dtype=np.uint8)
rgba = np.tile(tile, (height // 64 + 1, width // 64 + 1, 1))[:height, :width]
make = {{"RGBA": lambda: Image.fromarray(rgba, "RGBA"), "RGB": lambda: Image.fromarray(rgba[:, :, :3].copy()),
        "L": lambda: Image.fromarray(rgba[:, :, 0].copy()), "LA": lambda: Image.fromarray(rgba[:, :, :2].copy(), "LA"),
        "I;16": lambda: Image.fromarray(rgba[:, :, 0].astype(np.uint16) * 250),
        "P": lambda: Image.fromarray(rgba[:, :, :3].copy()).quantize(64),
        "F": lambda: Image.fromarray(rgba[:, :, 0].astype(np.float32)),
        "CMYK": lambda: Image.fromarray(rgba, "RGBA").convert("CMYK")}}
out = io.BytesIO(); make[mode]().save(out, format=fmt, **({{"lossless": True}} if fmt == "WEBP" else {{}}))
data = out.getvalue(); del rgba, out
size = width * height
run = lambda: decode_image(data, max_pixels=pixels, mode="RGB", draft_size=(192, 48))
"""
VIDEO = """
from bench.decode_memory import VIDEO_OPTIONS, noise_video
from podserve.videos import VideoLimits, decode_video
variant, threads = {codec!r}, {threads}
codec, options = variant.split(" ")[0], VIDEO_OPTIONS[variant]
fmt = "webm" if codec == "libvpx-vp9" else "mp4"
width, height = 3840, 2160
limits = VideoLimits(threads=threads, max_frames=600, max_seconds=600, timeout_seconds=600)
list(decode_video(noise_video(64, 64, 4, codec, options, fmt), limits, size=(192, 48)))  # FFmpeg's libraries loaded
data = noise_video(width, height, 20, codec, options, fmt)  # 28 MB at 4K: within max_video_bytes
size = width * height
run = lambda: list(decode_video(data, limits, size=(192, 48)))
"""
#: Each video case's encoder options, by its name (its codec first).
VIDEO_OPTIONS = {"libx264": {"preset": "ultrafast"},
                 "libx264 16 references, B-frames": {"preset": "ultrafast", "x264-params": "ref=16:bframes=3"},
                 "libx265": {"preset": "ultrafast"}, "libvpx-vp9": {"deadline": "realtime", "cpu-used": "8"}}
JSON = """
import json
shape = {shape!r}
n = 10 << 20
data = {{"zeros": b"[" + b"0," * (n // 2 - 1) + b"0]", "dicts": b"[" + b"{{}}," * (n // 3 - 1) + b"{{}}]",
        "floats": b"[" + b"1.5," * (n // 4 - 1) + b"1.5]", "strings": b"[" + b'"a",' * (n // 4 - 1) + b'"a"]',
        "objects": b"[" + b'{{"a":0}},' * (n // 8 - 1) + b'{{"a":0}}]',
        "nested": b"[" + b",".join([b"[" * 900 + b"]" * 900] * (n // 1801)) + b"]"}}[shape]
size = len(data)
run = lambda: json.loads(data)
"""
HARNESS = """
import sys
sys.path[:0] = [{src!r}, {repo!r}]
{case}
def status(name):
    for line in open("/proc/self/status"):
        if line.startswith(name):
            return int(line.split()[1]) * 1024
import gc; gc.collect()
before = status("VmRSS:")
open("/proc/self/clear_refs", "w").write("5")
kept = run()
print(size, status("VmHWM:") - before)
"""
IMAGES = [("WEBP", "RGBA"), ("WEBP", "RGB"), ("PNG", "RGBA"), ("PNG", "RGB"), ("PNG", "LA"), ("PNG", "I;16"),
          ("PNG", "P"), ("PNG", "L"), ("GIF", "P"), ("BMP", "RGB"), ("TIFF", "F"), ("TIFF", "CMYK"), ("JPEG", "RGB")]
VIDEOS = [(codec, threads) for codec in VIDEO_OPTIONS for threads in (1, 2, 3)]
SHAPES = ["nested", "dicts", "objects", "floats", "zeros", "strings"]


def noise_video(width: int, height: int, count: int, codec: str = "libx264", options: dict | None = None,
                fmt: str = "mp4") -> bytes:
    """`count` frames of blocky noise (which compresses little) at 2 frames a second, encoded by PyAV."""
    import io

    import av
    import numpy as np

    rng = np.random.default_rng(2)
    frames = [rng.integers(0, 256, (height // 8, width // 8, 3), dtype=np.uint8).repeat(8, 0).repeat(8, 1)
              for _ in range(4)]
    out = io.BytesIO()
    with av.open(out, "w", format=fmt) as box:
        stream = box.add_stream(codec, rate=2, options=options or {})
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for i in range(count):
            for packet in stream.encode(av.VideoFrame.from_ndarray(frames[i % 4], format="rgb24")):
                box.mux(packet)
        for packet in stream.encode():
            box.mux(packet)
    return out.getvalue()


def measure(case: str) -> tuple[int, int]:
    """(the input's size: pixels or bytes, the peak the decode added) of one case, in a fresh process."""
    harness = HARNESS.format(src=str(REPO / "src"), repo=str(REPO), case=case)
    done = subprocess.run([sys.executable, "-c", harness], cwd=REPO, capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        raise RuntimeError(done.stderr[-2000:])
    size, peak = map(int, done.stdout.split()[-2:])
    return size, peak


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pixels", type=int, default=24_000_000)
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "pod-memory")
    parser.add_argument("--only", choices=("image", "video", "json"), help="one kind; the others kept from --out")
    args = parser.parse_args(argv)
    earlier = args.out / "decode.json"
    rows = [row for row in json.loads(earlier.read_text())["rows"] if row["kind"] != args.only] \
        if args.only and earlier.exists() else []
    kinds = {args.only} if args.only else {"image", "video", "json"}
    for fmt, mode in IMAGES if "image" in kinds else ():
        size, peak = measure(IMAGE.format(fmt=fmt, mode=mode, pixels=args.pixels))
        rows.append({"kind": "image", "case": f"{fmt} {mode}", "size": size, "peak": peak, "per_unit": peak / size})
    for codec, threads in VIDEOS if "video" in kinds else ():
        size, peak = measure(VIDEO.format(codec=codec, threads=threads))
        rows.append({"kind": "video", "case": f"{codec}, {threads} FFmpeg thread(s)", "size": size, "peak": peak,
                     "per_unit": peak / size})
    for shape in SHAPES if "json" in kinds else ():
        size, peak = measure(JSON.format(shape=shape))
        rows.append({"kind": "json", "case": shape, "size": size, "peak": peak, "per_unit": peak / size})
    rows.sort(key=lambda row: ("image", "video", "json").index(row["kind"]))
    machine = subprocess.run(["uname", "-n"], capture_output=True, text=True).stdout.strip()
    result = {"command": "python -m bench.decode_memory " + " ".join(argv or sys.argv[1:]), "machine": machine,
              "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "rows": rows}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "decode.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = [f"`{result['command']}` on {machine}, {result['date']}", "",
             "| kind | case | input (pixels or bytes) | peak over rest, MiB | bytes per pixel / per body byte |",
             "|---|---|---|---|---|"]
    lines += [f"| {r['kind']} | {r['case']} | {r['size']:,} | {r['peak'] / (1 << 20):,.1f} | {r['per_unit']:.2f} |"
              for r in rows]
    (args.out / "decode.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
