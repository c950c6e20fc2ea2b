"""The server's Prometheus collectors, built from the names in `podserve.metric_names`."""

from __future__ import annotations

import threading
from bisect import bisect_left
from collections import deque
from collections.abc import Sequence
from typing import Any

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram

from podserve import metric_names as names
from podserve.metric_names import BATCH_BUCKETS, LATENCY_BUCKETS
from podserve.runtime.core import logs
from podserve.settings import ServingSettings

GIB = 1024 ** 3

#: Gauges whose value a process reads from itself as it runs (set_function), with their help and labels: in the split
#: layout the front process exports them from the pod's shared state (runtime/processes/pod_metrics.py).
LIVE_GAUGES = (
    (names.QUEUE_DEPTH, "Requests waiting in an instance's queue.", names.STAGE_LABELS),
    (names.IN_FLIGHT, "Requests accepted and not yet answered.", ("service",)),
    (names.HTTP_BACKLOG, "Requests and answers waiting for a request thread.", ("service",)),
    (names.LOOP_RELIEF, "1 while requests queue past what the instances take in one run and a core of the pod "
                        "idles, so the event loop hands even cheap decode and encode steps to the request threads "
                        "(runtime/batching/inline_policy.py).", ("service",)),
    (names.ADMISSION_LIMIT, "Requests the pod holds before it refuses more (503 at the door): queue_size per "
                            "instance.", ("service",)),
    (names.REFUSALS_HELD, "503s decided at the door and held back because callers retried faster than the door "
                          "sends refusals (runtime/http/refusals.py).", ("service",)),
    (names.REFUSAL_RATE, "Refusals (503 at the door) per second sent at once before the rest are held: a share of a "
                         "core over the event loop's measured CPU per refusal, so lower on a slower host "
                         "(runtime/http/refusals.py).", ("service",)),
)


class _Unexported:
    """Stands for a live gauge in a process of the split layout: the front process exports those from the pod's
    shared state (runtime/processes/pod_metrics.py), so the others must not write them to the shared metric files."""

    def labels(self, *_labels) -> "_Unexported":
        return self

    def set(self, _value: float) -> None:
        pass

    def set_function(self, _function) -> None:
        pass


#: Gauges the split layout aggregates: set once by the one process that knows them (the model process), read from
#: the live processes only, so a restarted process's stale value never shows.
_SET_ONCE = "livemax"


class Metrics:
    """Every collector the server updates, with the service label already bound.

    `live_gauges`: False in the split layout's processes, whose gauges read from the process itself (in flight,
    backlog, queue depth, refusal pacing) the front process exports from the pod's shared state instead."""

    def __init__(self, service: str, registry: CollectorRegistry = REGISTRY, live_gauges: bool = True):
        self.service = service
        self._turn_loop = self._turn_thread = None  # defer_per_turn's loop and its thread
        self._deferred: deque[tuple] = deque()  # observations made in that thread, not applied yet
        self._flush_scheduled = False
        self._by_route_status: dict[tuple[str, int, str], tuple] = {}  # (requests, request_seconds) children
        self.requests = Counter(names.REQUESTS_TOTAL, "Requests answered, by route, HTTP status and origin (live, or "
                                "mirror: a copy the mesh sent, whose answer no caller sees).",
                                names.REQUEST_LABELS, registry=registry)
        self.request_seconds = Histogram(names.REQUEST_SECONDS, "Seconds from request read to response, in process.",
                                         names.REQUEST_LABELS, buckets=LATENCY_BUCKETS, registry=registry)
        self.queue_wait = Histogram(names.QUEUE_WAIT_SECONDS, "Seconds a request waited in its instance's queue.",
                                    names.STAGE_LABELS, buckets=LATENCY_BUCKETS, registry=registry)
        self.inference = Histogram(names.INFERENCE_SECONDS, "Seconds one predict call took.",
                                   names.STAGE_LABELS, buckets=LATENCY_BUCKETS, registry=registry)
        self.batch_size = Histogram(names.BATCH_SIZE, "Inputs per predict call.",
                                    names.STAGE_LABELS, buckets=BATCH_BUCKETS, registry=registry)
        self.verb_cpu = Counter(names.VERB_CPU_SECONDS, "CPU seconds the threads calling the handler's verbs spent in "
                                "them, by verb (predict: the batch thread's, with onnxruntime's CPU work).",
                                names.VERB_LABELS, registry=registry)
        self._verb_cpu: dict[str, Any] = {}
        self.padded_rows = Counter(names.PADDED_ROWS, "Rows the model ran that were padding, not inputs (on a GPU "
                                   "every run is padded to one size), beside the inputs podserve_batch_size sums.",
                                   names.STAGE_LABELS, registry=registry)
        self.batch_fill_wait = Counter(names.BATCH_FILL_WAIT_SECONDS, "Seconds requests waited in the queue while a "
                                       "free batch lane held its batch open for more, summed over requests.",
                                       names.STAGE_LABELS, registry=registry)
        live = {name: (help_text, labels) for name, help_text, labels in LIVE_GAUGES}
        for attribute, name in (("queue_depth", names.QUEUE_DEPTH), ("in_flight", names.IN_FLIGHT),
                                ("http_backlog", names.HTTP_BACKLOG), ("loop_relief", names.LOOP_RELIEF),
                                ("admission_limit", names.ADMISSION_LIMIT), ("refusals_held", names.REFUSALS_HELD),
                                ("refusal_rate", names.REFUSAL_RATE)):
            help_text, labels = live[name]
            gauge = Gauge(name, help_text, labels, registry=registry) if live_gauges else _Unexported()
            setattr(self, attribute, gauge.labels(service) if labels == ("service",) else gauge)
        self.instance_ready = Gauge(names.INSTANCE_READY, "1 when the instance is loaded and warmed up.",
                                    names.STAGE_LABELS, registry=registry, multiprocess_mode=_SET_ONCE)
        self.model_load = Gauge(names.MODEL_LOAD_SECONDS, "Seconds the instance took to load its model.",
                                names.STAGE_LABELS, registry=registry, multiprocess_mode=_SET_ONCE)
        self.warmup = Gauge(names.WARMUP_SECONDS, "Seconds the instance's warm-up batches took.",
                            names.STAGE_LABELS, registry=registry, multiprocess_mode=_SET_ONCE)
        self.runtime_faults = Counter(names.RUNTIME_FAULTS, "Faults of the server's own it logged (a bug of the "
                                      "platform's, not the handler's or the caller's; the log line carries \"fault\": "
                                      "\"runtime\" and its traceback).", ("service",),
                                      registry=registry).labels(service)
        self.write_timeouts = Counter(names.WRITE_TIMEOUTS, "Connections dropped because the caller read none of "
                                      "its answers within the write timeout (nothing could be answered).",
                                      ("service",), registry=registry).labels(service)
        over_limit = Counter(names.OVER_LIMIT_CONNECTIONS, "Connections opened beyond max_connections, by outcome: "
                             "probe (a probe answered from the pod's state), refused (the 503 after its request "
                             "line), evicted (the 503 at once, unread: the lane for them was full).",
                             names.OVER_LIMIT_LABELS, registry=registry)
        self._over_limit = {outcome: over_limit.labels(service, outcome) for outcome in names.OVER_LIMIT_OUTCOMES}
        lingering_closes = Counter(names.LINGERING_CLOSES, "Connections closed after a refusal, read and discarded "
                                   "until the caller closed (caller), or cut at the time or byte bound (time, bytes: "
                                   "a caller still sending then saw a reset).", names.LINGER_LABELS,
                                   registry=registry)
        self._linger_ends = {ending: lingering_closes.labels(service, ending) for ending in names.LINGER_ENDINGS}
        self.max_batch_size = Gauge(names.MAX_BATCH_SIZE, "Most inputs one predict call receives (max_batch_size).",
                                    ("service",), registry=registry, multiprocess_mode=_SET_ONCE).labels(service)
        self.batch_limit = Gauge(names.BATCH_LIMIT, "Most inputs the batcher gives one predict call on this "
                                 "instance: max_batch_size, or on the CPU the runs that fit in max_batch_delay_ms.",
                                 names.STAGE_LABELS, registry=registry, multiprocess_mode=_SET_ONCE)
        self.request_timeout = Gauge(names.REQUEST_TIMEOUT_SECONDS, "Default deadline of a request, in seconds.",
                                     ("service",), registry=registry, multiprocess_mode=_SET_ONCE).labels(service)
        self.startup_budget = Gauge(names.STARTUP_BUDGET_SECONDS, "Seconds load and warm-up may take before "
                                    "Kubernetes restarts the pod (init_delay_second).", ("service",),
                                    registry=registry, multiprocess_mode=_SET_ONCE).labels(service)
        self.queue_capacity = Gauge(names.QUEUE_CAPACITY, "Requests an instance's queue holds before 503 (queue_size).",
                                    names.STAGE_LABELS, registry=registry, multiprocess_mode=_SET_ONCE)
        self.gpu_memory_limit = Gauge(names.GPU_MEMORY_LIMIT_BYTES, "GPU memory the instance's session may use, "
                                      "in bytes (gpu_memory; 0: no limit or on the CPU).", names.STAGE_LABELS,
                                      registry=registry, multiprocess_mode=_SET_ONCE)
        self.slo_objective = Gauge(names.SLO_OBJECTIVE, "The service's own SLO objective by slo (availability, "
                                   "latency); 0: the platform's (conf/observability.yaml).", ("service", "slo"),
                                   registry=registry, multiprocess_mode=_SET_ONCE)

    def set_limits(self, settings: ServingSettings, instances: Sequence[str]) -> None:
        """Export the configured limits once at start-up, so dashboards and alerts compare against them."""
        self.max_batch_size.set(settings.max_batch_size)
        self.request_timeout.set(settings.request_timeout_ms / 1000.0)
        self.startup_budget.set(settings.init_delay_second)
        self.slo_objective.labels(self.service, "availability").set(settings.slo_availability)
        self.slo_objective.labels(self.service, "latency").set(settings.slo_latency_target)
        gpu_bytes = settings.gpu_memory * GIB if settings.gpu_num > 0 else 0
        for instance in instances:
            self.queue_capacity.labels(self.service, instance).set(settings.queue_size)
            self.padded_rows.labels(self.service, instance)  # exported at 0 from the start: CPU pods pad nothing
            self.gpu_memory_limit.labels(self.service, instance).set(gpu_bytes)

    def create_series(self, route: str, instances: Sequence[str]) -> None:
        """Create at 0 every labelled series the dashboards and alert rules read, before what it counts happens:
        a query over a series that does not exist yet has no data (an empty panel, a rule that never evaluates)."""
        for status in names.STARTING_STATUSES:
            for origin in names.ORIGINS:
                self._route_status(route, int(status), origin)
        for instance in instances:
            labels = (self.service, instance)
            for collector in (self.queue_wait, self.inference, self.batch_size, self.batch_fill_wait,
                              self.queue_depth, self.instance_ready, self.model_load, self.warmup, self.batch_limit):
                collector.labels(*labels)

    def observe_over_limit(self, outcome: str) -> None:
        """A connection beyond max_connections ended with `outcome`; the 503s are counted as route "other" too."""
        self._over_limit[outcome].inc()
        if outcome != names.OVER_LIMIT_PROBE:
            self.observe_request(names.OTHER_ROUTE, 503, 0.0)

    def observe_linger_end(self, ending: str) -> None:
        self._linger_ends[ending].inc()

    def defer_per_turn(self, loop) -> None:
        """From now on, apply the per-request observations (`observe_request`, `observe_verb_cpu`) made in `loop`'s
        thread, the caller's, once at the end of the loop's turn that made them, and before /metrics is collected
        (`flush`); those made in any other thread still apply at once.

        In the split layout every increment writes the process's metric file (prometheus_client's multiprocess
        mode): one at a time, the front's and the decoders' per-request ones cost the stand-in's split pod 2-6% of
        its requests a second (bench/optimisations.json). A turn's observations are applied before anything it
        queued to write (an answer, a link's frame) leaves, so a caller who has its answer reads it counted; a
        process killed mid-turn loses that turn's."""
        self._turn_loop, self._turn_thread = loop, threading.get_ident()

    def flush(self) -> None:
        """Apply the observations deferred so far (from any thread): their counters once per series, each
        histogram's sum and each bucket that got some once."""
        self._flush_scheduled = False
        requests: dict[tuple[str, int, str], list[float]] = {}
        verbs: dict[str, float] = {}
        deferred = self._deferred
        while deferred:
            try:
                item = deferred.popleft()
            except IndexError:  # another thread's flush took the last one
                break
            if len(item) == 4:
                requests.setdefault(item[:3], []).append(item[3])
            else:
                verbs[item[0]] = verbs.get(item[0], 0.0) + item[1]
        for (route, status, origin), latencies in requests.items():
            counter, histogram = self._route_status(route, status, origin)
            counter.inc(len(latencies))
            observe_all(histogram, latencies)
        for verb, seconds in verbs.items():
            self._verb_child(verb).inc(seconds)

    def _defer(self, item: tuple) -> None:
        self._deferred.append(item)
        if not self._flush_scheduled:
            try:
                self._turn_loop.call_soon(self.flush)
                self._flush_scheduled = True
            except RuntimeError:  # the loop has closed (the process is stopping): apply it now
                self.flush()

    def observe_request(self, route: str, status: int, seconds: float, origin: str = names.ORIGIN_LIVE) -> None:
        """Count one answered request of `route` and its latency; `origin`: names.origin_of its Host."""
        if self._turn_thread == threading.get_ident():
            self._defer((route, status, origin, seconds))
            return
        children = self._route_status(route, status, origin)
        children[0].inc()
        children[1].observe(seconds)

    def _route_status(self, route: str, status: int, origin: str) -> tuple:
        """The request counter and histogram of one route, status and origin (labels() looked up once: it costs more
        than the observation)."""
        children = self._by_route_status.get((route, status, origin))
        if children is None:
            labels = (self.service, route, str(status), origin)
            children = self._by_route_status[(route, status, origin)] = (self.requests.labels(*labels),
                                                                         self.request_seconds.labels(*labels))
        return children

    def count_runtime_faults(self) -> None:
        """Count every record this process logs with RUNTIME_FAULT (runtime/core/logs.py) from now on."""
        logs.on_runtime_fault = self.runtime_faults.inc

    def observe_verb_cpu(self, verb: str, seconds: float) -> None:
        if self._turn_thread == threading.get_ident():
            self._defer((verb, seconds))
            return
        self._verb_child(verb).inc(seconds)

    def _verb_child(self, verb: str):
        child = self._verb_cpu.get(verb)
        if child is None:
            child = self._verb_cpu[verb] = self.verb_cpu.labels(self.service, verb)
        return child

    def observe_batch(self, instance: str, size: int, seconds: float, queue_waits: list[float],
                      fill_wait: float = 0.0, rows: int | None = None) -> None:
        """One predict call: its size and time, each input's queue wait, the request-seconds its lane held the
        batch open for more (`fill_wait`), and the rows it ran, padding included (`rows`; None: its size)."""
        self.batch_size.labels(self.service, instance).observe(size)
        if rows is not None and rows > size:
            self.padded_rows.labels(self.service, instance).inc(rows - size)
        if fill_wait:
            self.batch_fill_wait.labels(self.service, instance).inc(fill_wait)
        self.inference.labels(self.service, instance).observe(seconds)
        wait = self.queue_wait.labels(self.service, instance)
        for seconds_waited in queue_waits:
            wait.observe(seconds_waited)


def observe_all(histogram, values: Sequence[float]) -> None:
    """What `histogram.observe(value)` for each of `values` does (a labelled child of a prometheus_client Histogram),
    writing its sum once and each bucket that got some once. It reads the child's bounds and values (prometheus_client
    0.26's; tests/runtime/test_metrics_per_turn.py holds the two the same)."""
    bounds = histogram._upper_bounds
    counts = [0] * len(bounds)
    for value in values:
        counts[bisect_left(bounds, value)] += 1  # the first bucket whose bound is >= value, as observe picks
    histogram._sum.inc(sum(values))
    for bucket, count in zip(histogram._buckets, counts):
        if count:
            bucket.inc(count)
