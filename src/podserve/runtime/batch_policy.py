"""When a batch thread should wait for more requests: only while waiting can still lower the cost per input.

One predict call of n inputs costs about `fixed + per_item x n` (a session run's own cost, and each
input's). `BatchCost` learns both from the calls the instance makes (the warm-up's batches of every
size first, then every batch it serves), by least squares weighted towards the recent ones.

With k inputs queued, each pays `fixed / k + per_item`; the most that waiting can save is what a full
batch (`full`, the most a call gets: runtime/batcher.py's `largest_batch`) would take off the fixed
share, `fixed / k - fixed / full`. The batch runs at once when that is under `WORTH_WAITING` of what
each input costs now, and waits (within
`max_batch_delay_ms`, and only while more requests are on their way) when it is over, but never
longer than one call's fixed cost: the lane's device idles meanwhile, and holding it longer than the
call a fuller batch saves loses more device time than it gains (the ski-rental bound). So a GPU, whose
fixed cost dwarfs the per-input one, still forms full batches; a CPU, where each input costs about the
same alone or batched, never makes a caller wait for nothing. value.py's `max_batch_size` and
`max_batch_delay_ms` keep their meaning as upper bounds. This is Triton's queue delay with Clipper's
measured cost deciding whether to spend it.
"""

from __future__ import annotations

#: Wait for a fuller batch only while it could save at least this share of each input's cost.
WORTH_WAITING = 0.05
#: Weight of one observation against the ones before it (about the last 50 batches count).
DECAY = 0.98


class BatchCost:
    """The cost of one predict call of n inputs, `fixed + per_item * n`, learnt from observed calls."""

    __slots__ = ("_w", "_sx", "_sy", "_sxx", "_sxy", "fixed", "per_item")

    def __init__(self) -> None:
        self._w = self._sx = self._sy = self._sxx = self._sxy = 0.0
        self.fixed: float | None = None  # seconds; None until calls of two different sizes were seen
        self.per_item: float | None = None

    def observe(self, size: int, seconds: float) -> None:
        """Take one predict call of `size` inputs that took `seconds` into account."""
        self._w = self._w * DECAY + 1.0
        self._sx = self._sx * DECAY + size
        self._sy = self._sy * DECAY + seconds
        self._sxx = self._sxx * DECAY + size * size
        self._sxy = self._sxy * DECAY + size * seconds
        spread = self._w * self._sxx - self._sx * self._sx
        if spread <= 1e-9 * self._w * self._sxx:  # one size only so far: the split cannot be told
            return
        slope = (self._w * self._sxy - self._sx * self._sy) / spread
        self.per_item = max(0.0, slope)
        self.fixed = max(0.0, (self._sy - self.per_item * self._sx) / self._w)

    def worth_waiting(self, queued: int, full: int) -> bool:
        """Whether a batch of `queued` inputs should wait for more (True until the cost can be split). An empty
        queue (its requests withdrawn while the batch was filling) has nothing to wait for."""
        if queued <= 0 or queued >= full:
            return False
        if self.fixed is None:
            return True
        now = self.fixed / queued + self.per_item
        saving = self.fixed / queued - self.fixed / full
        return now > 0 and saving > WORTH_WAITING * now

    def longest_worth_holding(self, max_batch_delay: float) -> float:
        """How long a free lane may hold its batch open: no longer than one call's fixed cost, which is the most
        a fuller batch saves (an idle device loses what it waits), and never past `max_batch_delay`."""
        return max_batch_delay if self.fixed is None else min(max_batch_delay, self.fixed)

    def describe(self) -> str:
        if self.fixed is None:
            return "not yet measured"
        return f"{self.fixed * 1000:.3f} ms per call + {self.per_item * 1000:.3f} ms per input"
