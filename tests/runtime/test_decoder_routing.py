"""The front routes each admitted request to the decoder with the least ahead of it, among those that take requests."""

import pytest

from podserve.runtime.processes.decoders import STALE_DECODER_NS
from podserve.runtime.processes.pod_state import STARTING, now_ns
from podserve.testbed.decoder_routing import ready_decoders


@pytest.fixture
def decoders():
    """Three decoders connected and ready, each with nothing ahead of a new request."""
    return ready_decoders(3)


def test_the_decoder_with_the_least_to_decode_and_the_fewest_steps_running_gets_the_request(decoders):
    first, second, third = decoders.links.values()
    first.decoding, second.decoding, third.decoding = 2, 1, 1
    decoders.state.slots[second.slot]["busy"] = 1  # a thread of its own in a step: 2 ahead, as the first
    assert decoders._least_busy() is third
    third.decoding = 3
    second.held = {1: None}  # ties on what is ahead go to the one holding fewer requests
    first.held = {1: None, 2: None}
    assert decoders._least_busy() is second


@pytest.mark.parametrize("why", ["paused", "closed", "replaced", "not ready", "stale loop", "newer process"])
def test_a_decoder_that_cannot_take_requests_gets_none_however_idle(decoders, why):
    idle, busy, busier = decoders.links.values()
    busy.decoding, busier.decoding = 5, 6
    slot = decoders.state.slots[idle.slot]
    if why == "paused":
        idle.link.paused = True  # its link is over its high-water mark
    elif why == "closed":
        idle.link.closed = True
    elif why == "replaced":
        slot["replace"] = 1
    elif why == "not ready":
        slot["state"] = STARTING
    elif why == "stale loop":
        slot["loop_ns"] = now_ns() - STALE_DECODER_NS - 1
    else:
        slot["generation"] += 1  # its slot belongs to the process that replaced it
    assert decoders._least_busy() is busy
    busy.link.paused = busier.link.paused = True
    assert decoders._least_busy() is None  # the request waits for one
