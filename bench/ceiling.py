"""The ceiling: onnxruntime in this process, no HTTP, on inputs already preprocessed by the handler.

A closed loop at concurrency c keeps c inputs in flight. The ceiling at c is the best of
two ways to spend the machine's cores on them:
- one session using every core (intra-op threads = cores), running batches of b <= c;
- one single-threaded session per core (as many as c allows), in parallel threads, each
  running batches of b with sessions x b <= c (onnxruntime releases the GIL while it runs).
`search` tries every way once, briefly; `best_for` picks the fastest that fits c.

`ServiceSteps` turns the same loop into the service without a server: each batch is decoded
from the workload's images by the handler, run, and each output encoded, in the same threads
(what a server costing nothing would add to the ceiling: the service's own code, beside
inference on the other cores).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np

from bench.loadgen import Window


@dataclass(frozen=True)
class Config:
    sessions: int
    threads: int  # intra-op threads per session
    batch: int

    @property
    def in_flight(self) -> int:
        return self.sessions * self.batch

    def label(self) -> str:
        plural = "s" if self.sessions > 1 else ""
        return f"{self.sessions} session{plural} x {self.threads} thread(s), batch {self.batch}"


@dataclass(frozen=True)
class ServiceSteps:
    """The handler's own steps around inference: `decode` of an encoded image, `encode` of one output row."""

    images: Sequence[bytes]
    decode: Callable[[bytes], np.ndarray]
    encode: Callable[[np.ndarray], Any]


class Ceiling:
    """Sessions of one model, made on first use and kept, and the loop that times them."""

    def __init__(self, model_path: str, inputs: Sequence[np.ndarray], cores: int):
        self.model_path = model_path
        self.inputs = list(inputs)
        self.cores = cores
        self._sessions: dict[int, list] = {}  # threads per session -> sessions
        self.searched: dict[Config, float] = {}  # config -> items per second in the search

    def configs_for(self, concurrency: int, batches: Sequence[int]) -> list[Config]:
        """Every way to keep at most `concurrency` inputs in flight."""
        shared = [Config(1, self.cores, b) for b in batches if b <= concurrency]
        parallel = min(concurrency, self.cores)
        single = [Config(parallel, 1, b) for b in batches if parallel * b <= concurrency]
        return list(dict.fromkeys(shared + single))

    def search(self, concurrencies: Sequence[int], batches: Sequence[int], seconds: float) -> None:
        """Time every config any concurrency could use, once, for about `seconds` each."""
        wanted = dict.fromkeys(c for concurrency in concurrencies for c in self.configs_for(concurrency, batches))
        for config in wanted:
            if config not in self.searched:
                self.run(config, seconds / 2)  # warm-up: first runs allocate
                self.searched[config] = self.run(config, seconds).throughput_rps

    def best_for(self, concurrency: int, batches: Sequence[int]) -> Config:
        return max(self.configs_for(concurrency, batches), key=lambda c: self.searched[c])

    def run(self, config: Config, seconds: float, max_batches: int = 200_000,
            steps: ServiceSteps | None = None) -> Window:
        """Run `config` for `seconds` (and at most `max_batches` batches per session); time every batch. With `steps`,
        every batch is decoded from the next images first and each of its outputs encoded after (latency included)."""
        sessions = self._get_sessions(config.threads, config.sessions)
        feeds = [self._feed(offset, config.batch) for offset in range(config.sessions)]
        name = self._input_name
        latencies: list[list[float]] = [[] for _ in sessions]
        start = threading.Barrier(len(sessions) + 1)
        stop_at = [0.0]

        def loop(index: int) -> None:
            session, feed, times = sessions[index], feeds[index], latencies[index]
            start.wait()
            while len(times) < max_batches and time.perf_counter() < stop_at[0]:
                began = time.perf_counter()
                if steps is None:
                    session.run(None, feed)
                else:
                    first = (index + len(times) * len(sessions)) * config.batch
                    items = [steps.decode(steps.images[(first + i) % len(steps.images)]) for i in range(config.batch)]
                    batch = items[0][np.newaxis] if len(items) == 1 else np.stack(items)  # as the handler: no copy of one
                    for output in session.run(None, {name: batch})[0]:
                        steps.encode(output)
                times.append(time.perf_counter() - began)

        threads = [threading.Thread(target=loop, args=(i,), name=f"ceiling-{i}") for i in range(len(sessions))]
        for thread in threads:
            thread.start()
        cpu_before = time.process_time()
        began = time.perf_counter()
        stop_at[0] = began + seconds
        start.wait()
        for thread in threads:
            thread.join()
        elapsed = time.perf_counter() - began
        cpu = time.process_time() - cpu_before
        per_item = np.repeat(np.concatenate([np.asarray(t) for t in latencies]), config.batch) * 1000
        batches = sum(len(t) for t in latencies)
        p50, p95, p99 = np.percentile(per_item, [50, 95, 99]) if per_item.size else (0.0, 0.0, 0.0)
        return Window(requests=batches * config.batch, seconds=elapsed, errors=0, p50_ms=float(p50),
                      p95_ms=float(p95), p99_ms=float(p99), server_cpu_s=cpu, batches=batches,
                      batch_items=batches * config.batch)

    def outputs(self) -> list[np.ndarray]:
        """The model's first output for each input, one row each (what an OnnxHandler's predict gives encode)."""
        session = self._get_sessions(1, 1)[0]
        return [session.run(None, {self._input_name: item[np.newaxis]})[0][0] for item in self.inputs]

    def _feed(self, offset: int, batch: int) -> dict:
        items = [self.inputs[(offset * batch + i) % len(self.inputs)] for i in range(batch)]
        return {self._input_name: np.stack(items)}

    def _get_sessions(self, threads: int, count: int) -> list:
        sessions = self._sessions.setdefault(threads, [])
        while len(sessions) < count:
            sessions.append(_session(self.model_path, threads))
        return sessions[:count]

    @property
    def _input_name(self) -> str:
        return self._get_sessions(self.cores, 1)[0].get_inputs()[0].name


def _session(model_path: str, threads: int):
    """A CPU session as onnxruntime makes it by default, with `threads` intra-op threads."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    return ort.InferenceSession(model_path, sess_options=options, providers=["CPUExecutionProvider"])
