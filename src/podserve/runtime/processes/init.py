"""An init for the one-process layout when it is a container's PID 1: reap every process that ends, forward signals.

A container's PID 1 inherits every orphan in it (a handler's subprocess whose parent ended, a daemon a library
spawned); a process that never waits for them leaves zombies that fill the pid table. The split layout's supervisor
reaps them itself (processes/supervisor.py). One process forks first instead: the child serves, and this process,
as tini would, forwards the signals Kubernetes sends, reaps every process that ends, and exits as the server did.
"""

from __future__ import annotations

import os
import signal
from typing import Callable

#: What a container's runtime and Kubernetes send PID 1, passed on to the server.
FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2)


def serve_under_init(serve: Callable[[], int]) -> int:
    """Run `serve` in a child process; here, reap and forward until it ends, and return its exit code (128 + the
    signal's number when a signal ended it, as a shell says)."""
    server = os.fork()
    if server == 0:
        return serve()
    for signum in FORWARDED:
        signal.signal(signum, lambda received, _frame: os.kill(server, received))
    while True:
        try:
            ended, status = os.wait()  # any child: the server, or an orphan reparented here
        except ChildProcessError:
            return 0
        if ended == server:
            code = os.waitstatus_to_exitcode(status)
            return code if code >= 0 else 128 - code
