"""podserve: serve a model from one process per GPU pod, with dynamic batching.

The surface a service uses, and the only one that stays stable:

    from podserve import Handler, OnnxHandler, Payload, WithContext, Device, InvalidInput, service_metrics

The names load on first use, so that CI's tooling can import `podserve.settings` and
friends without the server's dependencies (numpy, Pillow, prometheus_client) installed.
"""

from importlib import import_module

_EXPORTS = {
    "Device": "podserve.handler",
    "Handler": "podserve.handler",
    "OnnxHandler": "podserve.handler",
    "Payload": "podserve.handler",
    "WithContext": "podserve.handler",
    "FrameOutput": "podserve.handler",
    "VideoFrame": "podserve.videos",
    "InvalidInput": "podserve.errors",
    "decode_image": "podserve.images",
    "service_metrics": "podserve.service_metrics",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'podserve' has no attribute {name!r}")
    module = import_module(_EXPORTS[name])
    return module if name == "service_metrics" else getattr(module, name)
