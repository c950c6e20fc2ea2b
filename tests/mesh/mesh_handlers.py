"""Handlers the mesh tests' pods serve: the tiny affine model, switched slow or broken from the test.

Each pod gets its own SWITCH_DIR (env). While SWITCH_DIR/slow exists, every predict call
first sleeps the seconds written in it; while SWITCH_DIR/broken exists, every predict call
raises (the pod answers 500, a broken handler). Every input that reaches predict has its
first number appended to SWITCH_DIR/predicted, so a test can tell which requests ran.

Per request, in decode: while SWITCH_DIR/decode_delay exists, decode first sleeps the seconds written in it (a
build that is slower); while SWITCH_DIR/failing_decodes holds N, every Nth decode raises (a 500: a build whose decode
fails on a share of real payloads); DECODE_FLOOR (env, seconds) makes every decode take at least that long, so the
server always runs it on a request thread, never its event loop (a held decode there would hold the whole pod).
ANSWER_MARK (env) wraps each answer as {"values": ..., "mark": ANSWER_MARK}: a test tells who answered.
"""

from __future__ import annotations

import itertools
import os
import threading
import time
from pathlib import Path

from fixture_handlers import Affine

SWITCH_ENV = "SWITCH_DIR"


_DECODES = itertools.count(1)
_DECODES_LOCK = threading.Lock()


class Switchable(Affine):
    """Affine whose predict and decode the test can slow down or break, per pod, at run time."""

    def decode(self, payload):
        started = time.monotonic()
        folder = Path(os.environ[SWITCH_ENV])
        delay = folder / "decode_delay"
        if delay.exists():
            time.sleep(float(delay.read_text() or "0.02"))
        failing = folder / "failing_decodes"
        if failing.exists():
            with _DECODES_LOCK:
                number = next(_DECODES)
            if number % int(failing.read_text() or "10") == 0:
                raise RuntimeError("this build's decode fails on some payloads (the test said so)")
        floor = float(os.environ.get("DECODE_FLOOR", "0"))
        time.sleep(max(0.0, floor - (time.monotonic() - started)))
        return super().decode(payload)

    def encode(self, output, context=None):
        answer = super().encode(output)
        mark = os.environ.get("ANSWER_MARK")
        return {"values": answer, "mark": mark} if mark else answer

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
