"""podserve: serve a model from one process per GPU pod, with dynamic batching.

The surface a service uses, and the only one that stays stable:

    from podserve import Handler, OnnxHandler, Payload, Device, InvalidInput, service_metrics
"""

from podserve import service_metrics
from podserve.errors import InvalidInput
from podserve.handler import Device, Handler, OnnxHandler, Payload
from podserve.images import decode_image

__all__ = ["Device", "Handler", "InvalidInput", "OnnxHandler", "Payload", "decode_image", "service_metrics"]
