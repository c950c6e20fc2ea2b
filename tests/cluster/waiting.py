"""Bounded polling for the control-plane tests."""

from __future__ import annotations

import time


def wait_for(check, what: str, timeout: float = 60.0, every: float = 0.25):
    """Call `check` until it returns something truthy (returned); fail naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(every)
    raise AssertionError(f"{what}: not within {timeout:.0f}s (last seen: {last!r})")
