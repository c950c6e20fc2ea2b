"""The model instances of this process: loading them, and sending each input to the least-loaded one."""

from __future__ import annotations

import gc
import logging
import threading
import time
from typing import Any, Callable

from podserve.cuda_libraries import CudaUnavailable
from podserve.errors import NotReady, Overloaded
from podserve.handler import Device, Handler, model_inputs
from podserve.runtime.batching.batch_policy import BatchCost, rows_run
from podserve.runtime.batching.batcher import BatchWorker, WorkItem, check_outputs, largest_batch
from podserve.runtime.batching.contract import ContractViolation, check_contract
from podserve.runtime.core import verbs
from podserve.runtime.core.metrics import Metrics
from podserve.settings import ServingSettings

#: The share of init_delay_second that loading and warming up one instance may take before the warm-up stops.
WARMUP_SHARE = 0.5

log = logging.getLogger(__name__)


def set_aside_start_up_objects() -> int:
    """Collect start-up's garbage, then exempt what survives it (modules, models, handlers) from every later
    collection; return how many objects that is. A full collection while serving then scans only what serving
    allocated: on the example 1 ms instead of 17 ms, a pause every request in flight would wait out."""
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()


class InstancePool:
    """Load one handler per Device, give each a BatchWorker, and route inputs to the least loaded."""

    def __init__(self, handler_class: Callable[[], Handler], devices: list[Device], settings: ServingSettings,
                 metrics: Metrics, more_coming: Callable[[], bool] | None = None):
        self.settings = settings
        self.metrics = metrics
        verbs.on_verb_cpu = metrics.observe_verb_cpu  # a pod has one pool: its verbs' CPU goes to its metrics
        self._handler_class = handler_class
        self._devices = devices
        self.names = [f"{device.label}-{i}" for i, device in enumerate(devices)]
        self.workers: list[BatchWorker] = []
        self.failure: str | None = None
        self._loaded = threading.Event()
        self._incoming = 0  # requests admitted and still being decoded: batches worth waiting for
        self._incoming_lock = threading.Lock()
        # Whether more requests are on their way (being read or decoded): here, or in other processes.
        self._more_coming = more_coming or (lambda: self._incoming > 0)

    @property
    def ready(self) -> bool:
        return self._loaded.is_set() and self.failure is None

    @property
    def instance_count(self) -> int:
        """Instances loaded and serving."""
        return len(self.workers)

    def status(self) -> str:
        """Say in words why the pool is or is not ready."""
        if self.failure:
            return self.failure
        if not self._loaded.is_set():
            return f"loading model instances: {len(self.workers)} of {len(self._devices)} ready"
        return f"{len(self.workers)} instance(s) ready"

    def load_in_background(self) -> threading.Thread:
        """Load every instance on a thread of its own, then set start-up's objects aside from garbage collection."""
        def load_and_settle() -> None:
            self.load()
            if self.ready:
                log.info("%d objects from start-up set aside from garbage collection", set_aside_start_up_objects())

        thread = threading.Thread(target=load_and_settle, name="model-loader", daemon=True)
        thread.start()
        return thread

    def load(self) -> None:
        """Load and warm up every instance in turn; on failure, record why (ping reports it)."""
        for name, device in zip(self.names, self._devices):
            labels = (self.metrics.service, name)
            self.metrics.instance_ready.labels(*labels).set(0)
            try:
                if device.unusable:  # a GPU pod without a usable GPU (runtime/core/devices.py): never on the CPU
                    raise CudaUnavailable(device.unusable)
                started = time.perf_counter()
                handler = self._handler_class()
                handler.max_batch_size = self.settings.max_batch_size
                handler.load_codec(self.settings.model_path)
                handler.load(self.settings.model_path, device)
                loaded = time.perf_counter()
                cost = BatchCost(handler.padded_size)
                for rows, seconds in handler.run_costs:  # what a row costs, where padded calls cannot tell
                    cost.observe_rows(rows, seconds)
                self._warm_up(handler, cost, budget=self.settings.init_delay_second * WARMUP_SHARE - (loaded - started))
                warmed = time.perf_counter()
                if not self.workers:  # the first instance: one synthetic request checks the handler for the pod
                    check_contract(handler, self.settings)
            except ContractViolation as exc:
                log.error("the handler breaks its contract, so the pod does not start serving: %s", exc)
                self.failure = f"the handler breaks its contract: {exc}"
                return
            except Exception as exc:
                log.exception("instance %s failed to load", name)
                self.failure = f"instance {name} failed to load: {type(exc).__name__}: {exc}"
                return
            self.metrics.model_load.labels(*labels).set(loaded - started)
            self.metrics.warmup.labels(*labels).set(warmed - loaded)
            worker = BatchWorker(name, handler, max_batch_size=self.settings.max_batch_size,
                                 max_batch_delay=self.settings.max_batch_delay_ms / 1000.0,
                                 capacity=self.settings.queue_size, on_batch=self._record_batch,
                                 more_coming=self._more_coming, cost=cost)
            self.metrics.queue_depth.labels(*labels).set_function(lambda w=worker: w.depth)
            self.metrics.batch_limit.labels(*labels).set(worker.largest)
            worker.start()
            self.workers.append(worker)
            self.metrics.instance_ready.labels(*labels).set(1)
            log.info("instance %s ready on %s (provider %s): load %.2fs, warm-up %.2fs; a predict call costs %s",
                     name, device, getattr(handler, "provider", "n/a"), loaded - started, warmed - loaded,
                     cost.describe())
        self._loaded.set()

    def _warm_up(self, handler: Handler, cost: BatchCost, budget: float) -> None:
        """Run one batch of every size the batcher can form (1 to `largest_batch`: on a GPU max_batch_size, or the
        batch a model fixes), so that a first run's set-up (allocations; on a GPU kernels and algorithms, where every
        run is padded to one shape, `Handler.padded_size`) never happens to a caller. CPU batches are not padded to a few sizes: there that
        cost about 1.3x the CPU per input (`python -m bench.padding`). Then time a second run of the smallest and the largest size, the batch policy's first
        measure of a call's cost. Sizes past `budget` seconds are left cold (logged): start-up must stay within
        init_delay_second, or Kubernetes restarts the pod before it ever serves."""
        inputs = model_inputs(handler.warmup_inputs())
        if not inputs:
            return
        began = time.perf_counter()
        largest = largest_batch(handler, self.settings.max_batch_size, self.settings.max_batch_delay_ms / 1000.0)
        for size in range(1, largest + 1):
            if time.perf_counter() - began > budget:
                log.warning("warm-up stopped after %.1fs (its budget, %.0f%% of init_delay_second): batches of %d "
                            "to %d run cold the first time", time.perf_counter() - began, WARMUP_SHARE * 100,
                            size, largest)
                largest = size - 1
                break
            batch = (inputs * size)[:size]
            check_outputs(handler, handler.predict(batch), len(batch))
        for size in sorted({1, largest}):
            if time.perf_counter() - began > budget:
                return  # no time left to measure: the batch policy learns from the first batches served
            batch = (inputs * size)[:size]
            fastest = float("inf")
            for _ in range(3):  # the least of three: one run's jitter is as large as a small batch's cost
                started = time.perf_counter()
                handler.predict(batch)
                fastest = min(fastest, time.perf_counter() - started)
            cost.observe(size, fastest)

    def codec_handler(self) -> Handler:
        """The handler whose `decode` and `encode` the request threads call (NotReady until every instance is)."""
        if not self.ready:
            raise NotReady(f"not ready: {self.status()}")
        return self.workers[0].handler

    @staticmethod
    def codec_handler_of(item: WorkItem) -> Handler:
        """The handler that encodes `item`'s output: its instance's."""
        return item.worker.handler

    def decoding(self) -> "_Incoming":
        """Count a request as on its way to a queue while it is decoded (`with pool.decoding(): ...`): the batch
        threads wait for it, up to the batch delay, instead of running a batch without it."""
        return _Incoming(self)

    def ensure_room(self) -> None:
        """Raise Overloaded at once when every instance's queue is full (checked before decoding)."""
        if not any(worker.has_room() for worker in self.workers):
            raise self._full()

    def submit(self, input: Any, key: Any, deadline: float, admission: _Incoming | None = None,
               on_done: Callable[[list[WorkItem]], None] | None = None, context: Any = None) -> WorkItem:
        """Queue `input` on the least-loaded instance with room; raise Overloaded when all are full. With
        `on_done`, the batch thread calls it when the item is done instead of a caller waiting on it."""
        item = WorkItem(input, key, deadline, on_done, context)
        if admission is not None:
            admission.release()  # before queueing, so the batch thread does not wait for this very request
        for worker in sorted(self.workers, key=lambda w: w.load):
            try:
                worker.submit(item)
                return item
            except Overloaded:
                continue
        raise self._full()

    def _full(self) -> Overloaded:
        return Overloaded(f"every instance's queue is full ({len(self.workers)} x {self.settings.queue_size}); "
                          f"retry shortly")

    def holding_limit(self) -> int:
        """Requests the pod holds at once (from reading one to answering it) before refusing more: `queue_size`
        per instance. Counted at admission (runtime/http/admission.py), so no request waits uncounted."""
        return max(1, len(self._devices)) * self.settings.queue_size

    def lanes_take(self) -> int:
        """Inputs the ready instances take in one run each (their largest batches)."""
        return sum(worker.largest for worker in self.workers)

    def is_idle(self) -> bool:
        return all(worker.load == 0 for worker in self.workers)

    def liveness_problem(self) -> str | None:
        """Return why the process is wedged (a batch thread dead or stuck), or None when it is alive."""
        return instances_problem(((worker.name, worker.threads_alive, worker.batch_started) for worker in self.workers),
                                 self.settings.stuck_batch_seconds, time.monotonic())

    def stop(self, timeout: float | None = None) -> None:
        """Finish what is queued, and wait at most `timeout` seconds in all (default `stuck_batch_seconds`) for the
        instances' batch threads to end."""
        until = time.monotonic() + (self.settings.stuck_batch_seconds if timeout is None else timeout)
        for worker in self.workers:
            worker.stop(until=until)

    def _record_batch(self, worker: BatchWorker, size: int, seconds: float, items: list[WorkItem],
                      cpu_seconds: float) -> None:
        self.metrics.observe_batch(worker.name, size, seconds, [item.queue_seconds for item in items],
                                   sum(item.fill_seconds for item in items), rows_run(size, worker.handler.padded_size))
        self.metrics.observe_verb_cpu("predict", cpu_seconds)


def instances_problem(instances, stuck_after: float, now: float) -> str | None:
    """The pod's one liveness rule for its model instances, in both layouts (one process reads its pool; the split
    layout's front reads what the model process publishes, runtime/processes/pod_view.py): why they are wedged, or
    None. `instances` gives (name, whether its batch threads all run, the monotonic start of its oldest running
    batch or None); a batch that has run over `stuck_after` seconds (`stuck_batch_seconds`) is stuck."""
    for name, alive, started in instances:
        if not alive or started is not None and now - started > stuck_after:
            return f"instance {name}: batch thread is dead or one batch has run over {stuck_after:g}s"
    return None


class _Incoming:
    """A request counted as on its way from admission until it is queued (or fails)."""

    def __init__(self, pool: InstancePool):
        self.pool = pool
        self.counted = False

    def __enter__(self) -> "_Incoming":
        with self.pool._incoming_lock:
            self.pool._incoming += 1
            self.counted = True
        return self

    def release(self) -> None:
        with self.pool._incoming_lock:
            if self.counted:
                self.pool._incoming -= 1
                self.counted = False

    def __exit__(self, *_exc) -> None:
        self.release()
