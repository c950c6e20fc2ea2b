"""A model team's first day, on a fresh copy of the repo: its own handler, model and package, served as README says.

The team replaces the example with a service of its own, touching only value.py, src/server.py, model/ and
requirements/service.txt: a handler whose `encode` needs what `decode` knew about each request (the photo's size,
to map the box found on a 64x64 thumbnail back to the photo), its own ONNX model recorded with `make record`, and
one pinned package of its own (more-itertools, from PyPI). Then `make render`, `make serve` and a request.
"""

from __future__ import annotations

import io
import json
import re

from PIL import Image

from fresh_copy import Background, answers_ping, changed_paths, fresh_copy, run
from podserve.model_record import RECORD_NAME, read_record, sha256_of
from podserve.testbed.processes import free_port

#: The team's package, pinned, and the handler that imports it (more_itertools is not in this checkout's venv).
PACKAGE = "more-itertools==11.2.1"
SERVER = '''"""Where is the bright part of a photo? The model marks bright pixels on a 64x64 thumbnail."""

import numpy as np
from more_itertools import minmax
from PIL import Image

from podserve import OnnxHandler, Payload, WithContext

SIDE = 64


class BrightBox(OnnxHandler):
    input_shape = (1, SIDE, SIDE)

    def decode(self, payload: Payload) -> WithContext:
        image = payload.open_image(mode="L")
        thumbnail = np.asarray(image.resize((SIDE, SIDE), Image.BILINEAR), dtype=np.float32) / 255.0
        scale = (image.width / SIDE, image.height / SIDE)  # what encode needs to map the box back
        return WithContext(thumbnail[np.newaxis], scale)

    def encode(self, scores: np.ndarray, scale) -> dict:
        rows, columns = np.nonzero(scores[0] > 0.5)
        if rows.size == 0:
            return {"box": None}
        (top, bottom), (left, right) = minmax(rows.tolist()), minmax(columns.tolist())
        across, down = scale
        return {"box": [round(left * across), round(top * down), round((right + 1) * across),
                        round((bottom + 1) * down)]}
'''


def bright_model(path) -> None:
    """The team's model: each pixel's probability of being bright, sigmoid(20 (x - 0.5)), over [N, 1, 64, 64]."""
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Sub", ["x", "half"], ["centred"]), helper.make_node("Mul", ["centred", "slope"], ["z"]),
         helper.make_node("Sigmoid", ["z"], ["bright"])],
        "bright",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1, 64, 64])],
        [helper.make_tensor_value_info("bright", TensorProto.FLOAT, ["N", 1, 64, 64])],
        [helper.make_tensor("half", TensorProto.FLOAT, [], [0.5]), helper.make_tensor("slope", TensorProto.FLOAT, [], [20.0])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, path)


def photo(size: tuple[int, int], box: tuple[int, int, int, int]) -> bytes:
    """A dark PNG photo of `size` with a white rectangle at `box` (left, top, right, bottom)."""
    image = Image.new("L", size, 10)
    image.paste(250, box)
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


def test_a_second_service_with_context_its_own_model_and_package_renders_and_serves(tmp_path):
    copy = fresh_copy(tmp_path / "repo")
    # What the team writes: its handler, its model (then recorded), its package, and three fields of value.py.
    (copy / "src" / "server.py").write_text(SERVER)
    bright_model(copy / "model" / "bright.onnx")
    with open(copy / "requirements" / "service.txt", "a") as service:
        service.write(PACKAGE + "\n")
    values = (copy / "value.py").read_text()
    for field, value in (("service_name", "bright-box"), ("handler", "server:BrightBox"),
                         ("model_path", "model/bright.onnx")):
        values, count = re.subn(rf'^{field} = "[^"]*"', f'{field} = "{value}"', values, flags=re.M)
        assert count == 1, field
    (copy / "value.py").write_text(values)

    run("make record", copy)
    assert read_record(copy / "model") == {"bright.onnx": sha256_of(copy / "model" / "bright.onnx")}
    rendered = run("make render", copy)
    assert "build/manifests/grey: " in rendered.stdout
    assert "bright-box" in (copy / "build" / "manifests" / "grey" / "deployment.yaml").read_text()

    port = free_port()
    server = Background("make serve", copy, tmp_path / "serve.log", PODSERVE_PORT=str(port))
    try:
        server.wait_until(lambda: answers_ping(port), timeout=240)  # the venv gets the team's package first
        answers = []
        for name, size, box in (("wide.png", (640, 320), (320, 160, 640, 320)),
                                ("tall.png", (200, 400), (0, 100, 100, 400))):
            (tmp_path / name).write_bytes(photo(size, box))
            done = run(f"curl -s -X POST 'localhost:{port}/api/bright-box?postid={name}' "
                       f"-H 'Content-Type: application/octet-stream' --data-binary @{tmp_path / name}", copy)
            answers.append(json.loads(done.stdout))
    finally:
        server.stop()  # Ctrl-C: make itself ends interrupted, the server it started exits cleanly
    assert [a["postid"] for a in answers] == ["wide.png", "tall.png"]
    # Each box is in its own photo's pixels: the context carried each photo's size from decode to encode.
    assert [a["results"]["box"] for a in answers] == [[320, 160, 640, 320], [0, 100, 100, 400]]
    assert '"msg": "exited cleanly"' in server.log()
    assert "more-itertools" not in _installed_here() and (copy / ".venv").is_dir()
    assert changed_paths(copy) == {"value.py", "src/server.py", "requirements/service.txt", "model/bright.onnx",
                                   f"model/{RECORD_NAME}"}
    assert not list((copy / "model").glob("ch_ppocr*")), "the example model was fetched though value.py names another"



def _installed_here() -> str:
    import importlib.metadata

    return " ".join(d.metadata["Name"].lower() for d in importlib.metadata.distributions())
