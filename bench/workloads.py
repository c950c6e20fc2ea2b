"""The workloads: a fast model where the server's own overhead shows, a heavy one where it shouldn't, and a GPU
stand-in where only the pod's CPU side counts.

Each names its model, its handler (as `module:Class`, the way value.py names one), the
real images its requests carry, and how long one measuring window lasts at least.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

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


_IMAGES = {"fast": text_line_images, "heavy": page_images, "standin": text_line_images}

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
