"""Handlers the mesh tests' pods serve: the tiny affine model, switched slow or broken from the test.

Each pod gets its own SWITCH_DIR (env). While SWITCH_DIR/slow exists, every predict call
first sleeps the seconds written in it; while SWITCH_DIR/broken exists, every predict call
raises (the pod answers 500, a broken handler). Every input that reaches predict has its
first number appended to SWITCH_DIR/predicted, so a test can tell which requests ran.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from fixture_handlers import Affine

SWITCH_ENV = "SWITCH_DIR"


class Switchable(Affine):
    """Affine whose predict the test can slow down or break, per pod, at run time."""

    def predict(self, batch):
        folder = Path(os.environ[SWITCH_ENV])
        with open(folder / "predicted", "a") as record:
            record.write("".join(f"{float(item[0])!r}\n" for item in batch))
        slow = folder / "slow"
        if slow.exists():
            time.sleep(float(slow.read_text() or "0.2"))
        if (folder / "broken").exists():
            raise RuntimeError("this pod's handler is broken (the test said so)")
        return super().predict(batch)
