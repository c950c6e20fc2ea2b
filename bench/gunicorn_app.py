"""The design podserve replaces: Gunicorn sync workers, each running the model once per request.

    BENCH_HANDLER=server:TextDirection BENCH_MODEL=model/... BENCH_SERVICE=text-direction \\
        gunicorn -w 2 -k sync -b 127.0.0.1:9000 'bench.gunicorn_app:app_from_env()'

Every worker process loads its own copy of the same handler (single-threaded: one worker
per core, as the old guides advise) and calls decode -> predict([one input]) -> encode in
the request's own thread: no batching, no queue the code can see. The wire format is
podserve's own (`podserve.runtime.protocols.api`), so both servers parse the same bytes the same way.
"""

from __future__ import annotations

import json
import os

from flask import Flask, Response, request

from podserve.errors import ServingError
from podserve.handler import Device
from podserve.routes import PING_PATH, service_path
from podserve.runtime.core.startup import import_handler
from podserve.runtime.protocols import api

MAX_IMAGE_PIXELS = 25_000_000


def create_app(handler_spec: str, model_path: str, service: str, device: Device = Device("cpu", 0, cpu_threads=1)
               ) -> Flask:
    handler = import_handler(handler_spec)()
    handler.load(model_path, device)
    app = Flask("gunicorn-baseline")

    def respond(status: int, body: dict) -> Response:
        return Response(json.dumps(body), status=status, mimetype="application/json")

    @app.get(PING_PATH)
    def ping() -> Response:
        return respond(200, {"results": {"ready": True}, "msg": "ok"})

    @app.post(service_path(service))
    def infer() -> Response:
        payload = None
        try:
            payload = api.parse_request(request.content_type, request.get_data(cache=False), request.args,
                                        MAX_IMAGE_PIXELS)
            output = handler.predict([handler.decode(payload)])[0]
            return respond(200, api.success_body(payload, handler.encode(output)))
        except ServingError as exc:
            return respond(exc.status, api.error_body(exc, payload))

    return app


def app_from_env() -> Flask:
    """The app Gunicorn loads in each worker, after the fork (so each has its own session, and on a GPU its own
    CUDA context and copy of the weights: BENCH_DEVICE=cuda)."""
    device = Device("cuda", 0) if os.environ.get("BENCH_DEVICE") == "cuda" else Device("cpu", 0, cpu_threads=1)
    return create_app(os.environ["BENCH_HANDLER"], os.environ["BENCH_MODEL"], os.environ["BENCH_SERVICE"], device)

