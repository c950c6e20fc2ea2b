"""When a batch thread should wait for more requests: only while waiting can still lower the cost per input.

One predict call costs about `fixed + per_item x rows` (a session run's own cost, and each row's), where
its rows are its inputs, or where the handler pads its runs to one size (`Handler.padded_size`, on a
GPU) the rows its runs are padded to: there every call of up to max_batch_size inputs runs
max_batch_size rows. `BatchCost` learns both parts from the calls the instance makes (the runs the
handler timed at load, padded and unpadded; the warm-up's batches; then every batch it serves), by least
squares over rows, weighted towards the recent ones. Padded calls all run the same rows and cost the
same whatever their inputs, which is all the decisions below need; they move the call's own cost and
leave what a row costs to the runs the handler timed padded and not (`Handler.run_costs`). Counted by
their inputs instead, as they were, they read 0 ms an input when quiet, and a busy spell's slower full
batches passed for a cost per input that padding does not have.

With k inputs queued, each pays `call(k) / k`; the most that waiting can save is what a full batch
(`full`, the most a call gets: runtime/batching/batcher.py's `largest_batch`) would take off it, `call(k) / k -
call(full) / full` (unpadded `fixed / k - fixed / full`; padded, where a call costs the same whatever its
inputs, `call / k - call / full`). The batch runs at once when that is under `WORTH_WAITING` of what
each input costs now, and waits (within `max_batch_delay_ms`, and only while more requests are on their
way) when it is over, but never longer than what one more call costs beyond its input's own row (the
fixed cost; padded, the whole call): the lane's device idles meanwhile, and holding it longer than the
call a fuller batch saves loses more device time than it gains (the ski-rental bound). So a GPU, whose
call costs the same for 1 input as for a full batch, forms full batches; a CPU, where each input costs
about the same alone or batched, never makes a caller wait for nothing. value.py's `max_batch_size` and
`max_batch_delay_ms` keep their meaning as upper bounds. This is Triton's queue delay with Clipper's
measured cost deciding whether to spend it.
"""

from __future__ import annotations

#: Wait for a fuller batch only while it could save at least this share of each input's cost.
WORTH_WAITING = 0.05
#: Weight of one observation against the ones before it (about the last 50 batches count).
DECAY = 0.98


def rows_run(size: int, padded_size: int | None) -> int:
    """The rows a predict call of `size` inputs runs: `size`, or with runs padded to `padded_size` that many for
    each run it takes."""
    if not padded_size or size <= 0:
        return size
    return -(-size // padded_size) * padded_size


class BatchCost:
    """The cost of one predict call, `fixed + per_item * rows`, learnt from observed calls; `padded_size` as the
    handler's (None: a call runs its inputs' rows)."""

    __slots__ = ("_w", "_sx", "_sy", "_sxx", "_sxy", "fixed", "per_item", "padded_size")

    def __init__(self, padded_size: int | None = None) -> None:
        self._w = self._sx = self._sy = self._sxx = self._sxy = 0.0
        self.padded_size = padded_size
        self.fixed: float | None = None  # seconds; None until calls of two different row counts were seen
        self.per_item: float | None = None  # seconds a row

    def observe(self, size: int, seconds: float) -> None:
        """Take one predict call of `size` inputs that took `seconds` into account; padded, its rows cannot tell
        what a row costs (they are one count whatever its inputs), only what the call does."""
        self._add(rows_run(size, self.padded_size), seconds, split=not self.padded_size)

    def observe_rows(self, rows: int, seconds: float) -> None:
        """Take one run of `rows` rows (padding included) that took `seconds` into account: the handler's timed
        runs, padded and not."""
        self._add(rows, seconds, split=True)

    def _add(self, rows: int, seconds: float, split: bool) -> None:
        self._w = self._w * DECAY + 1.0
        self._sx = self._sx * DECAY + rows
        self._sy = self._sy * DECAY + seconds
        self._sxx = self._sxx * DECAY + rows * rows
        self._sxy = self._sxy * DECAY + rows * seconds
        spread = self._w * self._sxx - self._sx * self._sx
        if not split or spread <= 1e-9 * self._w * self._sxx:  # one row count lately: no split to tell from these
            if self.per_item is not None:  # the row's cost as learnt before; the calls say what the rest costs
                self.fixed = max(0.0, (self._sy - self.per_item * self._sx) / self._w)
            return
        slope = (self._w * self._sxy - self._sx * self._sy) / spread
        self.per_item = max(0.0, slope)
        self.fixed = max(0.0, (self._sy - self.per_item * self._sx) / self._w)

    def call_seconds(self, size: int) -> float:
        """What a predict call of `size` inputs costs by what was learnt (padding included); only once measured."""
        assert self.fixed is not None and self.per_item is not None
        return self.fixed + self.per_item * rows_run(size, self.padded_size)

    def worth_waiting(self, queued: int, full: int) -> bool:
        """Whether a batch of `queued` inputs should wait for more (True until the cost can be split). An empty
        queue (its requests withdrawn while the batch was filling) has nothing to wait for."""
        if queued <= 0 or queued >= full:
            return False
        if self.fixed is None:
            return True
        now = self.call_seconds(queued) / queued
        saving = now - self.call_seconds(full) / full
        return now > 0 and saving > WORTH_WAITING * now

    def longest_worth_holding(self, max_batch_delay: float) -> float:
        """How long a free lane may hold its batch open: no longer than what one more call costs beyond its
        input's own row (the fixed cost; padded, the whole call), which is the most a fuller batch saves (an idle
        device loses what it waits), and never past `max_batch_delay`."""
        if self.fixed is None:
            return max_batch_delay
        return min(max_batch_delay, self.call_seconds(1) - self.per_item)

    def describe(self) -> str:
        if self.fixed is None:
            return "not yet measured"
        if not self.padded_size:
            return f"{self.fixed * 1000:.3f} ms per call + {self.per_item * 1000:.3f} ms per input"
        return (f"{self.fixed * 1000:.3f} ms per call + {self.per_item * 1000:.3f} ms per row, runs padded to "
                f"{self.padded_size} rows: {self.call_seconds(1) * 1000:.3f} ms a run")
