"""The workloads: a fast model where the server's own overhead shows, a heavy one where it shouldn't, and a GPU
stand-in where only the pod's CPU side counts.

Each names its model, its handler (as `module:Class`, the way value.py names one), the
real images its requests carry, and how long one measuring window lasts at least.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

REPO = Path(__file__).resolve().parent.parent
EXAMPLES = REPO / "examples"


@dataclass(frozen=True)
class Workload:
    name: str
    title: str
    handler: str
    model_path: str  # relative to the repo
    ceiling_batches: tuple[int, ...]  # batch sizes the ceiling tries
    min_window_s: int  # shortest measuring window
    concurrencies: tuple[int, ...]  # the callers `make bench` measures it at

    def images(self) -> list[bytes]:
        return _IMAGES[self.name]()


def text_line_images() -> list[bytes]:
    """The repo's example text lines, upright and upside down, as PNG (as committed) and as JPEG."""
    pngs = [(EXAMPLES / name).read_bytes() for name in ("text-line.png", "text-line-upside-down.png")]
    return pngs + [_reencode(png, "JPEG") for png in pngs]


#: The classifier's callers' images, as (width, height, format, upside down), sent in this order and round again
#: (issue 70): of every 20 requests, 16 text-line crops a detector cut (narrow to wide, heights 24-64), 3 wider lines
#: and one camera frame with a line of text in it; clean PNG (screens, scans) and camera JPEG taking turns, upright
#: and upside down. Each is drawn here: the same bytes on every run with one Pillow.
CALLER_MIX = ((96, 24, "PNG", False), (128, 32, "JPEG", True), (160, 32, "PNG", False), (192, 40, "JPEG", True),
              (246, 58, "PNG", True), (256, 48, "JPEG", False), (288, 40, "PNG", True), (320, 48, "JPEG", False),
              (360, 56, "PNG", False), (400, 64, "JPEG", True), (200, 48, "PNG", False), (120, 30, "JPEG", True),
              (240, 36, "PNG", False), (300, 60, "JPEG", True), (180, 44, "PNG", True), (220, 52, "JPEG", False),
              (640, 96, "PNG", True), (960, 120, "JPEG", False), (1280, 160, "JPEG", True),
              (1920, 1080, "JPEG", False))
#: Camera JPEGs carry a sensor's noise (its standard deviation in levels) and a phone's quality; PNGs are clean.
CAMERA_NOISE, CAMERA_QUALITY = 4.0, 85
WORDS = ("one pod one GPU one process every admitted request answered batches formed while the model runs "
         "text lines from narrow crops to camera frames").split()


def text_line_mix() -> list[bytes]:
    """The classifier's callers' images (CALLER_MIX): text lines drawn at each size, encoded as each says."""
    return [_text_line(number, *spec) for number, spec in enumerate(CALLER_MIX)]


def _text_line(number: int, width: int, height: int, fmt: str, upside_down: bool) -> bytes:
    """A line of dark text on paper, `width` x `height`: the line fills a crop's height, a tenth of a frame's."""
    crop = width >= 3 * height
    paper = np.full((height, width, 3), 236, dtype=np.float32)
    if fmt == "JPEG":
        paper += np.random.default_rng(number).normal(0.0, CAMERA_NOISE, paper.shape)
    image = Image.fromarray(paper.clip(0, 255).astype(np.uint8))
    size = max(8, int(0.6 * height) if crop else height // 10)
    words = " ".join(WORDS[(number + i) % len(WORDS)] for i in range(16))
    ImageDraw.Draw(image).text((size // 3, (height - size) // 2), words, fill=(28, 28, 34),
                               font=ImageFont.load_default(size=size))
    if upside_down:
        image = image.rotate(180)
    out = io.BytesIO()
    image.save(out, fmt, **({"quality": CAMERA_QUALITY} if fmt == "JPEG" else {}))
    return out.getvalue()


def page_images() -> list[bytes]:
    """A 320x320 page of printed text (the detector's fixed input size), as JPEG and as PNG."""
    page = Image.new("RGB", (320, 320), "white")
    draw = ImageDraw.Draw(page)
    font = ImageFont.load_default(size=17)
    lines = ["Serving models on Kubernetes", "one pod = one GPU = one process", "dynamic batching per",
             "instance; queue depth, latency", "PP-OCRv6 text detection", "closed loop at 1, 8, 32, 64"]
    for number, line in enumerate(lines):
        draw.text((14 + 8 * (number % 3), 22 + 48 * number), line, fill=(20, 20, 20), font=font)
    out = io.BytesIO()
    page.save(out, "PNG")
    return [_reencode(out.getvalue(), "JPEG"), out.getvalue()]


def _reencode(data: bytes, fmt: str) -> bytes:
    out = io.BytesIO()
    Image.open(io.BytesIO(data)).convert("RGB").save(out, fmt, quality=90)
    return out.getvalue()


_IMAGES = {"fast": text_line_mix, "heavy": page_images, "standin": text_line_mix}

FAST = Workload("fast", "text-direction classifier (ch_ppocr_mobile_v2.0_cls, 48x192)", "server:TextDirection",
                "model/ch_ppocr_mobile_v2.0_cls_mobile.onnx", (1, 2, 4, 8, 16, 32, 64), 2,
                # 2 and 4: where one process's thread hand-offs and shared GIL cost most against Gunicorn's workers
                (1, 2, 4, 8, 32, 64))
HEAVY = Workload("heavy", "text detector (PP-OCRv6_det_small, fixed 320x320)", "bench.detector:TextDetector",
                 "model/PP-OCRv6_det_small.onnx", (1, 2, 4, 8), 3, (1, 8, 32, 64))
#: The example's decoding around a predict that waits 2 ms a call and holds no core (bench/standin.py): what the pod's
#: CPU side answers when the model runs elsewhere, as on a GPU. Measured only at c=64 (issue 55).
STANDIN = Workload("standin", "GPU stand-in: the classifier's decode and encode, a 2 ms predict that holds no core",
                   "bench.standin:GpuStandIn", FAST.model_path, (), 3, (64,))
WORKLOADS = {w.name: w for w in (FAST, HEAVY, STANDIN)}
