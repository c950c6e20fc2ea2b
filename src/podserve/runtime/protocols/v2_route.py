"""`/api/<service>/v2/...`: the Open Inference Protocol served from the same instances and batcher as the service.

Health and metadata are answered by the event loop from the pool's state, like the probes.
An infer request takes the service route's lane (runtime/protocols/service_route.py: admission,
its deadline, the request threads, refusal pacing): a request thread reads its tensors
(runtime/protocols/v2.py), and a batch of N rows becomes N inputs for the batcher, holding N places
against the pod's limit (a second admission step, once N is known), so they share batches with
`/api/<service>`'s requests and each other's; the rows' outputs are gathered back in order.
The tensors go straight to the handler's `predict_all_outputs`: no `decode`, no `encode`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from podserve import errors
from podserve.errors import NotFound, NotReady, ServingError
from podserve.routes import READ_METHODS
from podserve.runtime.batching.batcher import AllOutputs, WorkItem
from podserve.runtime.batching.fanout import FanOut
from podserve.runtime.core.verbs import batch_key_of
from podserve.runtime.http.messages import JSON_TYPE, Answer, Exchange
from podserve.runtime.protocols import v2
from podserve.runtime.protocols.service_route import Call, ServiceRoute, WireFormat


@dataclass(frozen=True)
class ModelSpecs:
    inputs: dict[str, v2.TensorSpec]
    outputs: dict[str, v2.TensorSpec]

    def as_json(self) -> dict:
        return {"inputs": [s.as_json() for s in self.inputs.values()],
                "outputs": [s.as_json() for s in self.outputs.values()]}

    @classmethod
    def from_json(cls, data: dict) -> "ModelSpecs":
        def specs(items):
            return {i["name"]: v2.TensorSpec(i["name"], i["datatype"], tuple(i["shape"])) for i in items}
        return cls(specs(data["inputs"]), specs(data["outputs"]))


def describe_model(handler) -> dict:
    """What the Open Inference Protocol says of a loaded handler's model, as JSON: its tensors, or why it has none
    ({"error": ...}). The model process publishes it for the front and decoders (runtime/processes/pod_state.py)."""
    try:
        return model_specs(handler).as_json()
    except NotFound as exc:
        return {"error": exc.message}


def model_specs(handler) -> ModelSpecs:
    """The tensors of a loaded handler: read from its ONNX session, or declared (NotFound when neither)."""
    session = getattr(handler, "session", None)
    if session is not None:
        return ModelSpecs(_tensor_specs(session.get_inputs()), _tensor_specs(session.get_outputs()))
    if handler.tensor_inputs and handler.tensor_outputs:
        return ModelSpecs(_declared(handler.tensor_inputs), _declared(handler.tensor_outputs))
    raise NotFound("this service's handler is not an ONNX model and declares no tensors (Handler.tensor_inputs, "
                   "tensor_outputs): it serves /api/<service> only, not the Open Inference Protocol")


class _Job(FanOut):
    """One infer request's rows on their way through the batcher."""

    __slots__ = ("request",)

    def __init__(self, request: v2.InferRequest, rows: list):
        super().__init__(len(rows))
        self.request = request


class V2Route(WireFormat):
    """Serve the Open Inference Protocol under `prefix` (the service's route) for model `model`.

    `accept(exchange, wire)` admits an infer request onto the service route's lane (in one process, admission and
    the service route; in the front process, forwarding to a decoder); `describe()` is the model's description
    (`describe_model`) once it is loaded, None before."""

    def __init__(self, prefix: str, model: str, accept: Callable[[Exchange, WireFormat], None], probes,
                 describe: Callable[[], dict | None]):
        self.prefix, self.model = prefix, model
        self.v2_prefix = prefix + "/v2"
        self.accept, self.probes, self.describe = accept, probes, describe
        self._specs: ModelSpecs | None = None

    def serves(self, path: str) -> bool:
        return path == self.v2_prefix or path.startswith(self.v2_prefix + "/")

    def is_infer(self, exchange: Exchange) -> bool:
        return exchange.method == "POST" and exchange.path.endswith("/infer") and self.serves(exchange.path)

    # In the event loop's thread.

    def dispatch(self, exchange: Exchange) -> None:
        """Answer health and metadata now; hand an infer request to the service route's lane."""
        try:
            target = v2.route(exchange.path, self.prefix, self.model)
            if target.kind == "infer":
                if exchange.method != "POST":
                    raise errors.MethodNotAllowed.on(exchange.method, exchange.path, ("POST",))
                self.accept(exchange, self)
                return
            if exchange.method not in READ_METHODS:
                raise errors.MethodNotAllowed.on(exchange.method, exchange.path, READ_METHODS)
            exchange.answer(self._describe(target))
        except ServingError as error:
            exchange.answer(self.error_answer(error))

    def _describe(self, target: v2.Target) -> Answer:
        if target.kind == "server":
            return Answer.json(200, {"name": "podserve", "version": "1", "extensions": list(v2.EXTENSIONS)})
        if target.kind == "live":
            live = self.probes.is_live()
            return Answer.json(200 if live else 503, {"live": live})
        if target.kind in ("ready", "model_ready"):
            ready = self.probes.readiness_problem() is None
            return Answer.json(200 if ready else 503, {"ready": ready})
        specs = self.specs()
        return Answer.json(200, {"name": self.model, "versions": [v2.MODEL_VERSION], "platform": "onnxruntime_onnx",
                                 **specs.as_json()})

    def specs(self) -> ModelSpecs:
        """The model's inputs and outputs, from its description once it is loaded."""
        if self._specs is None:
            description = self.describe()
            if description is None:
                raise NotReady(f"not ready: {self.probes.readiness_problem() or 'the model is loading'}")
            if "error" in description:
                raise NotFound(description["error"].replace("/api/<service>", self.prefix))
            self._specs = ModelSpecs.from_json(description)
        return self._specs

    # In the request threads (through ServiceRoute).

    def begin(self, route: ServiceRoute, call: Call) -> None:
        specs = self.specs()
        exchange = call.exchange
        request = v2.read_infer(exchange.body, exchange.headers, specs.inputs, specs.outputs)  # a row at least
        if request.timeout_us is not None:  # Triton's `timeout` parameter lowers the deadline like the header
            route.lower_deadline(call, exchange.received_at + request.timeout_us / 1e6)
        rows = _rows(request.inputs)
        if not route.hold_places(call, len(rows), "rows", "inputs"):  # the second admission step: a place per row
            return
        route.pool.ensure_room()
        job = call.job = _Job(request, rows)
        handler = route.pool.codec_handler()
        if not route.submitting(call):  # answered meanwhile (its deadline, its caller gone): nothing to run
            return
        job.submit(route.pool, rows, [AllOutputs((batch_key_of(handler, row),)) for row in rows], call.deadline,
                   route.work_done, call)

    def finish(self, route: ServiceRoute, call: Call, item: WorkItem) -> None:
        job: _Job = call.job
        if item.error is not None:
            route.answer(call, item.error, item)
            return
        if not job.add(item):
            return
        try:
            names = job.outputs[0].keys()
            outputs = {name: np.stack([row[name] for row in job.outputs]) for name in names}
            body, headers = v2.write_infer(job.request, self.model, outputs)
        except ServingError as error:
            route.answer(call, error, item)
            return
        route.answer(call, Answer(200, body, headers), item)

    def error_answer(self, error: ServingError) -> Answer:
        return Answer(error.status, v2.error_body(error), JSON_TYPE + list(error.headers.items()))


def _rows(inputs: dict[str, np.ndarray]) -> list:
    """One model input per row of the batch: the row's array, or a dict of rows for a model of several inputs."""
    count = next(iter(inputs.values())).shape[0]
    if len(inputs) == 1:
        (array,) = inputs.values()
        return [array[i] for i in range(count)]
    return [{name: array[i] for name, array in inputs.items()} for i in range(count)]


def _tensor_specs(nodes) -> dict[str, v2.TensorSpec]:
    specs = {}
    for node in nodes:
        datatype = v2.ONNX_TYPES.get(node.type)
        if datatype is None:
            raise NotFound(f"the model's tensor {node.name!r} is of type {node.type}, which the Open Inference "
                           f"Protocol is not served for here")
        shape = tuple(d if isinstance(d, int) and d > 0 else -1 for d in node.shape)
        specs[node.name] = v2.TensorSpec(node.name, datatype, shape)
    return specs


def _declared(tensors: tuple) -> dict[str, v2.TensorSpec]:
    specs = {}
    for name, datatype, shape in tensors:
        if datatype not in v2.DATATYPES:
            raise NotFound(f"the handler declares tensor {name!r} as {datatype!r}, not a datatype served here "
                           f"({', '.join(v2.DATATYPES)})")
        specs[name] = v2.TensorSpec(name, datatype, tuple(shape))
    return specs
