"""The server's life after start: ready, draining, closing; and the graceful shutdown on SIGTERM.

Shutdown order, so that no accepted request is lost:
1. draining: `/api/ping` answers 503 at once, requests are still accepted for
   `drain_seconds` (the mesh needs that long to stop routing here);
2. closing: the listening socket is closed, so new connections are refused;
3. queued and in-flight requests finish and their responses are flushed; each keep-alive
   connection is closed once it has nothing left to answer;
4. the event loop ends and the process exits 0.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import threading
import time

from podserve.stop_bounds import CLOSE_SECONDS

log = logging.getLogger(__name__)



def join_by(threads, until: float | None) -> None:
    """Join each of `threads`, all of them by the monotonic time `until` (None: each as long as it takes): a shutdown
    whose stuck threads wait out one bound, not one each."""
    for thread in threads:
        thread.join(None if until is None else max(0.0, until - time.monotonic()))


class Lifecycle:
    """Shared flags the HTTP views read, and the count of requests in flight."""

    def __init__(self) -> None:
        self.draining = False
        self._in_flight = 0
        self.body_bytes = 0  # bytes of the admitted requests' bodies, held until they are answered
        self._lock = threading.Lock()

    @property
    def in_flight(self) -> int:
        return self._in_flight

    def request_started(self, places: int = 1) -> None:
        with self._lock:
            self._in_flight += places

    def request_finished(self, places: int = 1) -> None:
        with self._lock:
            self._in_flight -= places

    def try_hold_bytes(self, size: int, room: int) -> bool:
        """Count `size` more bytes of bodies held if that keeps them within `room`; say whether it did."""
        with self._lock:
            if self.body_bytes + size > room:
                return False
            self.body_bytes += size
            return True

    def release_bytes(self, size: int) -> None:
        with self._lock:
            self.body_bytes -= size

    def try_start(self, places: int, limit: int) -> bool:
        """Take `places` more if that keeps the count within `limit`; say whether it did."""
        with self._lock:
            if self._in_flight + places > limit:
                return False
            self._in_flight += places
            return True


class GracefulShutdown:
    """Drive the HTTP server through drain, close and exit when a signal arrives (all in the event loop)."""

    def __init__(self, server, lifecycle: Lifecycle, drain_seconds: float, finish_timeout: float):
        self.server = server
        self.lifecycle = lifecycle
        self.drain_seconds = drain_seconds
        self.finish_timeout = finish_timeout
        self._started = False
        self._task: asyncio.Task | None = None

    def install(self, loop: asyncio.AbstractEventLoop) -> None:
        """Handle SIGTERM with the full drain window, SIGINT (Ctrl-C locally) without it."""
        loop.add_signal_handler(signal.SIGTERM, self.begin, self.drain_seconds, "SIGTERM")
        loop.add_signal_handler(signal.SIGINT, self.begin, 0.0, "SIGINT")

    def begin(self, drain_seconds: float, reason: str) -> None:
        if self._started:
            return
        self._started = True
        self.lifecycle.draining = True
        log.info("%s: draining for %.1fs, then closing", reason, drain_seconds)
        self._task = asyncio.get_running_loop().create_task(self._run(drain_seconds))

    async def _run(self, drain_seconds: float) -> None:
        await asyncio.sleep(drain_seconds)
        self.server.stop_listening()
        give_up = time.monotonic() + self.finish_timeout
        while self.lifecycle.in_flight and time.monotonic() < give_up:  # the backstop answers each by its grace
            await asyncio.sleep(0.02)
        if self.lifecycle.in_flight:
            log.warning("closing with %d request(s) still in flight after %.0fs", self.lifecycle.in_flight,
                        self.finish_timeout)
        while self.server.connections and time.monotonic() < give_up + CLOSE_SECONDS:
            for connection in list(self.server.connections):
                connection.close_if_idle()
            await asyncio.sleep(0.02)
        if not self.server.connections:
            log.info("closed: every accepted request was answered")
        self.server.stop()
