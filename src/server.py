"""The example service: which way up is a line of text? (0 or 180 degrees) In an image, or in each sampled frame of a video.

The model is PaddleOCR's text-direction classifier, shipped in the rapidocr 3.10.0 wheel
(`make model` puts it in model/). It reads a crop of one text line and scores "upright"
against "upside down".
"""

import math

import numpy as np
from PIL import Image

from podserve import OnnxHandler, Payload, VideoFrame

HEIGHT, WIDTH = 48, 192
ANGLES = (0, 180)


class TextDirection(OnnxHandler):
    """Classify a text-line image, or each sampled frame of a video, as 0 or 180 degrees."""

    input_shape = (3, HEIGHT, WIDTH)
    video_frame_size = (WIDTH, HEIGHT)  # FFmpeg scales a video's frames down to cover it: to_input finishes

    def decode(self, payload: Payload) -> np.ndarray:
        return self.to_input(payload.open_image(mode="RGB", draft_size=(WIDTH, HEIGHT)))

    def decode_frame(self, frame: VideoFrame) -> np.ndarray:
        return self.to_input(frame.image)

    def to_input(self, image: Image.Image) -> np.ndarray:
        """Resize to height 48 keeping the aspect (width up to 192), pad right, scale to [-1, 1], BGR."""
        width, height = image.size
        resized_width = min(WIDTH, math.ceil(HEIGHT * width / height))
        pixels = np.asarray(image.resize((resized_width, HEIGHT), Image.BILINEAR))  # uint8, height x width x RGB
        item = np.zeros(self.input_shape, dtype=np.float32)
        scaled = item[:, :, :resized_width]
        # The model was trained on OpenCV's BGR channel order. Scaling straight from uint8 into the output is
        # one pass, and numpy runs it without holding the GIL.
        np.multiply(pixels[:, :, ::-1].transpose(2, 0, 1), 1 / 127.5, out=scaled, casting="unsafe")
        scaled -= 1.0
        return item

    def encode(self, scores: np.ndarray) -> dict:
        best = int(np.argmax(scores))
        return {"angle": ANGLES[best], "score": round(float(scores[best]), 4)}

    def encode_video(self, frames) -> dict:
        """Each sampled frame's angle and score, with its time in the video (seconds)."""
        return {"frames": [{"timestamp": frame.timestamp, **self.encode(frame.output)} for frame in frames]}
