"""PID 1 of the split layout: start the front, the decoders and the model process; replace them; stop them in order.

The supervisor owns what must outlive any one process: the HTTP listening socket (a replaced front
listens at once, and no connection waits unseen), the Unix sockets decoders reach the front and the
model process on, the pod's shared state (runtime/processes/pod_state.py) and the metric files' folder. It never
runs threads or CUDA, and starts every process afresh (fork and exec), never forking one that has.

- A process that ends is started again (at once, then after 0.25 s, 0.5 s, ... up to 10 s while it keeps
  ending within 10 s of its start). One that ends with exit code 2 before it ever served (a bad setting,
  a handler that cannot be imported) ends the pod with exit code 2: starting it again would not help.
- A serving process whose heartbeat stops for `HANG_SECONDS` (stopped, or a thread holding the GIL in native code)
  is killed and started again: a decoder (the front answers what it held 502), the model process (the pod is not
  ready until its successor has loaded; the decoders answer what it held 503) or the front.
- A decoder that asks to be replaced (a thread stuck in one step past the service's own timeout) or whose loop is
  stuck gets a successor first, then SIGTERM to finish what it holds. These replacements back off: the next comes no
  sooner than REPLACE_BACKOFF_SECONDS after one, doubling while they keep coming (to REPLACE_BACKOFF_MAX_SECONDS).
- It reaps every process that ends in the pod, its children's children too (it is PID 1, or the subreaper of the
  pod's processes), so no zombie outlives its parent.
- SIGTERM (or SIGINT) goes to the front, which drains (docs/server.md: Shutdown; processes/front.py states its
  bound); once it has exited, the decoders and the model process get SIGTERM, and the supervisor exits 0 when all
  have.
"""

from __future__ import annotations

import ctypes
import logging
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field

from prometheus_client import multiprocess

from podserve.runtime.http.server import listening_socket
from podserve.runtime.processes import layout
from podserve.runtime.processes.pod_state import DECODER, FRONT, MODEL, READY, STARTING, PodState, now_ns
from podserve.settings import ServingSettings
from podserve.stop_bounds import END_SECONDS, front_drain_seconds

log = logging.getLogger("podserve.supervisor")

#: A ready process whose heartbeat (stamped by a thread of its own) is this old is stopped or has a thread holding the
#: GIL in native code: it is killed and replaced.
HANG_SECONDS = 3.0
#: A ready decoder whose event loop has not come round for this long is stuck in a step without the GIL: a successor
#: is started and it is asked to end (its requests were answered 504 by the front at their deadlines meanwhile).
LOOP_STUCK_SECONDS = 10.0
#: A process starting (importing, loading its handler) gets this long before its first heartbeat.
START_GRACE_SECONDS = 120.0
#: How often the supervisor looks at its processes.
TICK_SECONDS = 0.1
#: A process ending within this long of its start counts towards the back-off before the next start.
QUICK_END_SECONDS = 10.0
MAX_BACKOFF_SECONDS = 10.0
#: After a stuck decoder is replaced, the next replacement of a stuck decoder waits at least this long; the wait
#: doubles with each replacement that comes within REPLACE_CALM_SECONDS of the one before, up to the most.
REPLACE_BACKOFF_SECONDS = 1.0
REPLACE_BACKOFF_MAX_SECONDS = 30.0
REPLACE_CALM_SECONDS = 60.0
_PR_SET_CHILD_SUBREAPER = 36
#: Exit code of a process that cannot start because of its configuration (runtime/core/startup.py).
BAD_CONFIGURATION = 2
_MODULES = {FRONT: "front_process", DECODER: "decoder_process", MODEL: "model_process"}
_NAMES = {FRONT: "front", DECODER: "decoder", MODEL: "model process"}


@dataclass
class Child:
    """One process the supervisor started."""

    role: int
    slot: int
    process: subprocess.Popen
    started: float = field(default_factory=time.monotonic)
    served: bool = False  # it reached READY at least once
    retire_by: float | None = None  # asked to finish and end (a replaced decoder): killed if still there by then
    killed: bool = False  # found hung and killed: reaped soon, not killed again

    @property
    def name(self) -> str:
        return f"{_NAMES[self.role]} {self.slot} (pid {self.process.pid})"


class Supervisor:
    def __init__(self, settings: ServingSettings):
        self.settings = settings
        self.decoders = layout.decoder_processes(settings)
        self.state = PodState.create()
        self.state.pod["supervisor_pid"] = os.getpid()
        self.folder = tempfile.mkdtemp(prefix="podserve-")
        self.metrics_dir = os.path.join(self.folder, "metrics")
        os.mkdir(self.metrics_dir)
        # Bound, not listening: a connection before the first front serves is refused (nothing waits unseen); once
        # the front listens, the socket keeps listening while a replaced front starts, so callers wait in its backlog.
        self.http = listening_socket(settings.host, settings.port)
        self.front_listener = self._unix_listener("front.sock")
        self.model_listener = self._unix_listener("model.sock")
        self.children: list[Child] = []
        self.quick_ends: dict[tuple[int, int], int] = {}  # (role, lineage) -> ends in a row soon after start
        self.pending: list[tuple[float, int, int]] = []  # (start at, role, lineage) of processes to start again
        self.stopping: str | None = None  # the signal that began the shutdown
        self.exit_code = 0
        self._signals: list[int] = []
        self.replace_backoff = REPLACE_BACKOFF_SECONDS  # before the next stuck decoder is replaced
        self.last_replaced = -REPLACE_CALM_SECONDS  # monotonic time of the last one

    def _unix_listener(self, name: str) -> socket.socket:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.bind(os.path.join(self.folder, name))
        sock.listen(256)
        return sock

    # Starting processes.

    def _environment(self, slot: int) -> dict[str, str]:
        return {**os.environ, layout.STATE_FD: str(self.state.fd), layout.SLOT: str(slot),
                layout.HTTP_FD: str(self.http.fileno()), layout.FRONT_FD: str(self.front_listener.fileno()),
                layout.FRONT_PATH: os.path.join(self.folder, "front.sock"),
                layout.MODEL_FD: str(self.model_listener.fileno()),
                layout.MODEL_PATH: os.path.join(self.folder, "model.sock"),
                layout.SUPERVISOR_PID: str(os.getpid()), "PROMETHEUS_MULTIPROC_DIR": self.metrics_dir}

    def start(self, role: int) -> Child:
        slot = self.state.claim_slot(role)
        fds = [self.state.fd]
        fds += {FRONT: [self.http.fileno(), self.front_listener.fileno()], MODEL: [self.model_listener.fileno()],
                DECODER: []}[role]
        process = subprocess.Popen([sys.executable, "-m", f"podserve.runtime.processes.{_MODULES[role]}"],
                                   env=self._environment(slot), pass_fds=fds)
        child = Child(role, slot, process)
        self.children.append(child)
        log.info("started %s", child.name)
        return child

    # Watching them.

    def run(self) -> int:
        become_subreaper()
        read_end, write_end = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        signal.set_wakeup_fd(write_end)
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, lambda signum, _frame: self._signals.append(signum))
        signal.signal(signal.SIGCHLD, lambda *_: None)  # wakes the select: a child ended
        self.start(MODEL)
        self.start(FRONT)
        for _ in range(self.decoders):
            self.start(DECODER)
        memory = layout.pod_memory_plan(self.settings)
        log.info("supervising %s: the front, %d decoder process(es) and the model process (docs/processes.md)",
                 self.settings.service_name, self.decoders, extra={"fields": {"memory_plan": memory.describe()}})
        while self.children:
            select.select([read_end], [], [], TICK_SECONDS)
            try:
                while os.read(read_end, 512):
                    pass
            except BlockingIOError:
                pass
            while self._signals:
                self._begin_stopping(self._signals.pop(0))
            self._reap()
            if self.stopping is None:
                self._watch()
                self._start_pending()
            else:
                self._continue_stopping()
        self._clean_up()
        return self.exit_code

    def _reap(self) -> None:
        reap_orphans({child.process.pid for child in self.children})
        for child in list(self.children):
            code = child.process.poll()
            if code is None:
                if not child.served and self.state.slots[child.slot]["state"] == READY:
                    child.served = True
                continue
            self.children.remove(child)
            self.state.release_slot(child.slot)
            multiprocess.mark_process_dead(child.process.pid, self.metrics_dir)
            if child.role == MODEL:
                self.state.model["ready"] = self.state.model["instances"] = 0
                self.state.instances[:] = 0  # its last batch says nothing about its successor
            how = f"exit code {code}" if code >= 0 else f"signal {signal.Signals(-code).name}"
            if self.stopping is not None or child.retire_by is not None:
                log.info("%s ended (%s)", child.name, how)
                continue
            if code == BAD_CONFIGURATION and not child.served:
                log.error("%s cannot start (%s; its error is above): the pod stops", child.name, how)
                self.exit_code = BAD_CONFIGURATION
                self._begin_stopping(signal.SIGTERM, drain=False)
                continue
            log.error("%s ended (%s); starting another", child.name, how)
            self.state.pod[f"{_NAMES[child.role].split()[0]}_restarts"] += 1
            self._schedule(child)

    def _schedule(self, child: Child) -> None:
        lineage = (child.role, child.slot if child.role == DECODER else 0)
        quick = time.monotonic() - child.started < QUICK_END_SECONDS
        ends = self.quick_ends[lineage] = self.quick_ends.get(lineage, 0) + 1 if quick else 0
        delay = 0.0 if ends <= 1 else min(MAX_BACKOFF_SECONDS, 0.25 * 2 ** (ends - 2))
        if delay:
            log.warning("%s ended %d times in a row within %gs of starting: the next starts in %.2fs",
                        _NAMES[child.role], ends, QUICK_END_SECONDS, delay)
        self.pending.append((time.monotonic() + delay, child.role, lineage[1]))

    def _start_pending(self) -> None:
        now = time.monotonic()
        for entry in [entry for entry in self.pending if entry[0] <= now]:
            self.pending.remove(entry)
            child = self.start(entry[1])
            if entry[1] == DECODER and child.slot != entry[2]:  # keep counting quick ends for the lineage
                self.quick_ends[(DECODER, child.slot)] = self.quick_ends.pop((DECODER, entry[2]), 0)

    def _watch(self) -> None:
        now, now_s = now_ns(), time.monotonic()
        for child in list(self.children):
            slot = self.state.slots[child.slot]
            if child.retire_by is not None:
                if now_s > child.retire_by:
                    log.warning("%s did not finish its requests in time: killed", child.name)
                    child.process.kill()
                continue
            silent = (now - int(slot["heartbeat_ns"])) / 1e9
            stuck = (now - int(slot["loop_ns"])) / 1e9
            if child.killed:
                continue
            if slot["state"] == READY and silent > HANG_SECONDS:
                self._hung(child, silent)
            elif child.role != DECODER:
                continue
            elif slot["state"] == STARTING and (now - int(slot["started_ns"])) / 1e9 > START_GRACE_SECONDS:
                log.error("%s did not start within %gs: killed", child.name, START_GRACE_SECONDS)
                child.killed = True
                child.process.kill()
            elif slot["state"] == READY and (slot["replace"] or stuck > LOOP_STUCK_SECONDS) \
                    and now_s >= self.last_replaced + self.replace_backoff:
                why = ("its event loop has been stuck in one step for %.0fs" % stuck if stuck > LOOP_STUCK_SECONDS
                       else "it asked to be: a thread is stuck in one step past the service's timeout")
                self._replace(child, why, now_s)

    def _hung(self, child: Child, silent: float) -> None:
        """A serving process stopped stamping its heartbeat: kill it (its successor starts once it is reaped)."""
        what = {DECODER: "the requests it held are answered 502", FRONT: "its connections are reset",
                MODEL: "the pod is not ready until its successor has loaded; the requests it held are answered 503"}
        log.error("%s has not stamped its heartbeat for %.1fs (stopped, or a thread holding the GIL in native code?): "
                  "killed and replaced; %s", child.name, silent, what[child.role])
        if child.role == MODEL:
            self.state.model["ready"] = 0
        if child.role == DECODER:
            self.state.pod["hung_decoders"] += 1
        child.killed = True
        child.process.kill()

    def _replace(self, child: Child, why: str, now: float) -> None:
        """Start a stuck decoder's successor, then end it (it finishes what it holds), backing off the next one."""
        self.replace_backoff = (min(REPLACE_BACKOFF_MAX_SECONDS, self.replace_backoff * 2)
                                if now - self.last_replaced < REPLACE_CALM_SECONDS else REPLACE_BACKOFF_SECONDS)
        self.last_replaced = now
        log.warning("%s is replaced (%s): starting another, then ending it; the next such replacement waits %gs",
                    child.name, why, self.replace_backoff)
        self.state.slots[child.slot]["replace"] = 1
        self.state.pod["decoder_restarts"] += 1
        self.start(DECODER)
        child.retire_by = now + self.settings.request_timeout_ms / 1000.0 + 5.0
        child.process.terminate()

    # Stopping.

    def _begin_stopping(self, signum: int, drain: bool = True) -> None:
        if self.stopping is not None:
            return
        self.stopping = signal.Signals(signum).name
        self.state.pod["stopping"] = 1
        self.pending.clear()
        front = [child for child in self.children if child.role == FRONT]
        log.info("%s: the front drains, then every other process ends", self.stopping)
        if front and drain:
            front[0].process.send_signal(signum)
        self._front_done_by = time.monotonic() + (front_drain_seconds(self.settings) if drain else 0)
        self._others_told = False

    def _continue_stopping(self) -> None:
        fronts = [child for child in self.children if child.role == FRONT]
        if fronts and time.monotonic() < self._front_done_by:
            return
        if not self._others_told:
            self._others_told = True
            self._kill_by = time.monotonic() + END_SECONDS
            for child in self.children:
                child.process.terminate()
        elif time.monotonic() > self._kill_by:
            for child in self.children:
                log.warning("%s did not end within %gs of SIGTERM: killed", child.name, END_SECONDS)
                child.process.kill()
            self._kill_by = float("inf")

    def _clean_up(self) -> None:
        for sock in (self.http, self.front_listener, self.model_listener):
            sock.close()
        shutil.rmtree(self.folder, ignore_errors=True)
        log.info("exited cleanly" if self.exit_code == 0 else f"exited with code {self.exit_code}")


def become_subreaper() -> None:
    """Have every orphan of the pod's processes reparented here, not to whatever runs above us (as PID 1 they are
    anyway): `reap_orphans` then reaps them."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_CHILD_SUBREAPER, 1)
    except (OSError, AttributeError):
        log.warning("could not become the subreaper of the pod's processes (prctl)")


def reap_orphans(known: set[int]) -> int:
    """Reap every ended child that is not one of `known` (the processes this supervisor waits on itself: their exit
    codes are theirs to read): a team's subprocess orphaned by a decoder or the model process that ended. Returns
    how many it reaped."""
    reaped = 0
    while True:
        try:
            ended = os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except ChildProcessError:
            return reaped
        if ended is None or ended.si_pid in known:
            return reaped
        os.waitpid(ended.si_pid, 0)
        reaped += 1


def supervise(settings: ServingSettings) -> int:
    """Run the split layout in the foreground until SIGTERM; return the exit code."""
    return Supervisor(settings).run()
