"""What every process the supervisor spawns does first: die with it, find its slot, and keep its heartbeat."""

from __future__ import annotations

import asyncio
import ctypes
import logging
import os
import signal
import sys
import threading
import time

from podserve.runtime.processes import layout
from podserve.runtime.processes.pod_state import READY, PodState, now_ns

log = logging.getLogger(__name__)

#: How often a process stamps its heartbeat (from a thread of its own) and its loop's stamp.
HEARTBEAT_SECONDS = 0.1
_PR_SET_PDEATHSIG = 1


def start_child() -> tuple:
    """What each process the supervisor spawns does first: end with it, log as the pod logs, leave SIGINT to it,
    and read its settings and handler. Returns (settings, handler class), or raises SystemExit(2) naming what
    stops it (the supervisor then stops the pod with exit code 2)."""
    from podserve.runtime.core.logs import configure_logging
    from podserve.runtime.core.startup import StartupError, prepare_service

    die_with_parent()
    configure_logging()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the supervisor decides when the pod stops
    try:
        return prepare_service()
    except StartupError as exc:
        print(f"Error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


def die_with_parent() -> None:
    """Be killed when the supervisor ends, however it ends (SIGKILL included): no process of a pod outlives it."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):
        log.warning("could not ask to end with the supervisor (prctl)")
    if os.getppid() != int(os.environ.get(layout.SUPERVISOR_PID, os.getppid())):
        os._exit(1)  # it ended before the request took effect


class Slot:
    """This process's place in the pod's shared state."""

    def __init__(self) -> None:
        self.state = PodState(int(os.environ[layout.STATE_FD]))
        self.index = int(os.environ[layout.SLOT])
        self.fields = self.state.slots[self.index]
        self.fields["pid"] = os.getpid()
        self.beat()

    def beat(self) -> None:
        self.fields["heartbeat_ns"] = self.fields["loop_ns"] = now_ns()

    def ready(self) -> None:
        self.fields["state"] = READY
        self.beat()

    def keep_beating(self, loop, publish=lambda fields: None) -> None:
        """Stamp the heartbeat every HEARTBEAT_SECONDS from a thread of its own, and the loop's stamp from `loop`
        with `publish(fields)` of what the process holds. The heartbeat stops only while a thread holds the GIL
        (stuck in native code that never lets go: the supervisor kills the process); the loop's stamp also while the
        loop is stuck in a step without the GIL (the front sends it nothing new; the supervisor replaces it)."""
        fields = self.fields

        def heartbeat() -> None:
            while True:
                fields["heartbeat_ns"] = now_ns()
                time.sleep(HEARTBEAT_SECONDS)

        def loop_beat() -> None:
            fields["loop_ns"] = now_ns()
            publish(fields)
            loop.call_later(HEARTBEAT_SECONDS, loop_beat)
        threading.Thread(target=heartbeat, name="heartbeat", daemon=True).start()
        loop_beat()


def in_thread(loop: asyncio.AbstractEventLoop, function, *arguments) -> asyncio.Future:
    """Run a blocking `function` on a daemon thread of its own; its result as a future of `loop`. Unlike the loop's
    executor, nothing waits for the thread when the loop closes: a handshake blocked on a peer that has gone never
    holds up a process's exit."""
    future = loop.create_future()

    def run() -> None:
        try:
            result, error = function(*arguments), None
        except BaseException as exc:  # handed to the awaiting coroutine
            result, error = None, exc

        def settle() -> None:
            if future.done():
                return
            if error is not None:
                future.set_exception(error)
            else:
                future.set_result(result)
        try:
            loop.call_soon_threadsafe(settle)
        except RuntimeError:  # the loop has closed: nobody waits
            pass

    threading.Thread(target=run, name=f"blocking-{getattr(function, '__name__', 'call')}", daemon=True).start()
    return future


def hand_to_loop(loop: asyncio.AbstractEventLoop, coroutine) -> bool:
    """Schedule `coroutine` on `loop` from another thread; False (and the coroutine closed) when the loop has closed."""
    try:
        asyncio.run_coroutine_threadsafe(coroutine, loop)
        return True
    except RuntimeError:
        coroutine.close()
        return False
