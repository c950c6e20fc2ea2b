"""Hostile videos: each refused within a second with a 400 or 413 naming the limit, while images are still answered."""

from __future__ import annotations

import base64
import io
import threading
import time

import numpy as np
import pytest
from images import text_image
from PIL import Image
from videos import Unseekable, encode, flipping_video

MIB = 1024 * 1024


def _gif() -> bytes:
    frames = [Image.new("RGB", (64, 32), color) for color in ("white", "black", "white")]
    out = io.BytesIO()
    frames[0].save(out, "GIF", save_all=True, append_images=frames[1:], duration=500)
    return out.getvalue()


def _hostile() -> dict[str, tuple[dict, int, str, str]]:
    """name -> (request, status, field, words the message must hold)."""
    video = flipping_video(seconds=4, rate=5)
    tiny = np.zeros((32, 64, 3), np.uint8)
    mkv_stream = Unseekable()
    unclaimed = encode([tiny] * 70, 1, fmt="matroska", sink=mkv_stream)  # 70 s, and no length in its header
    claimed_long = encode([tiny] * 70, 1)
    bomb = encode([np.zeros((4096, 4096, 3), np.uint8)], 1)  # 16.7 Mpx a frame in a few KB
    noise = np.random.default_rng(29).integers(0, 255, (40, 32, 64, 3), dtype=np.uint8)
    mkv = encode(list(noise), 10, fmt="matroska")  # 4 s of noise: half the file holds frames of its first 2 s
    raw = {"Content-Type": "video/mp4"}
    return {
        "resolution bomb": ({"data": bomb, "headers": raw}, 400, "video", "max_video_pixels"),
        "too long by its header": ({"data": claimed_long, "headers": raw}, 400, "video", "max_video_seconds"),
        "too long, claiming nothing": ({"data": unclaimed, "headers": raw}, 400, "video", "max_video_frames"),
        "truncated mp4": ({"data": video[:len(video) // 2], "headers": raw}, 400, "video", "could not be read"),
        "truncated mkv": ({"data": mkv[:len(mkv) // 2], "headers": raw}, 400, "video", "truncated"),
        "wrong container": ({"data": _gif(), "headers": raw}, 400, "video", "image"),
        "image sent as video": ({"json": {"video": base64.b64encode(text_image("hello")).decode()}}, 400, "video",
                                "send it as 'image'"),
        "video sent as image": ({"data": video, "headers": {"Content-Type": "image/png"}}, 400, "image",
                                "send it as 'video'"),
        "over max_video_bytes raw": ({"data": b"\0" * (3 * MIB), "headers": raw}, 413, "body", "max_video_bytes"),
        "over max_video_bytes in JSON": ({"json": {"video": base64.b64encode(b"\0" * (2 * MIB + 1)).decode()}}, 413,
                                         "video", "max_video_bytes"),
        "an image over max_body_bytes in JSON": ({"json": {"image": "A" * (MIB + 8)}}, 413, "body",
                                                 "max_body_bytes"),
    }


@pytest.fixture(scope="module")
def server(start_module_server, example_model):
    return start_module_server(handler="server:TextDirection", model_path=str(example_model), service_name="example",
                               max_video_bytes=2 * MIB, max_body_bytes=MIB)


def test_hostile_videos_are_refused_within_a_second_naming_the_limit_while_images_are_answered(server):
    cases = _hostile()
    image = text_image("serving models")
    images_answered, stop = [], threading.Event()

    def send_images():
        with server.session.__class__() as session:
            while not stop.is_set() and len(images_answered) < 2000:
                reply = session.post(server.api, data=image, headers={"Content-Type": "image/png"}, timeout=10)
                images_answered.append(reply.status_code)

    sender = threading.Thread(target=send_images)
    sender.start()
    try:
        for name, (request, status, field, words) in cases.items():
            began = time.monotonic()
            reply = server.session.post(server.api, timeout=10, **request)
            seconds = time.monotonic() - began
            answer = reply.json()
            assert (reply.status_code, answer["field"]) == (status, field), (name, answer)
            assert words in answer["msg"], (name, answer["msg"])
            assert seconds < 1.0, (name, seconds)
            print(f"{name}: {reply.status_code} in {seconds * 1000:.0f} ms")
    finally:
        stop.set()
        sender.join(30)
    assert images_answered and set(images_answered) == {200}, images_answered[-5:]
    ok = server.post(data=flipping_video(seconds=2, rate=5), headers={"Content-Type": "video/mp4"})
    assert ok.status_code == 200 and len(ok.json()["results"]["frames"]) == 2
