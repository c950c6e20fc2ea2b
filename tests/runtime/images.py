"""Text-line images made on the spot, for the example model."""

from __future__ import annotations

import io

from PIL import Image, ImageDraw, ImageFont

WORDS = ["serving", "models", "batching", "one pod", "one GPU", "latency", "throughput", "Kubernetes",
         "queue depth", "warm-up", "drain", "deadline", "OCR 2026", "text line", "upside", "direction"]


def text_image(text: str, size: int = 32, upside_down: bool = False, fmt: str = "PNG") -> bytes:
    font = ImageFont.load_default(size=size)
    left, top, right, bottom = font.getbbox(text)
    image = Image.new("RGB", (right + 24, bottom + 20), "white")
    ImageDraw.Draw(image).text((12, 10), text, fill="black", font=font)
    if upside_down:
        image = image.rotate(180)
    out = io.BytesIO()
    image.save(out, fmt)
    return out.getvalue()


def varied_images(count: int) -> list[bytes]:
    """Return `count` different text images, half of them upside down."""
    return [text_image(WORDS[i % len(WORDS)], size=24 + (i // len(WORDS)) * 4, upside_down=bool(i % 2),
                       fmt="PNG" if i % 3 else "JPEG") for i in range(count)]
