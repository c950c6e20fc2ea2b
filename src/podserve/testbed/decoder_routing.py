"""The front's routing over N ready decoders, without their processes: what the routing test and bench/routing.py
drive (runtime/processes/decoders.py)."""

from __future__ import annotations

import types

from podserve.runtime.processes.decoders import DecoderLink, Decoders
from podserve.runtime.processes.pod_state import DECODER, READY, PodState


def ready_decoders(count: int) -> Decoders:
    """`Decoders` over a fresh pod state with `count` decoders connected and ready, each with nothing ahead of a new
    request (its links stand-ins that are neither closed nor paused: routing reads no more of them)."""
    state = PodState.create()
    routing = Decoders.__new__(Decoders)  # routing needs only the state and the links
    routing.state, routing.links = state, {}
    for _ in range(count):
        slot = state.claim_slot(DECODER)
        state.slots[slot]["state"] = READY
        link = DecoderLink(f"decoder-{slot}", slot, int(state.slots[slot]["generation"]))
        link.link = types.SimpleNamespace(closed=False, paused=False)
        routing.links[slot] = link
    return routing
