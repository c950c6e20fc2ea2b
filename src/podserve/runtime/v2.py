"""The Open Inference Protocol's HTTP/REST wire format ("v2", as KServe and Triton speak it).

Only the wire lives here: the paths under `/api/<service>/v2`, infer requests read into numpy
tensors (JSON `data`, or the binary tensor extension: `Inference-Header-Content-Length`, raw
little-endian tensors after the JSON header, read without copying), and answers written back
(JSON, or binary with `binary_data_output` / an output's `binary_data`). Nothing here runs a
model; runtime/v2_route.py serves it from the same instances and batcher as `/api/<service>`.

Not served: gRPC, the shared-memory extensions, BYTES tensors, compressed bodies.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from podserve.errors import InvalidInput, NotFound, ServingError

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


def read_infer(body: bytes, headers: dict[str, str], specs: dict[str, TensorSpec]) -> InferRequest:
    """Read an infer request's body into arrays checked against the model's inputs `specs`; raise InvalidInput
    naming the input and the problem."""
    if headers.get("content-encoding", "identity").lower() != "identity":
        raise InvalidInput(f"Content-Encoding {headers['content-encoding']!r} is not served; send the body "
                           f"uncompressed", field="Content-Encoding")
    view = memoryview(body)
    raw_length = headers.get(HEADER_LENGTH.lower())
    if raw_length is None:
        header_bytes, binary = view, view[:0]
    else:
        if not raw_length.isdigit():
            raise InvalidInput(f"{HEADER_LENGTH} {raw_length!r} is not a number of bytes", field=HEADER_LENGTH)
        length = int(raw_length)
        if length > len(body):
            raise InvalidInput(f"{HEADER_LENGTH} is {length}, beyond the body's {len(body)} bytes; it must be the "
                               f"JSON header's length", field=HEADER_LENGTH)
        header_bytes, binary = view[:length], view[length:]
    try:
        document = json.loads(bytes(header_bytes))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidInput(f"the infer request's JSON could not be read: {exc}", field="body") from None
    if not isinstance(document, dict) or not isinstance(document.get("inputs"), list) or not document["inputs"]:
        raise InvalidInput('an infer request is a JSON object with a non-empty "inputs" list', field="inputs")
    parameters = _object(document.get("parameters", {}), "parameters")
    inputs: dict[str, np.ndarray] = {}
    offset = 0
    for position, tensor in enumerate(document["inputs"]):
        tensor = _object(tensor, f"inputs[{position}]")
        name = tensor.get("name")
        spec = specs.get(name)
        if spec is None:
            raise InvalidInput(f"inputs[{position}]: unknown input {name!r}; the model takes {sorted(specs)}",
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
        outputs = []
        for position, wanted in enumerate(document["outputs"] or []):
            wanted = _object(wanted, f"outputs[{position}]")
            outputs.append(wanted.get("name"))
            options = _object(wanted.get("parameters", {}), f"outputs[{position}].parameters")
            if options.get("binary_data", everything_binary) is True:
                binary_out.add(wanted.get("name"))
    timeout = parameters.get("timeout")
    if timeout is not None and (not isinstance(timeout, int) or isinstance(timeout, bool) or timeout <= 0):
        raise InvalidInput(f"parameters.timeout {timeout!r} must be a positive number of microseconds",
                           field="parameters.timeout")
    request = InferRequest(document.get("id"), inputs, outputs or None, binary_out, timeout)
    if everything_binary and outputs is None:
        request.binary = {"*"}
    return request


def _read_tensor(tensor: dict, spec: TensorSpec, binary: memoryview, offset: int) -> tuple[np.ndarray, int]:
    name = spec.name
    datatype = tensor.get("datatype")
    if datatype != spec.datatype:
        known = "" if datatype in DATATYPES else f" ({datatype!r} is not a datatype this server reads)"
        raise InvalidInput(f"input {name!r}: datatype {datatype!r}, but the model takes {spec.datatype}{known}",
                           field=name)
    shape = tensor.get("shape")
    if not isinstance(shape, list) or not shape or not all(isinstance(d, int) and d >= 0 for d in shape):
        raise InvalidInput(f"input {name!r}: shape {shape!r} must be a list of sizes, the batch first", field=name)
    if len(shape) != len(spec.shape) or any(want not in (-1, got) for want, got in zip(spec.shape, shape)):
        raise InvalidInput(f"input {name!r}: shape {shape} does not fit the model's {list(spec.shape)} "
                           f"(-1: any size)", field=name)
    dtype = np.dtype(DATATYPES[datatype])
    count = math.prod(shape)
    size = _object(tensor.get("parameters", {}), f"input {name}.parameters").get("binary_data_size")
    if size is not None:
        if size != count * dtype.itemsize:
            raise InvalidInput(f"input {name!r}: binary_data_size {size} is not {count} x {dtype.itemsize} bytes "
                               f"for shape {shape} of {datatype}", field=name)
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
    except (TypeError, ValueError, OverflowError) as exc:
        raise InvalidInput(f"input {name!r}: data could not be read as {datatype}: {exc}", field=name) from None
    if array.size != count:
        raise InvalidInput(f"input {name!r}: data holds {array.size} values but shape {shape} needs {count}",
                           field=name)
    return array.reshape(shape), offset


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
