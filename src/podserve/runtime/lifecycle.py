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

import logging
import signal
import threading
import time
from typing import Callable

log = logging.getLogger(__name__)


class Lifecycle:
    """Shared flags the HTTP views read, and the count of requests in flight."""

    def __init__(self) -> None:
        self.draining = False
        self._in_flight = 0
        self._lock = threading.Lock()

    @property
    def in_flight(self) -> int:
        return self._in_flight

    def request_started(self) -> None:
        with self._lock:
            self._in_flight += 1

    def request_finished(self) -> None:
        with self._lock:
            self._in_flight -= 1


class GracefulShutdown:
    """Drive a waitress server through drain, close and exit when a signal arrives."""

    def __init__(self, server, lifecycle: Lifecycle, is_idle: Callable[[], bool], drain_seconds: float,
                 finish_timeout: float):
        self.server = server
        self.lifecycle = lifecycle
        self.is_idle = is_idle
        self.drain_seconds = drain_seconds
        self.finish_timeout = finish_timeout
        self._started = threading.Event()

    def install(self) -> None:
        """Handle SIGTERM with the full drain window, SIGINT (Ctrl-C locally) without it."""
        signal.signal(signal.SIGTERM, lambda *_: self.begin(self.drain_seconds, "SIGTERM"))
        signal.signal(signal.SIGINT, lambda *_: self.begin(0.0, "SIGINT"))

    def begin(self, drain_seconds: float, reason: str) -> None:
        if self._started.is_set():
            return
        self._started.set()
        self.lifecycle.draining = True
        log.info("%s: draining for %.1fs, then closing", reason, drain_seconds)
        threading.Thread(target=self._run, args=(drain_seconds,), name="shutdown", daemon=True).start()

    def _run(self, drain_seconds: float) -> None:
        time.sleep(drain_seconds)
        self._in_loop(self._stop_listening)
        give_up = time.monotonic() + self.finish_timeout
        while (self.lifecycle.in_flight or not self.is_idle()) and time.monotonic() < give_up:
            time.sleep(0.02)
        if self.lifecycle.in_flight:
            log.warning("closing with %d request(s) still in flight after %.0fs", self.lifecycle.in_flight,
                        self.finish_timeout)
        while self.server._map and time.monotonic() < give_up + 5:
            self._in_loop(self._close_idle_channels)
            time.sleep(0.02)

    def _in_loop(self, thunk: Callable[[], None]) -> None:
        """Run `thunk` in the event loop's thread, where waitress's sockets may be touched."""
        done = threading.Event()

        def run() -> None:
            try:
                thunk()
            finally:
                done.set()
        try:
            self.server.trigger.pull_trigger(run)
        except OSError:  # the trigger is closed: the loop is ending
            return
        done.wait(2.0)

    def _stop_listening(self) -> None:
        self.server.accepting = False
        self.server.del_channel()
        self.server.socket.close()

    def _close_idle_channels(self) -> None:
        busy = False
        for channel in list(self.server._map.values()):
            if channel is self.server.trigger:
                continue
            idle = not channel.requests and channel.request is None and not channel.total_outbufs_len
            if idle:
                channel.handle_close()
            else:
                busy = True
        if not busy:
            log.info("closed: every accepted request was answered")
            self.server.trigger.close()  # the map is now empty: waitress's loop returns
