"""One thing the testbed keeps equal to a live cluster by polling: `sync()` every `every` seconds on its own thread.

    class Feed(Poller):
        def sync(self): ...            # read what is live, write what follows from it
    feed = Feed(every=0.5).start()   # one sync now, then the thread; feed.stop()

An exception in a later sync is kept in `errors` (the tests read them) and the polling goes on; the first sync's is
raised by start(). Subclasses may override `prepare()` (run once before the first sync: their folders).
"""

from __future__ import annotations

import threading


class Poller:
    """Calls `sync()` every `every` seconds on a daemon thread named `name` until `stop()`."""

    def __init__(self, every: float, name: str):
        self.every, self.name = every, name
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def prepare(self) -> None:
        """What must exist before the first sync (default: nothing)."""

    def sync(self):
        raise NotImplementedError

    def start(self):
        self.prepare()
        self.sync()
        self._thread = threading.Thread(target=self._loop, name=self.name, daemon=True)
        self._thread.start()
        return self

    def _loop(self) -> None:
        while not self._stop.wait(self.every):
            try:
                self.sync()
            except Exception as exc:  # noqa: BLE001 - keep polling; the test reads the errors
                self.errors.append(repr(exc))

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
