"""Bounded polling for the control-plane tests: the testbed's own poll loop, failing the test when it runs out."""

from __future__ import annotations

from podserve.testbed.processes import poll_until


def wait_for(check, what: str, timeout: float = 60.0, every: float = 0.25):
    """Call `check` until it returns something truthy (returned); fail naming `what` after `timeout` seconds."""
    try:
        return poll_until(check, what, timeout, every)
    except TimeoutError as exc:
        raise AssertionError(str(exc)) from None
