"""What the split layout's front exports beside every process's metric files: live gauges and per-process series.

Counters and histograms live in each process's metric files (prometheus_client's multiprocess mode,
summed over every process the pod ever ran, so a replaced process's counts stay). Gauges a process
reads from itself as it runs (requests in flight, queues, backlogs, refusal pacing) are exported
here instead, from the front's own state and the pod's shared state, under the same names and
labels as in one process; so are the pod's processes, one series each under names of their own
(`podserve_process_*`, docs/processes.md).
"""

from __future__ import annotations

import glob
import os

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.multiprocess import MultiProcessCollector

from podserve import metric_names as names
from podserve.runtime.core.metrics import LIVE_GAUGES
from podserve.runtime.processes.pod_state import DECODER, FREE, ROLE_NAMES, PodState, now_ns

#: A process whose heartbeat is older than this is not up.
UP_WITHIN_NS = 2_000_000_000
_HELP = {name: help_text for name, help_text, _labels in LIVE_GAUGES}
_TICKS = os.sysconf("SC_CLK_TCK")
_PAGE = os.sysconf("SC_PAGE_SIZE")


class ProcessFiles(MultiProcessCollector):
    """Every process's metric files, summed (prometheus_client's multiprocess collector), but for a file its process
    has only just created.

    A process creates its file empty, then sizes it: the stock collector, reading in between, fails the whole page
    (struct.error: /metrics answered 500 while a crashed decoder's replacement started, under load). An empty file
    holds nothing yet, so leaving it out loses no sample; one gone since the listing (a dead process's live gauges)
    likewise."""

    def collect(self):
        files = []
        for path in glob.glob(os.path.join(self._path, "*.db")):
            try:
                if os.path.getsize(path):
                    files.append(path)
            except FileNotFoundError:
                continue
        return self.merge(files, accumulate=True)


class PodMetrics:
    """A collector for the front's registry (runtime/processes/front_process.py)."""

    def __init__(self, settings, state: PodState, lifecycle, admission, limit: int):
        self.service, self.state, self.lifecycle, self.limit = settings.service_name, state, lifecycle, limit
        self.admission = admission

    def collect(self):
        service, state = self.service, self.state
        decoders = state.slots_of(DECODER)
        for name, value in ((names.IN_FLIGHT, self.lifecycle.in_flight),
                            (names.HTTP_BACKLOG, sum(int(state.slots[i]["backlog"]) for i in decoders)),
                            (names.LOOP_RELIEF, 0.0),  # decoders own a core each: their loops are never relieved
                            (names.ADMISSION_LIMIT, self.limit),
                            (names.REFUSALS_HELD, self.admission.refusals_held),
                            (names.REFUSAL_RATE, self.admission.refusal_rate)):
            gauge = GaugeMetricFamily(name, _HELP[name], labels=["service"])
            gauge.add_metric([service], value)
            yield gauge
        depth = GaugeMetricFamily(names.QUEUE_DEPTH, _HELP[names.QUEUE_DEPTH], labels=list(names.STAGE_LABELS))
        for index, instance in enumerate(state.info().get("instances", []) if state.model["ready"] else []):
            depth.add_metric([service, instance], int(state.instances[index]["queue_depth"]))
        yield depth
        yield from self._processes()

    def _processes(self):
        state, service, now = self.state, self.service, now_ns()
        labels = list(names.PROCESS_LABELS)
        up = GaugeMetricFamily(names.PROCESS_UP, "1 while the process runs and keeps its heartbeat.", labels=labels)
        cpu = CounterMetricFamily(names.PROCESS_CPU_SECONDS, "CPU seconds the process used (user and system).",
                                  labels=labels)
        memory = GaugeMetricFamily(names.PROCESS_RESIDENT_BYTES, "The process's resident memory, in bytes.",
                                   labels=labels)
        held = GaugeMetricFamily(names.PROCESS_REQUESTS_HELD, "Requests a decoder process holds now.", labels=labels)
        for index in range(len(state.slots)):
            slot = state.slots[index]
            role = int(slot["role"])
            if role == FREE or not slot["pid"]:
                continue
            role_name = ROLE_NAMES[role]
            values = [service, f"{role_name}-{index}", role_name]
            up.add_metric(values, 1.0 if now - int(slot["heartbeat_ns"]) < UP_WITHIN_NS else 0.0)
            seconds, rss = _usage(int(slot["pid"]))
            if seconds is not None:
                cpu.add_metric(values, seconds)
                memory.add_metric(values, rss)
            if role == DECODER:
                held.add_metric(values, int(slot["held"]))
        restarts = CounterMetricFamily(names.PROCESS_RESTARTS, "Processes started again after one ended (hung "
                                       "decoders replaced included).", labels=["service", "role"])
        for role in ("front", "decoder", "model"):
            restarts.add_metric([service, role], int(state.pod[f"{role}_restarts"]))
        yield from (up, cpu, memory, held, restarts)


def _usage(pid: int) -> tuple[float | None, float]:
    """(CPU seconds, resident bytes) of `pid` from /proc; (None, 0) when it has ended."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            fields = stat.read().rsplit(b")", 1)[1].split()
        with open(f"/proc/{pid}/statm", "rb") as statm:
            resident = int(statm.read().split()[1])
    except (OSError, IndexError, ValueError):
        return None, 0.0
    return (int(fields[11]) + int(fields[12])) / _TICKS, float(resident * _PAGE)
