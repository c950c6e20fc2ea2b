"""The contract between a service and the platform: the class a model team writes.

A model team subclasses `Handler` (or, for an ONNX model, `OnnxHandler`) in `src/server.py`
and names it in `value.py` (`handler = "server:MyHandler"`). The platform creates one
handler object per model instance, calls `load` once, then calls `decode` for each request
in the request's own thread, `predict` with batches in the instance's batch thread, and
`encode` for each output, with the request's context when `decode` returned one
(`WithContext`). The handler knows nothing of HTTP, threads, batching, metrics or
Kubernetes.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any, Hashable, NamedTuple, Sequence

import numpy as np

from podserve.cuda_libraries import CudaUnavailable, why_not_cuda
from podserve.errors import HandlerFailed, InvalidInput
from podserve.images import decode_image
from podserve.settings import ServingSettings
from podserve.videos import VideoFrame, VideoLimits, decode_video

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Device:
    """Where a model instance runs: a GPU by index, or the CPU with a thread budget."""

    kind: str  # "cuda" or "cpu"
    index: int = 0
    memory_limit_bytes: int = 0  # 0: no limit (GPU only)
    cpu_threads: int = 1  # intra-op threads for this instance
    #: Why this GPU cannot be used ("": it can): the platform then loads no instance on it, and the pod says why.
    unusable: str = ""

    @property
    def is_gpu(self) -> bool:
        return self.kind == "cuda"

    @property
    def label(self) -> str:
        """A short name for logs and metric labels: 'cuda0' or 'cpu'."""
        return f"cuda{self.index}" if self.is_gpu else "cpu"

    def __str__(self) -> str:
        return f"cuda:{self.index}" if self.is_gpu else f"cpu({self.cpu_threads} threads)"


@dataclass(frozen=True)
class Payload:
    """One request as the handler sees it: the ids, and one of image, data or video.

    `image` is the raw bytes of an encoded image (already base64-decoded when the caller
    sent JSON); `open_image()` turns it into pixels, refusing oversized images and
    decompression bombs with a 400 that names the field. `video` is likewise the bytes of a
    video; `open_video()` yields its sampled frames.
    """

    postid: Any = None
    uid: Any = None
    seqid: Any = None
    image: bytes | None = None
    data: Any = None
    video: bytes | None = None
    extra: dict = field(default_factory=dict)
    max_image_pixels: int = ServingSettings.max_image_pixels
    video_limits: VideoLimits = VideoLimits()

    def ids_only(self) -> "Payload":
        """This payload without its input and other fields: all its answer needs once `decode` has run."""
        return Payload(postid=self.postid, uid=self.uid, seqid=self.seqid)

    def open_image(self, mode: str = "RGB", draft_size: tuple[int, int] | None = None):
        """Return `image` decoded as a PIL image in `mode`; a 400 naming 'image' if it can't be.

        Refuses images over the server's pixel limit and decompression bombs before decoding.
        """
        if self.image is None:
            raise InvalidInput("this service reads an image: send 'image' (base64) in a JSON body, or the "
                               "raw image bytes with Content-Type: application/octet-stream", field="image")
        return decode_image(self.image, max_pixels=self.max_image_pixels, mode=mode, draft_size=draft_size)

    def open_video(self, mode: str = "RGB"):
        """Yield `video`'s frames sampled at value.py's `video_fps` (each a VideoFrame: index, timestamp in seconds,
        upright PIL image in `mode`); a 400 naming 'video' and the limit when it is over one, or unreadable.

        Decoded by PyAV (FFmpeg) on the platform's video threads when the platform calls `decode_frame`; a handler
        may call it itself too."""
        if self.video is None:
            raise InvalidInput("this reads a video: send 'video' (base64) in a JSON body, or the raw video bytes with "
                               "a video/* Content-Type (video/mp4, video/webm, ...)", field="video")
        return decode_video(self.video, self.video_limits, mode=mode)


class FrameOutput(NamedTuple):
    """One sampled frame's output, as `encode_video` gets it: the frame's index and timestamp (seconds) and the
    model's output for it."""

    index: int
    timestamp: float
    output: Any


class WithContext(NamedTuple):
    """What `decode` returns when `encode` needs to know something about its request.

    `input` goes to `predict` (batched with other requests' inputs, as a bare input would);
    `context` (an image's size, a scale, a crop: anything) never reaches the model and is
    handed to `encode(output, context)` for this same request.
    """

    input: Any
    context: Any


def model_inputs(items: Sequence[Any]) -> list[Any]:
    """The model inputs of `decode` results: each WithContext's input, any other item as it is."""
    return [item.input if type(item) is WithContext else item for item in items]


class Handler:
    """Serve a model: load it once, decode a request, predict a batch, encode an output.

    Subclass it, override the four verbs, and name the class in value.py. A complete
    example, runnable as it stands::

        import numpy as np
        from podserve import Handler, InvalidInput, Payload, WithContext

        class Doubler(Handler):
            def load(self, model_path, device):
                self.factor = 2.0                      # load weights here, once

            def decode(self, payload):
                if not isinstance(payload.data, list) or not payload.data:
                    raise InvalidInput("'data' must be a list of numbers", field="data")
                values = np.asarray(payload.data, dtype=np.float32)
                peak = float(np.abs(values).max()) or 1.0
                return WithContext(values / peak, peak)  # the model sees [-1, 1]; `peak` waits for encode

            def predict(self, batch):
                return [x * self.factor for x in batch]  # one output per input

            def encode(self, output, peak):            # the context decode returned for this request
                return (output * peak).tolist()

        h = Doubler(); h.load("unused", None)
        decoded = h.decode(Payload(data=[1, 2]))
        assert h.encode(h.predict([decoded.input])[0], decoded.context) == [2.0, 4.0]

    A `decode` that returns a bare input (no `WithContext`) gets `encode(output)`.
    `decode` and `encode` run in many request threads at once, on one shared handler
    object: keep them free of mutable state (per-request state goes in the context).
    `predict` runs in the instance's batch threads.

    Rules the runtime checks: `predict` returns a sequence with exactly one output per
    input, in the same order; `encode` takes the context when `decode` returns one (and only
    then) and returns what JSON holds (lists, numbers, strings, dicts); `decode_frame` returns
    the input alone (a frame's context is its index and timestamp); `batch_key` returns
    something hashable; what `decode` and `predict` return can cross to another process (an
    array, a dict of arrays, plain data: a GPU pod decodes apart from its model). At start,
    once the first instance is loaded, a synthetic image (and, when `decode_frame` is written,
    a synthetic frame) goes through the verbs (runtime/batching/contract.py): a broken rule stops the
    start, naming the rule and the fix (`/api/ping` answers 503 with it), and an `InvalidInput`
    on it is fine (a service that reads `data`). `decode` and `decode_frame` raise
    `InvalidInput("...", field=...)` for bad input (the caller gets a 400 that names the
    field); any other exception is a 500, logged with its traceback, whose answer and log line
    say to raise `InvalidInput` instead.
    """

    def load(self, model_path: str, device: Device) -> None:
        """Load the model for one instance on `device`. Called once per instance, where the model runs."""

    def load_codec(self, model_path: str) -> None:
        """Load what `decode` and `encode` need beside the model (a tokenizer, label names), in every process that
        decodes. Called once per handler object before its first `decode`: in one process, on each instance's
        handler before `load`; in the split layout (docs/processes.md), on the decoder processes' handlers, which
        never load the model. Default: nothing."""

    def decode(self, payload: Payload) -> Any:
        """Turn one request into one model input, or `WithContext(input, context)`. Runs in the request's thread."""
        raise NotImplementedError(f"{type(self).__name__}.decode is not written")

    def predict(self, batch: Sequence[Any]) -> Sequence[Any]:
        """Run the model on a batch of inputs; return one output per input, in order."""
        raise NotImplementedError(f"{type(self).__name__}.predict is not written")

    def decode_frame(self, frame: VideoFrame) -> Any:
        """Turn one sampled frame of a video (`frame.image`, upright RGB, scaled to cover `video_frame_size` when set;
        `frame.timestamp`) into one model input.

        A service that reads videos writes it (with `encode_video`): the platform decodes the video on its own
        threads, calls this for each frame sampled at `video_fps`, batches the frames like images (with other
        requests' inputs) and gathers their outputs back in order. Left unwritten, a video gets a 400."""
        raise InvalidInput(f"this service ({type(self).__name__}) does not read videos; send 'image' or 'data'",
                           field="video")

    def encode_video(self, frames: Sequence[FrameOutput]) -> Any:
        """Turn a video's outputs, one FrameOutput per sampled frame in order, into the JSON `results`.

        The default answers `{"frames": [{"timestamp": t, "results": encode(output)}, ...]}`."""
        return {"frames": [{"timestamp": frame.timestamp, "results": self.encode(frame.output)} for frame in frames]}

    def reads_video(self) -> bool:
        """Whether this handler wrote `decode_frame` (a video to one that did not gets a 400 before decoding)."""
        return type(self).decode_frame is not Handler.decode_frame

    def encode(self, output: Any, context: Any = None) -> Any:
        """Turn one output into the JSON-serialisable `results` of the response; `context` is what `decode` returned
        with the input (`WithContext`), and is passed only then."""
        return output.tolist() if isinstance(output, np.ndarray) else output

    #: The frame size (width, height) `decode_frame` wants, or None for full-size frames. FFmpeg then scales each
    #: sampled frame down, keeping its aspect, to the smallest size that covers it (as an image's `draft_size` does;
    #: never up), before the frame becomes RGB, so `frame.image` of a 4K video is 192x108 for (192, 48), not 25 MB of
    #: RGB; the size is of the upright frame (rotation metadata applied). Finish the resize in `decode_frame`.
    video_frame_size: tuple[int, int] | None = None
    #: Batches the batcher may give `predict` at once, from as many threads (1: one at a time). The platform's
    #: OnnxHandler sets it on the CPU; a handler whose predict is not thread-safe leaves it at 1.
    concurrent_batches: int = 1
    #: The most inputs one predict call gets (value.py's max_batch_size), set by the platform before `load`.
    max_batch_size: int = ServingSettings.max_batch_size
    #: The inputs predict runs at once, when it cuts a larger batch into runs done one after another (None: it
    #: runs the whole batch at once). The platform's OnnxHandler sets it on the CPU; the batcher then gives a
    #: predict call one run, or as many as fit in max_batch_delay_ms (runtime/batching/batcher.py: largest_batch).
    run_size: int | None = None
    #: What one run of `run_size` inputs takes, in seconds (measured with it; 0 when not known).
    run_seconds: float = 0.0
    #: The rows every run is padded to with copies of its last input, the extra outputs dropped (None: a run is
    #: its batch's size). The platform's OnnxHandler sets it on a GPU (one shape per session); the batcher then
    #: gives a predict call at most one run (runtime/batching/batcher.py: largest_batch), and the metrics count the
    #: padding.
    padded_size: int | None = None
    #: (rows, seconds) of runs timed at load where rows differ, padded and not (the platform's OnnxHandler on a
    #: GPU): what a row costs, which calls that are all padded to one size cannot tell
    #: (runtime/batching/batch_policy.py).
    run_costs: tuple[tuple[int, float], ...] = ()
    #: For the Open Inference Protocol (docs/open-inference.md), a handler that is not an ONNX model declares its
    #: tensors as (name, datatype, shape) with the batch dimension first and -1 for a free size, e.g.
    #: (("x", "FP32", (-1, 4)),). An OnnxHandler reads them from its model.
    tensor_inputs: tuple = ()
    tensor_outputs: tuple = ()

    def predict_all_outputs(self, batch: Sequence[Any]) -> list[dict[str, Any]]:
        """`predict`, each output a dict of every declared output by name (the Open Inference Protocol). With one
        declared output, `predict`'s outputs are it; with several, `predict` returns such dicts itself."""
        outputs = self.predict(batch)
        if len(self.tensor_outputs) == 1:
            return [{self.tensor_outputs[0][0]: output} for output in outputs]
        return list(outputs)

    def batch_key(self, item: Any) -> Hashable:
        """Return a key; only inputs with equal keys are batched together.

        The default keys numpy arrays (and dicts of them) by shape and dtype, so inputs of
        different shapes are never stacked by accident. Return a constant to batch
        everything together (e.g. when `predict` pads).
        """
        if isinstance(item, np.ndarray):
            return (item.shape, item.dtype.str)
        if isinstance(item, dict):
            return tuple(sorted((k, v.shape, v.dtype.str) for k, v in item.items() if isinstance(v, np.ndarray)))
        return None

    def warmup_inputs(self) -> list[Any]:
        """Return the inputs of the warm-up batches run once after `load` (default: none): model inputs of the
        shapes `decode` makes, or `decode` results themselves (a WithContext's context is set aside, as it is for
        a request)."""
        return []


class OnnxHandler(Handler):
    """A Handler that runs an ONNX model with onnxruntime: write only `decode` and `encode`.

    `decode` returns one input without its batch axis: an array when the model has one
    input, or a dict of arrays by input name (wrapped in `WithContext(input, context)` when
    `encode` needs something of the request, such as an image's scale: never as extra keys,
    which the session does not take). `predict` stacks a batch, runs the session and
    hands `encode` one row of the first output (or a dict of rows when `all_outputs`).
    Set `input_shape` (one item, no batch axis) when the model's shape has free dimensions,
    so that the warm-up batch can be built. On a GPU the session uses the CUDA execution
    provider on the instance's device with its memory limit, and every run is padded to one
    shape (`padded_size`: max_batch_size, or the batch the model fixes, e.g. a batch axis of 1):
    there a session sets its convolutions up again whenever a run's shape differs from its last
    run's, 0.1-1.1 s each time on an H100, where a run of 16 cost the example what a run of 1
    did (bench/results/gpu-shape-setup/). A GPU instance whose session did not get the CUDA
    provider does not load: `CudaUnavailable` names the libraries that do not load
    (podserve.cuda_libraries) and the fix. On the CPU every run is
    single-threaded: a batch is cut into runs of the smallest size `load` measured to cost the
    least CPU per input, or within RUN_SIZE_TIE of it (`run_size`), and an instance with a
    budget of N threads does N runs at once on its one session: `concurrent_batches` = N, so
    the batcher runs N batches at once, one per core
    (runs are thread-safe and release the GIL). Against one N-threaded run of the whole
    batch, that cut the example's CPU per request by up to 30% and keeps one copy of the
    weights (bench/optimisations.json); a lone request uses one core, though.
    """

    input_shape: tuple[int, ...] | None = None
    all_outputs: bool = False
    #: Run sizes `load` times on the CPU, within the platform's max_batch_size.
    RUN_SIZES = (1, 2, 4, 8)
    #: Sizes whose CPU per input at start-up is within this fraction of the cheapest are a tie, which the
    #: smaller run wins (see _cheapest_run_size).
    RUN_SIZE_TIE = 0.02

    def load(self, model_path: str, device: Device) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.inter_op_num_threads = 1
        options.intra_op_num_threads = 1  # on the CPU, the thread budget goes to lanes instead
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        providers = onnx_providers(device, ort.get_available_providers())
        self.session = ort.InferenceSession(model_path, sess_options=options, providers=providers)
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.output_names = [o.name for o in self.session.get_outputs()]
        self.provider = self.session.get_providers()[0]
        if device.is_gpu and self.provider != "CUDAExecutionProvider":
            raise CudaUnavailable(why_not_cuda(ort, str(device)))
        if self.provider == "CUDAExecutionProvider":
            batch_axis = self.session.get_inputs()[0].shape[:1]
            self.padded_size = gpu_padded_size(batch_axis, self.max_batch_size)
            if fixed_batch(batch_axis) is None:  # a fixed batch runs one size only: nothing to compare
                self.run_costs = self._time_padding()
        if self.provider == "CPUExecutionProvider":
            self.run_size = self._cheapest_run_size(
                [size for size in self.RUN_SIZES if size <= max(1, self.max_batch_size)] or [1])
            self.concurrent_batches = max(1, device.cpu_threads)

    def predict(self, batch: Sequence[Any]) -> Sequence[Any]:
        return self._predict(batch, self.all_outputs)

    def predict_all_outputs(self, batch: Sequence[Any]) -> list[dict[str, Any]]:
        """Like `predict`, each output a dict of every model output's row by name (the Open Inference Protocol)."""
        return self._predict(batch, True)

    def _predict(self, batch: Sequence[Any], all_outputs: bool) -> list[Any]:
        size = self.run_size or self.padded_size or len(batch)
        if size >= len(batch):
            return self._run(batch, all_outputs)
        return [output for start in range(0, len(batch), size)
                for output in self._run(batch[start:start + size], all_outputs)]

    def _run(self, batch: Sequence[Any], all_outputs: bool = False, pad: bool = True) -> list[Any]:
        """Stack `batch` (padded to `padded_size` with its last input, unless not `pad`), run the session once, and
        return one output per input."""
        count = len(batch)
        if pad and self.padded_size and count < self.padded_size:  # copies of a real input: no zeros to divide by
            batch = list(batch) + [batch[-1]] * (self.padded_size - count)
        if len(self.input_names) == 1 and not isinstance(batch[0], dict):
            feeds = {self.input_names[0]: _stack(batch)}
        else:
            feeds = {name: _stack([item[name] for item in batch]) for name in self.input_names}
        outputs = [output[:count] for output in self.session.run(self.output_names, feeds)]
        if all_outputs:
            return [dict(zip(self.output_names, rows)) for rows in zip(*outputs)]
        return list(outputs[0])

    def _time_padding(self, rounds: int = 3) -> tuple[tuple[int, float], ...]:
        """Time a run of one input unpadded and one padded to `padded_size` (the least of `rounds` each, after an
        untimed run of each shape: its set-up) and return them as `run_costs`; the padded shape last, as it is the
        one the session serves. () when no warm-up input can be built or runs are not padded."""
        inputs = model_inputs(self.warmup_inputs())
        if len(inputs) != 1 or not self.padded_size or self.padded_size <= 1:
            return ()
        timed = []
        for pad in (False, True):
            self._run(inputs, pad=pad)  # the first run of a shape sets it up
            fastest = float("inf")
            for _ in range(rounds):
                started = time.perf_counter()
                self._run(inputs, pad=pad)
                fastest = min(fastest, time.perf_counter() - started)
            timed.append((self.padded_size if pad else 1, fastest))
        log.info("%s: a run of 1 input takes %.3f ms, padded to %d rows %.3f ms", type(self).__name__,
                 timed[0][1] * 1000, timed[1][0], timed[1][1] * 1000)
        return tuple(timed)

    def _cheapest_run_size(self, sizes: Sequence[int] = (1, 2, 4, 8), rounds: int = 3) -> int | None:
        """Time single-threaded runs of each size on the warm-up input, in interleaved rounds, and return the
        smallest size whose CPU time per input is within RUN_SIZE_TIE of the least (None when no warm-up input can
        be built); `run_seconds` is then one run's time.

        The calling thread's CPU clock times them (a one-thread session runs in that thread), not the wall clock,
        which counts time spent preempted by other processes: beside two CPU-bound processes the detector's run
        of 1 read 35-49 ms by the wall clock and 35-36 ms by CPU time, and timed by the wall clock on a noisy
        host it picked runs of 8 by 0.3%, where runs of 1 cost 3-8% less on a quiet one (its batches of 8 then
        gave 0.7-0.8x Gunicorn's throughput at 32 callers). Each run also holds the GIL for its Python call and
        the conversion of its inputs and outputs, so a size clearly cheaper is not traded for a smaller one (the
        text classifier's runs of 1 cost 5-8% more than 2: picking the smallest within 5% cost it 4% at 64
        callers), nor for a larger one (the detector's runs of 4 cost 2% more than 1 and 5-10% of its throughput
        at 32 and 64 callers). But sizes within 2% are a tie, and the smaller wins: the timing runs one warm input
        again and again, while served inputs arrive from another core and a larger run's tensors take more of the
        cache the feeding threads share, so a tie at start-up is not one when serving. The 320x320 detector timed
        runs of 2 0.5-3% cheaper than 1 in 6 of 48 start-ups (all but one within 2%) and then served 5-9% fewer
        requests at 8 callers; the classifier's runs of 2 and 4, within 1-2% of each other, served 1-8% more in
        2s (bench/optimisations.json)."""
        inputs = model_inputs(self.warmup_inputs())
        if len(inputs) != 1:
            return None
        cost: dict[int, float] = {}
        for size in sizes:
            try:
                self._run(inputs * size)  # the first run of a shape allocates
            except Exception:  # e.g. a model whose batch axis is fixed: larger runs are not for it
                if size == sizes[0]:
                    raise
                break
            cost[size] = float("inf")
        sizes = list(cost)
        for _ in range(rounds):
            for size in sizes:
                batch, runs, began = inputs * size, 0, time.thread_time()
                while runs < 2 or (time.thread_time() - began < 0.05 and runs < 100):
                    self._run(batch)
                    runs += 1
                cost[size] = min(cost[size], (time.thread_time() - began) / (runs * size))
        least = min(cost.values())
        best = min(size for size in sizes if cost[size] <= least * (1 + self.RUN_SIZE_TIE))
        self.run_seconds = cost[best] * best
        log.info("%s: runs of %d input(s) cost the least CPU, or within %.0f%% of it (%.3f ms per input; %s)",
                 type(self).__name__, best, self.RUN_SIZE_TIE * 100, cost[best] * 1000,
                 ", ".join(f"{s}: {c * 1000:.3f}" for s, c in cost.items()))
        return best

    def warmup_inputs(self) -> list[Any]:
        inputs = self.session.get_inputs()
        if len(inputs) != 1:
            return []
        shape = self.input_shape or tuple(inputs[0].shape[1:])
        if not all(isinstance(d, int) and d > 0 for d in shape):
            raise HandlerFailed(f"{type(self).__name__}: the model input {inputs[0].name!r} has free dimensions "
                                f"{inputs[0].shape}; set `input_shape` on the handler (one item, no batch axis)")
        dtype = _ONNX_DTYPES.get(inputs[0].type, np.float32)
        return [np.zeros(shape, dtype=dtype)]


def _stack(arrays: Sequence[np.ndarray]) -> np.ndarray:
    """np.stack, without the copy for one contiguous input (a 320x320 image is 1.2 MB to copy)."""
    if len(arrays) == 1 and isinstance(arrays[0], np.ndarray) and arrays[0].flags.c_contiguous:
        return arrays[0][np.newaxis]
    return np.stack(arrays)


def fixed_batch(input_shape: Sequence[Any]) -> int | None:
    """The batch size a model input's shape fixes (its first axis is a number), or None when it is free."""
    batch_axis = input_shape[0] if input_shape else None
    return batch_axis if isinstance(batch_axis, int) and batch_axis > 0 else None


def gpu_padded_size(input_shape: Sequence[Any], max_batch_size: int) -> int:
    """The size a GPU session's runs are padded to: max_batch_size when the model's batch axis is free, the size
    the model fixes when it does (a larger batch runs as several runs of it, one after another)."""
    return fixed_batch(input_shape) or max(1, max_batch_size)


#: CUDA provider options that keep a session inside its memory budget and make its set-up cheap: the arena grows
#: by what is asked (not to the next power of two), cuDNN's workspace is not maxed out, and convolution algorithms
#: are picked by heuristic. On an H100 (onnxruntime 1.31.1, cuDNN 9.14) a change of batch shape then cost the
#: example 92-132 ms against 1.0 s searching exhaustively and 60 ms with the default algorithm, whose every run
#: was 6x slower (11 ms against 1.9 ms); runs are padded to one shape besides (`padded_size`;
#: bench/results/gpu-shape-setup/).
CUDA_OPTIONS = {"arena_extend_strategy": "kSameAsRequested", "cudnn_conv_use_max_workspace": "0",
                "cudnn_conv_algo_search": "HEURISTIC"}


def onnx_providers(device: Device, available: list[str]) -> list:
    """Return onnxruntime's provider list for `device`: CUDA on its GPU within its memory limit, else the CPU."""
    if device.is_gpu and "CUDAExecutionProvider" in available:
        cuda: dict = {"device_id": device.index, **CUDA_OPTIONS}
        if device.memory_limit_bytes:
            cuda["gpu_mem_limit"] = device.memory_limit_bytes
        return [("CUDAExecutionProvider", cuda), "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


_ONNX_DTYPES = {
    "tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64,
    "tensor(int64)": np.int64, "tensor(int32)": np.int32, "tensor(uint8)": np.uint8, "tensor(bool)": np.bool_,
}
