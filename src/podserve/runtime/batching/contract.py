"""Check the handler's contract at start: a synthetic request through its verbs, so a broken rule stops the start.

Run where the handler is loaded (runtime/batching/pool.py, after the first instance's warm-up: in one process the pod's
process, in the split layout the model process; docs/processes.md), with the model loaded, so that `encode` gets
what `predict` really returns:

- a synthetic image (`Payload.image`, a PNG) through `decode`, `predict` and `encode`;
- where the handler reads videos (it wrote `decode_frame`), one synthetic frame through `decode_frame`, `predict`
  and `encode_video`.

A rule broken on them (`ContractViolation`, with the rule and the fix) stops the start: the pool records it as its
load failure, the pod stays not ready and `/api/ping` answers 503 with it. What is not a rule is not checked here:
a handler refusing the synthetic input with `InvalidInput` (a service that reads `data`, not images) skips that
path; a plain exception from a verb (it may come from the synthetic input's values) is logged as a warning that says
what a caller would get; NaN and infinities in `results` depend on values too, and are left to each request.
"""

from __future__ import annotations

import inspect
import io
import json
import logging
import pickle
from typing import Any, Callable

import numpy as np
from PIL import Image

from podserve.errors import HandlerFailed, ServingError
from podserve.handler import FrameOutput, Handler, Payload, WithContext
from podserve.runtime.batching.batcher import check_outputs
from podserve.runtime.core.verbs import INVALID_INPUT_HINT, unhashable_key
from podserve.settings import ServingSettings
from podserve.videos import VideoFrame

log = logging.getLogger("podserve")

#: The synthetic image's and frame's size when the handler names no `video_frame_size` (a gradient: not one flat
#: value, which a normalising decode would divide by zero).
SYNTHETIC_SIZE = (256, 256)


class ContractViolation(HandlerFailed):
    """The handler breaks a rule of its contract (the message names the verb, the rule and the fix)."""


class _Refused(Exception):
    """A verb refused the synthetic input (InvalidInput) or raised on it: the path it was on is not checked further."""


def check_contract(handler: Handler, settings: ServingSettings) -> None:
    """Run a synthetic image (and, where the handler reads videos, a synthetic frame) through the handler's verbs;
    raise ContractViolation naming the first rule broken and its fix."""
    name = type(handler).__name__
    image = _gradient(SYNTHETIC_SIZE)
    payload = Payload(image=_png(image), max_image_pixels=settings.max_image_pixels)
    try:
        decoded = _call(handler.decode, "a synthetic image", payload, hint=True)
        if type(decoded) is WithContext:
            model_input, context = decoded.input, (decoded.context,)
        else:
            model_input, context = decoded, ()
        output = _predict_one(handler, "decode", model_input)
        _check_encode_takes(handler, context)
        _check_json(f"{name}.encode", _call(handler.encode, "a synthetic image's output", output, *context))
    except _Refused:
        pass
    if not handler.reads_video():
        return
    frame_size = handler.video_frame_size or SYNTHETIC_SIZE
    frame = VideoFrame(index=0, timestamp=0.0, image=_gradient(frame_size))
    try:
        model_input = _call(handler.decode_frame, "a synthetic frame", frame, hint=True)
        if type(model_input) is WithContext:
            raise ContractViolation(
                f"{name}.decode_frame returned WithContext: a frame's context is its index and timestamp, which "
                f"encode_video gets with each output (FrameOutput(index, timestamp, output)); return the model input "
                f"alone")
        output = _predict_one(handler, "decode_frame", model_input)
        frames = [FrameOutput(frame.index, frame.timestamp, output)]
        _check_json(f"{name}.encode_video", _call(handler.encode_video, "a synthetic frame's output", frames))
    except _Refused:
        pass


def _predict_one(handler: Handler, source: str, model_input: Any) -> Any:
    """Check what `source` made can be batched and cross between processes, run it through `predict`, check the
    outputs; return its one output."""
    name = type(handler).__name__
    key = _call(handler.batch_key, f"{source}'s input", model_input)
    problem = unhashable_key(name, key)
    if problem:
        raise ContractViolation(problem)
    _check_crosses(f"{name}.{source}'s input", model_input)
    _check_crosses(f"{name}.batch_key's key", key)
    outputs = _call(handler.predict, f"{source}'s input", [model_input])
    try:
        check_outputs(handler, outputs, 1)
    except HandlerFailed as exc:
        raise ContractViolation(exc.message) from None
    _check_crosses(f"{name}.predict's output", outputs[0])
    return outputs[0]


def _check_encode_takes(handler: Handler, context: tuple) -> None:
    """Check `encode` takes the arguments it gets: (output, context) after a WithContext, else (output)."""
    try:
        inspect.signature(handler.encode).bind(None, *context)
    except TypeError:
        name = type(handler).__name__
        if context:
            raise ContractViolation(f"{name}.decode returned WithContext, so encode is called as encode(output, "
                                    f"context), which {name}.encode does not take; give it a second parameter, "
                                    f"the context") from None
        raise ContractViolation(f"{name}.decode returned a bare input, so encode is called as encode(output), which "
                                f"{name}.encode does not take; return WithContext(input, context) from decode, or "
                                f"give encode's other parameters defaults") from None
    except ValueError:  # no signature to read (a builtin): left to the call itself
        pass


def _check_crosses(what: str, value: Any) -> None:
    """Check `value` can cross between the split layout's processes: arrays travel as arrays, anything else is
    pickled (runtime/processes/transport/items.py)."""
    if isinstance(value, np.ndarray) and not value.dtype.hasobject:
        return
    try:
        pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
    except Exception as exc:
        raise ContractViolation(
            f"{what} ({type(value).__name__}) cannot go to another process ({type(exc).__name__}: {exc}); a GPU pod "
            f"decodes in processes apart from the model's (docs/processes.md), so it must be a numpy array, a dict "
            f"of them, or plain data (numbers, strings, lists, dicts)") from None


def _check_json(verb: str, results: Any) -> None:
    """Check `results` is something JSON holds (NaN and infinities aside: values are each request's)."""
    try:
        json.dumps(results, allow_nan=True)
    except (TypeError, ValueError) as exc:
        raise ContractViolation(f"{verb} returned something JSON cannot hold ({exc}); return lists, numbers, "
                                f"strings, dicts (an array's .tolist(), a numpy number's .item())") from None


def _call(method: Callable[..., Any], given: str, *arguments: Any, hint: bool = False) -> Any:
    """Call a verb on the synthetic input; raise _Refused when it refuses or raises (a warning says what a caller
    would get), ContractViolation when it breaks a rule the runtime checks (HandlerFailed)."""
    verb = f"{type(method.__self__).__name__}.{method.__name__}"
    try:
        return method(*arguments)
    except HandlerFailed as exc:
        raise ContractViolation(exc.message) from None
    except ServingError as exc:
        log.info("contract check: %s refused %s (%s: %s); that path is not checked at start", verb, given,
                 type(exc).__name__, exc.message)
        raise _Refused from None
    except Exception as exc:
        log.warning("contract check: %s raised %s on %s: %s; a caller's request that does the same gets a 500%s",
                    verb, type(exc).__name__, given, exc, f" ({INVALID_INPUT_HINT})" if hint else "")
        raise _Refused from None


def _gradient(size: tuple[int, int]) -> Image.Image:
    """An RGB image of `size` shading from black to white, top to bottom."""
    return Image.linear_gradient("L").resize(size).convert("RGB")


def _png(image: Image.Image) -> bytes:
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()
