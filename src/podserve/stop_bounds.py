"""The longest a pod takes from SIGTERM to its exit, and the bounds it is made of: one source for the runtime's
shutdown and the manifests' terminationGracePeriodSeconds (a grace shorter than this would SIGKILL admitted requests).

A pod stops in order: the front takes requests for `drain_seconds`, answers every admitted request by its deadline
plus ANSWER_GRACE_SECONDS, gives keep-alive connections CLOSE_SECONDS to take their answers, then batches still
running get STOP_SECONDS to end (one process), or the split layout's other processes END_SECONDS before the
supervisor kills them (docs/processes.md).
"""

from __future__ import annotations

from podserve.settings import ServingSettings

#: Every admitted request is answered by its deadline plus this, whatever ends or hangs (docs/processes.md): a batch
#: that started before the deadline gets this long to end; past it, the request is answered 504.
ANSWER_GRACE_SECONDS = 1.0
#: Once every request is answered, how long keep-alive connections get to take their answers before the server stops.
CLOSE_SECONDS = 5.0
#: Then, how long batches still running (their requests answered already) get to end before the process exits.
STOP_SECONDS = 5.0
#: How long the split layout's other processes get to end after SIGTERM, once the front has drained, before the
#: supervisor kills them.
END_SECONDS = 10.0


def upload_seconds(settings: ServingSettings, length: int) -> float:
    """The upload-rate rule: a body of `length` bytes over max_body_bytes gets its length at the platform's
    min_upload_bytes_per_second on top of the request's deadline."""
    if length <= settings.max_body_bytes:
        return 0.0
    return length / settings.min_upload_bytes_per_second


def answer_bound_seconds(settings: ServingSettings) -> float:
    """The longest an admitted request waits for its answer: the longest deadline (the service's own timeout, plus
    the largest body's upload allowance) and the grace."""
    return (settings.request_timeout_ms / 1000.0 + upload_seconds(settings, settings.largest_body_bytes())
            + ANSWER_GRACE_SECONDS)


def front_drain_seconds(settings: ServingSettings) -> float:
    """How long the front takes from SIGTERM to its exit at most: `drain_seconds` taking requests, every admitted
    request answered, then the connections closed."""
    return settings.drain_seconds + answer_bound_seconds(settings) + CLOSE_SECONDS


def drain_bound_seconds(settings: ServingSettings, split: bool) -> float:
    """How long a pod takes from SIGTERM to its exit at most, in the split layout (`split`) or in one process."""
    return front_drain_seconds(settings) + (END_SECONDS if split else STOP_SECONDS)
