"""What runs in the pod: the HTTP server, the model instances and their batchers, and the processes that hold them.

Its one input is the environment (see `podserve.settings`); it never reads value.py.

Its folders are layers; a module imports only from its own layer, the layers LAYERS lists for it, and the service
surface (the modules at podserve/'s top: settings, routes, errors, handler...), which imports no runtime module.
Top to bottom:

    main.py, __main__.py,    the entry points: `python -m podserve.runtime` (the pod's PID 1) and the image's
    healthcheck.py           HEALTHCHECK
    processes/               the layouts: one process (one_process.py), or the split layout's supervisor (PID 1),
                             front, decoders and model process, their shared state (pod_state.py)
      transport/             the wire between those processes: links, shared-memory arenas, items, the handshake
    offline/                 the Kafka worker (`python -m podserve.runtime.offline`), beside processes/
    protocols/               what each path answers and in what format: /api/<service> (api.py, service_route.py,
                             video_route.py), the Open Inference Protocol (v2.py, v2_route.py), the probes, /metrics
                             and the 404/405s, and which path goes where (router.py)
    http/ | batching/        HTTP/1.1 (server, connection, parser, admission, refusals) | the model instances (pool.py),
                             the batcher and its policy; neither imports the other
    core/                    what every layer uses: lifecycle, logs, metrics, devices, the handler's verbs, start-up

Nothing in the pod imports CI's tooling (podserve.tooling) or the test bed (podserve.testbed): the service image holds
neither. tests/test_layout.py reads every import of the runtime and the surface (without importing them) against this.
"""

#: The layers each layer may import, besides its own and the service surface. A module's layer is its folder under
#: runtime/ (processes/transport/ is `transport`); the modules at runtime/'s top are `entry`.
LAYERS = {
    "entry": ("processes", "transport", "protocols", "http", "batching", "core"),
    "processes": ("transport", "protocols", "http", "batching", "core"),
    "transport": (),
    "offline": ("protocols", "batching", "core"),
    "protocols": ("http", "batching", "core"),
    "http": ("core",),
    "batching": ("core",),
    "core": (),
}
