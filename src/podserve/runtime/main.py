"""Start the pod's server: read the settings, then serve in one process, or supervise the split layout.

`python -m podserve.runtime` is the pod's entry point (PID 1). With `decode_processes` 0 (a CPU pod
by default) one process reads, decodes, batches and answers (processes/one_process.py), under an init of its own
when it is a container's PID 1 (processes/init.py); otherwise it becomes the supervisor of the split layout
(processes/supervisor.py, docs/processes.md), which reaps every process of the pod itself.
"""

from __future__ import annotations

import logging
import os
import sys

from podserve.runtime.core.logs import configure_logging
from podserve.runtime.core.startup import StartupError, prepare_service
from podserve.runtime.processes.init import serve_under_init
from podserve.runtime.processes.layout import decoder_processes, pod_least_memory, pod_memory_plan
from podserve.settings import ServingSettings, SettingsError

log = logging.getLogger("podserve.runtime")


def main() -> int:
    """Run the pod's server in the foreground; return the process exit code."""
    configure_logging()
    try:
        settings = ServingSettings.from_env()
    except SettingsError as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return 2
    memory = pod_memory_plan(settings)
    if memory.takes_no_body:  # it would say it is ready and refuse every request
        print("Error: the pod's memory plan does not hold (render refuses such a value.py; docs/processes.md, "
              f"\"Memory\"): {'; '.join(memory.problems())} ({pod_least_memory(settings)})", file=sys.stderr)
        return 2
    for problem in memory.problems():  # the pod serves, but not its largest bodies
        log.warning("the pod's memory plan does not hold (render refuses such a value.py): %s", problem)
    if decoder_processes(settings) > 0:
        from podserve.runtime.processes.supervisor import supervise
        return supervise(settings)
    return serve_under_init(serve_one_process) if os.getpid() == 1 else serve_one_process()


def serve_one_process() -> int:
    """The one-process layout (its modules imported here: an init forks before they are)."""
    from podserve.runtime.processes.one_process import serve_in_one_process
    try:
        settings, handler_class = prepare_service()
    except StartupError as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return 2
    return serve_in_one_process(settings, handler_class)
