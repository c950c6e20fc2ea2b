"""Handlers the runtime tests serve: each one exercises one part of the contract."""

from __future__ import annotations

import ctypes
import os
import subprocess
import threading
import time
from pathlib import Path

import numpy as np

from podserve import Handler, InvalidInput, OnnxHandler, Payload, WithContext, service_metrics
from server import TextDirection

from context_handlers import ScaledAffine

DECODED = service_metrics.counter("inputs_decoded", "Inputs the Affine handler decoded.")
FRAMES_DECODED = service_metrics.counter("frames_decoded", "Sampled video frames FrameProbe's decode_frame got.")

SLEEP_ENV = "TEST_PREDICT_SLEEP"
#: A path: a gated handler's predict waits while a file is there, so a test decides when a batch ends, not a clock.
GATE_ENV = "TEST_PREDICT_GATE"
GATE_LIMIT_SECONDS = 30.0


def wait_at_gate(batch_size: int, env: str = GATE_ENV) -> None:
    """Wait while the file TEST_PREDICT_GATE (or `env`) names is there (at most GATE_LIMIT_SECONDS), first adding the
    held batch's size as a line to `<gate>.held`; return at once when the variable is unset or the file absent."""
    gate = os.environ.get(env)
    if not gate or not os.path.exists(gate):
        return
    with open(gate + ".held", "a") as held:
        held.write(f"{batch_size}\n")
    deadline = time.monotonic() + GATE_LIMIT_SECONDS
    while os.path.exists(gate) and time.monotonic() < deadline:
        time.sleep(0.005)


def held_batches(gate: str | os.PathLike) -> list[int]:
    """The sizes of the batches held at `gate` so far, one per line of `<gate>.held` (for a test to poll: a batch is
    there once its predict waits at the gate)."""
    try:
        return [int(line) for line in Path(f"{gate}.held").read_text().split()]
    except FileNotFoundError:
        return []


def record_runs(handler: OnnxHandler) -> list[tuple[int, ...]]:
    """Record the shape of input `x` of every run the handler's session makes from now on."""
    shapes: list[tuple[int, ...]] = []
    session = handler.session

    class Recording:
        def run(self, names, feeds):
            shapes.append(feeds["x"].shape)
            return session.run(names, feeds)

    handler.session = Recording()
    return shapes


class Affine(OnnxHandler):
    """y = 2x + 1 over a list of numbers sent as `data`."""

    input_shape = (4,)

    def decode(self, payload: Payload) -> np.ndarray:
        data = payload.data
        if not isinstance(data, list) or not 1 <= len(data) <= 64:
            raise InvalidInput("'data' must be a list of 1 to 64 numbers", field="data")
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in data):
            raise InvalidInput("'data' must hold only numbers", field="data")
        DECODED.inc()
        return np.asarray(data, dtype=np.float32)


class SlowAffine(Affine):
    """Affine whose every predict call first sleeps TEST_PREDICT_SLEEP seconds, then waits at the gate."""

    def predict(self, batch):
        time.sleep(float(os.environ.get(SLEEP_ENV, "0.5")))
        wait_at_gate(len(batch))
        return super().predict(batch)


class SlowDecode(Affine):
    """Affine whose decode sleeps for as many seconds as the request's `postid` says (a float; 0 when absent)."""

    def decode(self, payload: Payload) -> np.ndarray:
        try:
            time.sleep(float(payload.postid))
        except (TypeError, ValueError):
            pass
        return super().decode(payload)


class WhereStepsRun(SlowDecode):
    """SlowDecode whose answer names the threads that ran its decode and its encode."""

    def decode(self, payload: Payload) -> WithContext:
        return WithContext(super().decode(payload), threading.current_thread().name)

    def encode(self, output, decoded_by):
        return {"y": output.tolist(), "decoded_by": decoded_by, "encoded_by": threading.current_thread().name}


class WaitsOnDevice(WhereStepsRun):
    """WhereStepsRun whose predict sleeps TEST_PREDICT_SLEEP seconds, then waits at the gate, holding no core: a lane
    waiting on a GPU, for as long as a test wants."""

    def predict(self, batch):
        time.sleep(float(os.environ.get(SLEEP_ENV, "0.5")))
        wait_at_gate(len(batch))
        return super().predict(batch)


def spin_cpu(seconds: float) -> None:
    """Spin until this thread has used `seconds` of CPU (time spent preempted or asleep does not count)."""
    began = time.thread_time()
    while time.thread_time() - began < seconds:
        pass


class CpuThenSleep(Affine):
    """Affine whose decode spins for 50 ms of its thread's CPU and whose encode sleeps 50 ms (no CPU)."""

    def decode(self, payload: Payload) -> np.ndarray:
        spin_cpu(0.05)
        return super().decode(payload)

    def encode(self, output):
        time.sleep(0.05)
        return super().encode(output)


class FrameProbe(Affine):
    """Affine that reads videos too: each sampled frame becomes (width, height, brightness of its top-left corner, of
    its bottom-left corner), which the model's 2x + 1 carries to the answer, so a test sees the size and the way up
    `decode_frame` got it at; the frames are counted (service_frames_decoded_total). Its frames are wanted at 192x48
    at least (the example's input). A frame whose top-left corner is bright waits at the gate in decode_frame, and
    every predict call waits there too."""

    video_frame_size = (192, 48)

    def decode_frame(self, frame) -> np.ndarray:
        FRAMES_DECODED.inc()
        pixels = np.asarray(frame.image.convert("L"), dtype=np.float32)
        corner = max(1, min(pixels.shape) // 20)
        top_left, bottom_left = float(pixels[:corner, :corner].mean()), float(pixels[-corner:, :corner].mean())
        if top_left > 128:
            wait_at_gate(1)
        return np.asarray([*frame.image.size, top_left, bottom_left], dtype=np.float32)

    def predict(self, batch):
        wait_at_gate(len(batch))
        return super().predict(batch)


class TallFrames(FrameProbe):
    """FrameProbe asking for frames no pixel wide: the server refuses to start, naming video_frame_size."""

    video_frame_size = (0, 48)


class Faulty(Affine):
    """Affine with planted bugs: decode crashes on 13, batch_key on 21 (and returns an unhashable key on 22), predict
    on 666, and breaks its contract on 7."""

    def decode(self, payload: Payload) -> np.ndarray:
        item = super().decode(payload)
        if item[0] == 13:
            raise KeyError("a bug in decode")
        return item

    def batch_key(self, model_input):
        if model_input[0] == 21:
            raise RuntimeError("a bug in batch_key")
        if model_input[0] == 22:
            return [len(model_input)]
        return super().batch_key(model_input)

    def predict(self, batch):
        if any(item[0] == 666 for item in batch):
            raise RuntimeError("a bug in predict")
        outputs = super().predict(batch)
        if any(item[0] == 7 for item in batch):
            return outputs[:-1]
        return outputs


class Hangs(Affine):
    """Affine whose predict hangs for 3 s on 999: a wedged batch thread."""

    def predict(self, batch):
        if any(item[0] == 999 for item in batch):
            time.sleep(3)
        return super().predict(batch)


class GatedHangs(Affine):
    """Hangs held on the gate, not a clock: predict of a batch holding 999 waits while the gate is there."""

    def predict(self, batch):
        if any(item[0] == 999 for item in batch):
            wait_at_gate(len(batch))
        return super().predict(batch)


class GatedDecode(Affine):
    """Affine whose decode waits at the gate (a line of 1 in `<gate>.held`): a request thread held in a slow decode
    for as long as a test wants."""

    def decode(self, payload: Payload) -> np.ndarray:
        wait_at_gate(1)
        return super().decode(payload)


class GatedScaledAffine(ScaledAffine):
    """context_handlers.ScaledAffine whose predict waits at the gate."""

    def predict(self, batch):
        wait_at_gate(len(batch))
        return super().predict(batch)


class HeaderInjector(Affine):
    """Affine whose decode refuses 1 with a header value holding CR/LF, and 2 with one that is not latin-1."""

    def decode(self, payload: Payload) -> np.ndarray:
        first = (payload.data or [0])[0]
        if first == 1:
            raise InvalidInput("refused", headers={"X-Note": "fine\r\nInjected: yes"})
        if first == 2:
            raise InvalidInput("refused", headers={"X-Note": "caf\u00e9 \u2615"})
        return super().decode(payload)


class GatedTextDirection(TextDirection):
    """The example's handler, whose predict waits at the gate. Its CPU runs are of 8 inputs (a batch: one run or
    more): the sizes the example's load times cost within 1-3% of each other, so which it picks is noise."""

    RUN_SIZES = (8,)

    def predict(self, batch):
        wait_at_gate(len(batch))
        return super().predict(batch)


class Doubler(Handler):
    """Not an ONNX model: doubles a vector of 4 numbers, and declares its tensors for the Open Inference Protocol."""

    tensor_inputs = (("numbers", "FP64", (-1, 4)),)
    tensor_outputs = (("doubled", "FP64", (-1, 4)),)

    def load(self, model_path, device):
        pass

    def warmup_inputs(self):
        return [np.zeros(4)]

    def decode(self, payload):
        return np.asarray(payload.data, dtype=np.float64)

    def predict(self, batch):
        return [2 * item for item in batch]


class Undeclared(Doubler):
    """Doubler without its tensor declarations: not served by the Open Inference Protocol."""

    tensor_inputs = ()
    tensor_outputs = ()


class FailsInNativeCode(TextDirection):
    """The example, whose decode fails in native code for a request whose JSON marks it, as a decoding library or a
    team's C extension can: `"crash": true` aborts the process (SIGABRT, as a segfault in FFmpeg ends it);
    `"hang": "release"` blocks in C without the GIL, `"hang": "hold"` blocks in C holding it (libc's sleep through
    ctypes, whose PyDLL keeps the GIL and CDLL lets it go)."""

    def decode(self, payload: Payload) -> np.ndarray:
        if payload.extra.get("crash") is True:
            os.abort()
        hang = payload.extra.get("hang")
        if hang == "release":
            ctypes.CDLL(None).sleep(3600)
        elif hang == "hold":
            ctypes.PyDLL(None).sleep(3600)
        return super().decode(payload)


class RaisesValueError(Affine):
    """Affine whose decode raises a plain ValueError for a negative first number, as most code does on bad input (the
    platform answers it 500, and its answer and log say how to answer 400 instead)."""

    def decode(self, payload: Payload) -> np.ndarray:
        item = super().decode(payload)
        if item[0] < 0:
            raise ValueError(f"{item[0]} is negative")
        return item


class FrameWithContext(FrameProbe):
    """FrameProbe whose decode_frame returns WithContext: a frame's context is its index and timestamp already, so the
    start fails naming that rule."""

    def decode_frame(self, frame) -> WithContext:
        return WithContext(super().decode_frame(frame), frame.timestamp)


class EncodesArrays(TextDirection):
    """The example, whose encode returns the model's scores as a numpy array: JSON cannot hold it, so the start
    fails naming that rule."""

    def encode(self, scores: np.ndarray) -> dict:
        return {"scores": scores}


class UnsendableOnSeven(Affine):
    """Affine whose output for an input starting with 7 is a lock (what pickle refuses): an output the model process
    cannot send back, in the split layout."""

    def predict(self, batch):
        outputs = super().predict(batch)
        return [threading.Lock() if item[0] == 7 else output for item, output in zip(batch, outputs)]


#: Gates of FaultPoints' other steps (paths, like TEST_PREDICT_GATE's), and the file its decode records who decoded
#: each request in.
DECODE_GATE_ENV, LOAD_GATE_ENV, DECODED_BY_ENV = "TEST_DECODE_GATE", "TEST_LOAD_GATE", "TEST_DECODED_BY"
#: What FaultPoints does with a request, by its first number.
AT_DECODE, AT_PREDICT, ENCODE_RELEASES_GIL, ENCODE_HOLDS_GIL = 1, 2, 3, 4


class FaultPoints(Affine):
    """Affine whose every step can be held where a test says, by the request's first number: AT_DECODE waits at
    TEST_DECODE_GATE in decode (its input not yet submitted), AT_PREDICT at TEST_PREDICT_GATE in predict (mid-batch),
    ENCODE_RELEASES_GIL blocks in C in encode without the GIL and ENCODE_HOLDS_GIL holding it (libc's sleep through
    ctypes' CDLL and PyDLL; "<mark> <pid>" appended to `<TEST_DECODED_BY>.encoding` first). Its decode appends
    "<second number> <pid>" to TEST_DECODED_BY, so a test knows which decoder process holds its request; its load
    waits at TEST_LOAD_GATE (a model process being replaced)."""

    def load(self, model_path, device):
        wait_at_gate(1, LOAD_GATE_ENV)
        super().load(model_path, device)

    def decode(self, payload: Payload) -> WithContext:
        item = super().decode(payload)
        mark = int(item[0])
        if os.environ.get(DECODED_BY_ENV):
            with open(os.environ[DECODED_BY_ENV], "a") as decoded_by:
                decoded_by.write(f"{int(item[1])} {os.getpid()}\n")
        if mark == AT_DECODE:
            wait_at_gate(1, DECODE_GATE_ENV)
        return WithContext(item, mark)

    def predict(self, batch):
        if any(item[0] == AT_PREDICT for item in batch):
            wait_at_gate(len(batch))
        return super().predict(batch)

    def encode(self, output, mark):
        if mark in (ENCODE_RELEASES_GIL, ENCODE_HOLDS_GIL) and os.environ.get(DECODED_BY_ENV):
            with open(os.environ[DECODED_BY_ENV] + ".encoding", "a") as encoding:  # a test knows it is stuck now
                encoding.write(f"{mark} {os.getpid()}\n")
        if mark == ENCODE_RELEASES_GIL:
            ctypes.CDLL(None).sleep(3600)
        elif mark == ENCODE_HOLDS_GIL:
            ctypes.PyDLL(None).sleep(3600)
        return output.tolist()


def decoded_by(path: str | os.PathLike) -> dict[int, int]:
    """Which process decoded each request FaultPoints saw (by its second number), from its TEST_DECODED_BY file."""
    try:
        return {int(number): int(pid) for number, pid in (line.split() for line in Path(path).read_text().splitlines())}
    except FileNotFoundError:
        return {}


#: A path: LeavesOrphans' orphan lives while the file is there.
ORPHAN_GATE_ENV = "TEST_ORPHAN_GATE"


class LeavesOrphans(Affine):
    """Affine whose decode of a request whose first number is 5 starts a shell that starts a loop in the background
    and exits: the loop, orphaned, lives while TEST_ORPHAN_GATE's file is there, then ends for whoever adopted it to
    reap. Its pid (as this process sees pids) is the answer."""

    def decode(self, payload: Payload) -> WithContext:
        item = super().decode(payload)
        orphan = 0
        if item[0] == 5:
            loop = f'while [ -e "{os.environ[ORPHAN_GATE_ENV]}" ]; do sleep 0.02; done'
            shell = subprocess.run(["sh", "-c", f"({loop}) >/dev/null 2>&1 & echo $!"], capture_output=True,
                                   text=True, check=True)
            orphan = int(shell.stdout)
        return WithContext(item, orphan)

    def encode(self, output, orphan):
        return {"y": output.tolist(), "orphan": orphan}
