"""The Open Inference Protocol's HTTP/REST wire format ("v2", as KServe and Triton speak it).

Only the wire lives here: the paths under `/api/<service>/v2`, infer requests read into numpy
tensors (JSON `data`, or the binary tensor extension: `Inference-Header-Content-Length`, raw
little-endian tensors after the JSON header, read without copying), and answers written back
(JSON, or binary with `binary_data_output` / an output's `binary_data`). Nothing here runs a
model; runtime/protocols/v2_route.py serves it from the same instances and batcher as `/api/<service>`.

Not served: gRPC, the shared-memory extensions, BYTES tensors, compressed bodies.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from podserve.errors import InvalidInput, NotFound, ServingError
from podserve.runtime.protocols import api

#: The protocol's datatypes this server reads and writes, and their numpy types (little-endian).
DATATYPES = {"BOOL": "?", "UINT8": "<u1", "UINT16": "<u2", "UINT32": "<u4", "UINT64": "<u8", "INT8": "<i1",
             "INT16": "<i2", "INT32": "<i4", "INT64": "<i8", "FP16": "<f2", "FP32": "<f4", "FP64": "<f8"}
#: ONNX tensor types (as onnxruntime names them) by protocol datatype.
ONNX_TYPES = {"tensor(bool)": "BOOL", "tensor(uint8)": "UINT8", "tensor(uint16)": "UINT16",
              "tensor(uint32)": "UINT32", "tensor(uint64)": "UINT64", "tensor(int8)": "INT8", "tensor(int16)": "INT16",
              "tensor(int32)": "INT32", "tensor(int64)": "INT64", "tensor(float16)": "FP16", "tensor(float)": "FP32",
              "tensor(double)": "FP64"}
HEADER_LENGTH = "Inference-Header-Content-Length"
#: Extensions this server implements (GET .../v2 lists them).
EXTENSIONS = ("binary_tensor_data",)
MODEL_VERSION = "1"
#: The largest size of a tensor's dimension, and of `parameters.timeout` in microseconds (the protocol's int64).
MAX_INT64 = 2 ** 63 - 1


@dataclass(frozen=True)
class TensorSpec:
    """One model input or output: its name, datatype and shape (-1 for a free dimension, the batch first)."""

    name: str
    datatype: str
    shape: tuple[int, ...]

    def as_json(self) -> dict:
        return {"name": self.name, "datatype": self.datatype, "shape": list(self.shape)}


@dataclass(frozen=True)
class Target:
    """What a v2 path asks for: `kind` is server, live, ready, model, model_ready or infer."""

    kind: str
    model: str | None = None


@dataclass
class InferRequest:
    """An infer request read off the wire: its inputs as arrays (batch first), and how to answer."""

    id: str | None
    inputs: dict[str, np.ndarray]
    outputs: list[str] | None  # None: every output
    binary: set[str] = field(default_factory=set)  # outputs to send as binary data
    timeout_us: int | None = None


def route(path: str, prefix: str, model: str) -> Target:
    """The Target of `path` under `prefix` (the service route); NotFound naming what is served otherwise."""
    rest = path[len(prefix):].strip("/").split("/")  # e.g. ["v2", "models", "m", "versions", "1", "infer"]
    if rest[:1] != ["v2"]:
        raise NotFound(f"no route {path!r}")
    rest = rest[1:]
    if rest == [] or rest == [""]:
        return Target("server")
    if rest[:1] == ["health"] and len(rest) == 2 and rest[1] in ("live", "ready"):
        return Target(rest[1])
    if rest[:1] == ["models"] and len(rest) >= 2:
        name, tail = rest[1], rest[2:]
        if name != model:
            raise NotFound(f"unknown model {name!r}: this service serves {model!r}")
        if tail[:1] == ["versions"]:
            if len(tail) < 2 or tail[1] != MODEL_VERSION:
                raise NotFound(f"unknown version of {model!r}: it has version {MODEL_VERSION!r} only")
            tail = tail[2:]
        if tail == []:
            return Target("model", name)
        if tail == ["ready"]:
            return Target("model_ready", name)
        if tail == ["infer"]:
            return Target("infer", name)
    raise NotFound(f"no v2 route {path!r}; served: {prefix}/v2, {prefix}/v2/health/live|ready, "
                   f"{prefix}/v2/models/{model}[/versions/{MODEL_VERSION}][/ready|/infer]")


def read_infer(body: bytes, headers: dict[str, str], specs: dict[str, TensorSpec],
               output_specs: dict[str, TensorSpec] | None = None) -> InferRequest:
    """Read an infer request's body into arrays checked against the model's inputs `specs` (and the outputs it
    asks for against `output_specs`, before the model runs); raise InvalidInput naming the input and the problem."""
    if headers.get("content-encoding", "identity").lower() != "identity":
        raise InvalidInput(f"Content-Encoding {headers['content-encoding']!r} is not served; send the body "
                           f"uncompressed", field="Content-Encoding")
    view = memoryview(body)
    raw_length = headers.get(HEADER_LENGTH.lower())
    if raw_length is None:
        header_bytes, binary = view, view[:0]
        what = "the infer request's JSON"
    else:
        length = _header_length(raw_length, len(body))
        header_bytes, binary = view[:length], view[length:]
        what = f"the infer request's JSON header (the body's first {length} bytes, by {HEADER_LENGTH})"
    document = _read_json(bytes(header_bytes), what)
    if not isinstance(document, dict) or not isinstance(document.get("inputs"), list) or not document["inputs"]:
        raise InvalidInput('an infer request is a JSON object with a non-empty "inputs" list', field="inputs")
    request_id = document.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise InvalidInput(f'"id" must be a string, not {type(request_id).__name__}', field="id")
    parameters = _object(document.get("parameters", {}), "parameters")
    inputs: dict[str, np.ndarray] = {}
    offset = 0
    for position, tensor in enumerate(document["inputs"]):
        tensor = _object(tensor, f"inputs[{position}]")
        name = tensor.get("name")
        if not isinstance(name, str):
            raise InvalidInput(f"inputs[{position}]: name {_brief(name)} must be a string, one of the model's "
                               f"inputs {sorted(specs)}", field="inputs")
        spec = specs.get(name)
        if spec is None:
            raise InvalidInput(f"inputs[{position}]: unknown input {_brief(name)}; the model takes {sorted(specs)}",
                               field="inputs")
        if name in inputs:
            raise InvalidInput(f"input {name!r} is given twice", field="inputs")
        array, offset = _read_tensor(tensor, spec, binary, offset)
        inputs[name] = array
    if offset != len(binary):
        raise InvalidInput(f"the binary section holds {len(binary)} bytes but the inputs take {offset}",
                           field=HEADER_LENGTH)
    missing = sorted(set(specs) - set(inputs))
    if missing:
        raise InvalidInput(f"inputs {missing} are missing; the model takes {sorted(specs)}", field="inputs")
    batch = {array.shape[0] for array in inputs.values()}
    if len(batch) != 1:
        raise InvalidInput(f"the inputs' first (batch) dimensions differ: {sorted(batch)}", field="inputs")
    outputs, binary_out = None, set()
    everything_binary = parameters.get("binary_data_output") is True
    if "outputs" in document:
        outputs = _read_outputs(document["outputs"], output_specs, everything_binary, binary_out)
    timeout = parameters.get("timeout")
    if timeout is not None and (not isinstance(timeout, int) or isinstance(timeout, bool)
                                or not 0 < timeout <= MAX_INT64):
        raise InvalidInput(f"parameters.timeout {_brief(timeout)} must be a positive number of microseconds, at "
                           f"most {MAX_INT64}", field="parameters.timeout")
    request = InferRequest(request_id, inputs, outputs or None, binary_out, timeout)
    if everything_binary and outputs is None:
        request.binary = {"*"}
    return request


def _header_length(raw: str, body_size: int) -> int:
    """Inference-Header-Content-Length's bytes, within the body's `body_size`; InvalidInput naming it otherwise."""
    if not (raw.isascii() and raw.isdigit()):  # str.isdigit() alone takes "\u00b2" and other digits int() refuses
        raise InvalidInput(f"{HEADER_LENGTH} {_brief(raw)} is not a number of bytes; send the JSON header's "
                           f"length in decimal digits", field=HEADER_LENGTH)
    digits = raw.lstrip("0") or "0"
    if len(digits) > len(str(body_size)) or int(digits) > body_size:  # never int() of more digits than it reads
        shown = digits if len(digits) <= 20 else f"a number of {len(digits)} digits"
        raise InvalidInput(f"{HEADER_LENGTH} is {shown}, beyond the body's {body_size} bytes; it must be the JSON "
                           f"header's length", field=HEADER_LENGTH)
    return int(digits)


def _read_json(raw: bytes, what: str) -> Any:
    """The infer request's JSON header (`what`, for the messages), read by json.loads itself: a tensor's floats cost
    nothing more. A header it refuses for an integer over int()'s digit limit is read again with api.py's integer
    reader (api.read_int: one source of truth for /api and v2), which keeps the number as a marker so that the 400 can
    name the input that holds it; deep nesting is refused as api.py refuses it."""
    try:
        return json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidInput(f"{what} could not be read: {exc}", field="body") from None
    except RecursionError:
        raise InvalidInput(f"{what} is nested too deeply", field="body") from None
    except ValueError:  # an integer with more digits than int() reads (sys.get_int_max_str_digits)
        pass
    found: list = []
    try:
        document = json.loads(raw, parse_int=api.read_int(found))
    except (RecursionError, ValueError) as exc:  # not expected: the first read got past both
        raise InvalidInput(f"{what} could not be read: {type(exc).__name__}", field="body") from None
    if not found:
        raise InvalidInput(f"{what} could not be read", field="body")
    raise _unreadable(document, found[0])


def _unreadable(document: Any, marker: str) -> InvalidInput:
    """The 400 for a number `marker` (kept by api.read_int) in `document`, naming the input that holds it."""
    parts: dict[str, Any] = {}
    names: dict[str, str] = {}  # part -> the input's name
    if isinstance(document, dict):
        tensors = document.get("inputs")
        for position, tensor in enumerate(tensors if isinstance(tensors, list) else []):
            parts[f"inputs[{position}]"] = tensor
            name = tensor.get("name") if isinstance(tensor, dict) else None
            if isinstance(name, str):
                names[f"inputs[{position}]"] = name
        parts.update((key, value) for key, value in document.items() if key != "inputs")
    where = api.field_holding(parts, marker)
    if where in names:
        return InvalidInput(f"input {names[where]!r} holds {marker}, which {marker.reason}; send numbers that fit "
                            f"its datatype", field=names[where])
    return InvalidInput(f"{where} holds {marker}, which {marker.reason}; send a number that fits the field",
                        field=where)


def _read_outputs(wanted_list: Any, specs: dict[str, TensorSpec] | None, everything_binary: bool,
                  binary_out: set) -> list[str]:
    """The outputs an infer request asks for by name (checked against the model's `specs` when given), adding those
    it wants as binary data to `binary_out`."""
    if wanted_list is None:
        return []
    if not isinstance(wanted_list, list):
        raise InvalidInput(f'"outputs" must be a list of objects such as {{"name": "..."}}, not '
                           f"{type(wanted_list).__name__}", field="outputs")
    names: list[str] = []
    for position, wanted in enumerate(wanted_list):
        wanted = _object(wanted, f"outputs[{position}]")
        name = wanted.get("name")
        known = f"; the model gives {sorted(specs)}" if specs is not None else ""
        if not isinstance(name, str):
            raise InvalidInput(f"outputs[{position}]: name {_brief(name)} must be a string{known}", field="outputs")
        if specs is not None and name not in specs:
            raise InvalidInput(f"outputs[{position}]: unknown output {_brief(name)}{known}", field="outputs")
        if name in names:
            raise InvalidInput(f"output {name!r} is asked for twice", field="outputs")
        names.append(name)
        options = _object(wanted.get("parameters", {}), f"outputs[{position}].parameters")
        if options.get("binary_data", everything_binary) is True:
            binary_out.add(name)
    return names


def _read_tensor(tensor: dict, spec: TensorSpec, binary: memoryview, offset: int) -> tuple[np.ndarray, int]:
    name = spec.name
    datatype = tensor.get("datatype")
    if datatype != spec.datatype:
        served = isinstance(datatype, str) and datatype in DATATYPES
        known = "" if served else f" ({_brief(datatype)} is not a datatype this server reads)"
        raise InvalidInput(f"input {name!r}: datatype {_brief(datatype)}, but the model takes "
                           f"{spec.datatype}{known}", field=name)
    shape = tensor.get("shape")
    if not isinstance(shape, list) or not shape or not all(_is_int(d) for d in shape):
        raise InvalidInput(f"input {name!r}: shape {_brief(shape)} must be a list of sizes, the batch first",
                           field=name)
    if len(shape) != len(spec.shape) or any(want not in (-1, got) for want, got in zip(spec.shape, shape)):
        raise InvalidInput(f"input {name!r}: shape {_brief(shape)} does not fit the model's {list(spec.shape)} "
                           f"(-1: any size)", field=name)
    for position, size in enumerate(shape):  # sizes of 0 reach the model (which fails), huge ones numpy (which fails)
        if not 1 <= size <= MAX_INT64:
            what = "batch size (shape[0])" if position == 0 else f"shape[{position}]"
            raise InvalidInput(f"input {name!r}: shape {_brief(shape)}: its {what} is {_brief(size)}; every size "
                               f"must be from 1 to {MAX_INT64}: send at least one row, of at least one value in every "
                               f"dimension", field=name)
    dtype = np.dtype(DATATYPES[datatype])
    count = math.prod(shape)
    size = _object(tensor.get("parameters", {}), f"input {name}.parameters").get("binary_data_size")
    if size is not None:
        if not _is_int(size) or size != count * dtype.itemsize:
            raise InvalidInput(f"input {name!r}: binary_data_size {_brief(size)} is not {count} x {dtype.itemsize} "
                               f"bytes for shape {shape} of {datatype}", field=name)
        if offset + size > len(binary):
            raise InvalidInput(f"input {name!r}: the binary section ends after {len(binary) - offset} of its "
                               f"{size} bytes (truncated?)", field=name)
        array = np.frombuffer(binary, dtype=dtype, count=count, offset=offset).reshape(shape)
        return array, offset + size
    data = tensor.get("data")
    if data is None:
        raise InvalidInput(f"input {name!r} has neither data nor parameters.binary_data_size", field=name)
    try:
        array = np.asarray(data, dtype=dtype)
    except (TypeError, ValueError, OverflowError, RecursionError) as exc:
        raise InvalidInput(f"input {name!r}: data could not be read as {datatype}: {_brief(str(exc), 200)}",
                           field=name) from None
    if array.size != count:
        raise InvalidInput(f"input {name!r}: data holds {array.size} values but shape {shape} needs {count}",
                           field=name)
    return array.reshape(shape), offset


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _brief(value: Any, limit: int = 60) -> str:
    """repr(value) for a message, cut short: a caller's field can be a megabyte."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit - 15]}...{text[-12:]}"


def _object(value: Any, where: str) -> dict:
    if not isinstance(value, dict):
        raise InvalidInput(f"{where} must be a JSON object", field=where)
    return value


def write_infer(request: InferRequest, model: str, outputs: dict[str, np.ndarray]) -> tuple[bytes, list]:
    """The answer to `request` with the model's `outputs` (batch first): its body and extra headers."""
    names = request.outputs or list(outputs)
    unknown = [name for name in names if name not in outputs]
    if unknown:
        raise InvalidInput(f"unknown outputs {unknown}; the model gives {sorted(outputs)}", field="outputs")
    answers, blobs = [], []
    for name in names:
        array = np.ascontiguousarray(outputs[name])
        datatype = datatype_of(array.dtype)
        entry = {"name": name, "datatype": datatype, "shape": list(array.shape)}
        if name in request.binary or "*" in request.binary:
            blob = array.astype(DATATYPES[datatype], copy=False).tobytes()
            entry["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        else:
            entry["data"] = array.reshape(-1).tolist()
        answers.append(entry)
    document = {"model_name": model, "model_version": MODEL_VERSION, "outputs": answers}
    if request.id is not None:
        document["id"] = request.id
    header = json.dumps(document, allow_nan=False).encode()
    if not blobs:
        return header, [("Content-Type", "application/json")]
    return b"".join([header, *blobs]), [("Content-Type", "application/octet-stream"),
                                        (HEADER_LENGTH, str(len(header)))]


def datatype_of(dtype: np.dtype) -> str:
    for name, code in DATATYPES.items():
        if np.dtype(code) == dtype.newbyteorder("<") or np.dtype(code) == dtype:
            return name
    raise ServingError(f"the model gave a {dtype} tensor, which the protocol cannot carry")


def error_body(error: ServingError) -> bytes:
    """The protocol's error body, `{"error": "..."}`."""
    return json.dumps({"error": error.message}).encode()
