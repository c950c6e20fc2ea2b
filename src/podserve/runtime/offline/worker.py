"""The consume -> decode -> batch -> write -> commit loop of the offline worker.

One thread does it all, one fetch at a time, so nothing is in hand during a rebalance:
1. fetch up to as many messages as every instance's queue holds;
2. decode each with the handler and queue it on the InstancePool, whose batch threads
   group them into batches of up to max_batch_size (waiting up to max_batch_delay_ms, only where a
   fuller batch would cost less per input: runtime/batching/batch_policy.py);
3. a message that cannot be parsed or decoded, or whose input the handler fails on even
   when run alone, becomes a dead letter; every other one a result keyed like its input;
4. write results and dead letters, backing off and retrying whatever the sinks did not
   acknowledge, without fetching or committing meanwhile;
5. commit each partition's offset past the last message of the fetch.
A crash anywhere before 5 means the fetch is read again: duplicates, never a loss.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from confluent_kafka import Consumer, KafkaException, TopicPartition

from podserve.errors import DeadlineExceeded, HandlerFailed, InvalidInput, Overloaded, ServingError
from podserve.handler import FrameOutput, WithContext
from podserve.kafka_access import KafkaRefused, is_refusal, refusal, user_of
from podserve.runtime.batching.pool import InstancePool
from podserve.runtime.core.logs import RUNTIME_FAULT
from podserve.runtime.core.verbs import batch_key_of, call_verb
from podserve.runtime.offline import records
from podserve.runtime.offline.metrics import MessageMetrics
from podserve.runtime.offline.records import Outgoing
from podserve.runtime.protocols import api
from podserve.runtime.protocols.video_route import video_threads
from podserve.settings import ServingSettings
from podserve.videos import decode_video

log = logging.getLogger(__name__)

#: An input is never dropped for waiting: its deadline in the queue is this far away.
QUEUE_DEADLINE_SECONDS = 3600.0
POLL_SECONDS = 0.5
LAG_EVERY_SECONDS = 5.0
FIRST_BACKOFF_SECONDS = 0.5


def _unexpected(message, exc: Exception) -> ServingError:
    """The error a message that hit a bug of the runtime's own (a handler's, in a verb or batch_key, is a
    HandlerFailed already) is dead-lettered with, logged as a fault of the runtime's own: as the online route answers
    such a request 500. A worker that exited instead would read the same message again on restart, and again, its
    partition stopped."""
    log.error("unexpected error on message %s[%d]@%d", message.topic(), message.partition(), message.offset(),
              exc_info=exc, extra=RUNTIME_FAULT)
    return ServingError(f"internal error: {type(exc).__name__}; see the worker's log")


def consumer_config(connection: dict, group: str) -> dict:
    """A consumer on `connection` (the brokers and the principal) that commits only what the worker commits, and
    starts a new group at the earliest offset."""
    return {**connection, "group.id": group, "enable.auto.commit": False,
            "enable.auto.offset.store": False, "auto.offset.reset": "earliest", "session.timeout.ms": 10_000,
            "client.id": "podserve-offline"}


class OfflineWorker:
    """Drive `pool` from `consumer`'s topic into `sink`, poison into `dead_letters`; `consumer_settings` (its config)
    names its principal and group in a refusal."""

    def __init__(self, settings: ServingSettings, topic: str, pool: InstancePool, consumer: Consumer, sink,
                 dead_letters, metrics: MessageMetrics, sink_retry_max_seconds: float = 30.0,
                 consumer_settings: dict | None = None):
        self.settings = settings
        self.topic = topic
        self.pool = pool
        self.consumer = consumer
        self.sink = sink
        self.dead_letters = dead_letters
        self.metrics = metrics
        self.sink_retry_max_seconds = sink_retry_max_seconds
        self.stopping = threading.Event()
        self.subscribed = False
        self.heartbeat = time.monotonic()
        self._lag_at = 0.0
        self.counts = {"consumed": 0, "produced": 0, "dead_lettered": 0, "committed": 0}
        self.seconds = {"process": 0.0, "write": 0.0, "commit": 0.0}  # where the loop's time went
        self.input_limits = api.InputLimits.from_settings(settings, pool.holding_limit(), video_threads(settings)[1])
        self.user, self.group = user_of(consumer_settings or {}), (consumer_settings or {}).get("group.id", "")

    # --- life ---------------------------------------------------------------------------

    def request_stop(self, reason: str) -> None:
        if not self.stopping.is_set():
            log.info("%s: no more fetching; finishing, writing and committing the messages in hand", reason)
        self.stopping.set()

    def liveness_problem(self) -> str | None:
        problem = self.pool.liveness_problem()
        if problem:
            return problem
        silent = time.monotonic() - self.heartbeat
        if silent > self.settings.stuck_batch_seconds:
            return f"the consume loop has not turned for {silent:.0f}s"
        return None

    def run(self) -> int:
        """Consume until asked to stop; return the exit code (0 after a clean stop, 1 if the model failed)."""
        while not self.pool.ready and not self.stopping.is_set():
            if self.pool.failure:
                log.error("cannot consume: %s", self.pool.failure)
                self.consumer.close()
                return 1
            self.heartbeat = time.monotonic()
            time.sleep(0.1)
        self.consumer.subscribe([self.topic])
        self.subscribed = True
        fetch = self.settings.queue_size * len(self.pool.workers)
        log.info("consuming %s, up to %d messages per fetch", self.topic, fetch)
        while not self.stopping.is_set():
            self.heartbeat = time.monotonic()
            messages = self.consumer.consume(num_messages=fetch, timeout=POLL_SECONDS)
            messages = [m for m in messages if not self._is_error(m)]
            if messages:
                self.handle(messages)
            if time.monotonic() - self._lag_at > LAG_EVERY_SECONDS:
                self._update_lag()
        self.consumer.close()  # leaves the group at once; everything handled is already committed
        log.info("stopped cleanly: every fetched message was written and committed",
                 extra={"fields": {"counts": self.counts, "seconds": {k: round(v, 2) for k, v in self.seconds.items()}}})
        return 0

    # --- one fetch --------------------------------------------------------------------------

    def handle(self, messages: list) -> None:
        """Process, write and commit one fetch."""
        self.metrics.consumed.inc(len(messages))
        self.counts["consumed"] += len(messages)
        began = time.perf_counter()
        results, dead = self.process(messages)
        processed = time.perf_counter()
        self._write(self.sink, results, self.metrics.produced)
        self.counts["produced"] += len(results)
        self._write(self.dead_letters, dead, self.metrics.dead_lettered)
        self.counts["dead_lettered"] += len(dead)
        written = time.perf_counter()
        if self._commit(messages):
            self.counts["committed"] += len(messages)
        self.seconds["process"] += processed - began
        self.seconds["write"] += written - processed
        self.seconds["commit"] += time.perf_counter() - written

    def process(self, messages: list) -> tuple[list[Outgoing], list[Outgoing]]:
        """Return (results, dead letters) for `messages`: every message ends in exactly one of them."""
        handler = self.pool.codec_handler()
        payloads: list[Any] = [None] * len(messages)
        items: list[Any] = [None] * len(messages)
        contexts: list[tuple] = [()] * len(messages)  # what encode gets after the output (see WithContext)
        errors: list[ServingError | None] = [None] * len(messages)
        with self.pool.decoding():  # batch threads wait (up to the delay) for the rest of the fetch
            for i, message in enumerate(messages):
                try:
                    payloads[i] = records.parse(message.value(), self.input_limits)
                    if payloads[i].video is not None:  # a video: one input per sampled frame, answered together
                        items[i], contexts[i] = self._submit_video(handler, payloads[i])
                        continue
                    model_input = call_verb(handler.decode, payloads[i])
                    if type(model_input) is WithContext:
                        model_input, contexts[i] = model_input.input, (model_input.context,)
                    items[i] = self._submit(model_input, batch_key_of(handler, model_input))
                except ServingError as exc:
                    errors[i] = exc
                except Exception as exc:  # noqa: BLE001 - see _unexpected
                    errors[i] = _unexpected(message, exc)
        outputs: list[Any] = [None] * len(messages)
        for i, item in enumerate(items):
            if type(item) is list:
                outputs[i], errors[i] = self._wait_video(item, contexts[i])
                contexts[i] = ()
            elif item is not None:
                outputs[i], errors[i] = self._wait(item)
        for i, error in enumerate(errors):  # a failed batch may hold one bad input: run each alone
            if isinstance(error, HandlerFailed) and items[i] is not None and type(items[i]) is not list:
                model_input = items[i].input
                outputs[i], errors[i] = self._wait(self._submit(model_input, batch_key_of(handler, model_input)))
        results, dead = [], []
        for i, message in enumerate(messages):
            if errors[i] is None:
                try:
                    encode = handler.encode_video if type(items[i]) is list else handler.encode
                    results.append(records.result(message.key(), payloads[i],
                                                  call_verb(encode, outputs[i], *contexts[i])))
                    continue
                except (TypeError, ValueError) as exc:
                    errors[i] = HandlerFailed(f"{type(handler).__name__}.encode returned something JSON cannot hold "
                                              f"({exc})")
                except ServingError as exc:
                    errors[i] = exc
                except Exception as exc:  # noqa: BLE001 - see _unexpected
                    errors[i] = _unexpected(message, exc)
            log.warning("poison message %s[%d]@%d: %s", message.topic(), message.partition(), message.offset(),
                        errors[i].message, extra={"fields": {"error": errors[i].code, "field": errors[i].field}})
            dead.append(records.dead_letter(message, errors[i]))
        return results, dead

    def _submit_video(self, handler, payload) -> tuple[list, tuple]:
        """Decode a video here (this loop is the worker's only request thread) and queue each sampled frame; return
        the items and the frames' (index, timestamp)s."""
        if not handler.reads_video():
            raise InvalidInput(f"this service ({type(handler).__name__}) does not read videos; send 'image' "
                               f"or 'data'", field="video")
        items, frames = [], []
        for frame in decode_video(payload.video, payload.video_limits, size=handler.video_frame_size):
            model_input = call_verb(handler.decode_frame, frame)
            items.append(self._submit(model_input, batch_key_of(handler, model_input)))
            frames.append((frame.index, frame.timestamp))
        return items, tuple(frames)

    def _wait_video(self, items: list, frames: tuple) -> tuple[Any, ServingError | None]:
        outputs = []
        for item, (index, timestamp) in zip(items, frames):
            output, error = self._wait(item)
            if error is not None:
                return None, error
            outputs.append(FrameOutput(index, timestamp, output))
        return outputs, None

    def _submit(self, model_input: Any, key: Any):
        while True:
            try:
                return self.pool.submit(model_input, key, time.monotonic() + QUEUE_DEADLINE_SECONDS)
            except Overloaded:  # a fetch never exceeds the queues, but a retried input may meet a full one
                time.sleep(0.01)

    def _wait(self, item) -> tuple[Any, ServingError | None]:
        while True:
            try:
                return item.wait(), None
            except DeadlineExceeded:
                item = self._submit(item.input, item.key)
            except ServingError as exc:
                return None, exc

    # --- write and commit ----------------------------------------------------------------

    def _write(self, sink, outgoing: list[Outgoing], counter) -> None:
        """Send until the sink acknowledged every record; back off between tries; never give up, never skip."""
        pending, backoff = outgoing, FIRST_BACKOFF_SECONDS
        while pending:
            failed = sink.send(pending)
            counter.inc(len(pending) - len(failed))
            if not failed:
                return
            self.metrics.sink_retries.inc(len(failed))
            log.warning("sink %s did not acknowledge %d record(s) (%s); retrying in %.1fs, committing nothing",
                        sink.topic, len(failed), sink.last_error, backoff)
            self._pause(backoff)
            pending, backoff = failed, min(backoff * 2, self.sink_retry_max_seconds)

    def _pause(self, seconds: float) -> None:
        """Wait without fetching, while the consumer still tells the group it is alive."""
        assignment = self.consumer.assignment()
        self.consumer.pause(assignment)
        try:
            until = time.monotonic() + seconds
            while time.monotonic() < until:
                self.heartbeat = time.monotonic()
                self.consumer.consume(num_messages=1, timeout=min(0.2, max(0.0, until - time.monotonic())))
        finally:
            try:
                self.consumer.resume(assignment)
            except KafkaException as exc:  # a rebalance took some away meanwhile: their new owner reads them
                log.info("not resuming partitions no longer assigned here (%s)", exc)

    def _commit(self, messages: list) -> bool:
        last: dict[tuple[str, int], int] = {}
        for message in messages:
            key = (message.topic(), message.partition())
            last[key] = max(last.get(key, -1), message.offset())
        offsets = [TopicPartition(topic, partition, offset + 1) for (topic, partition), offset in last.items()]
        try:
            self.consumer.commit(offsets=offsets, asynchronous=False)
            return True
        except KafkaException as exc:  # e.g. the partitions moved in a rebalance: their new owner reads them again
            log.warning("commit failed (%s); those messages will be read again (duplicates, no loss)", exc)
            return False

    def _update_lag(self) -> None:
        self._lag_at = time.monotonic()
        try:
            assignment = self.consumer.assignment()
            positions = self.consumer.position(assignment) if assignment else []
            lag = 0
            for tp in positions:
                low, high = self.consumer.get_watermark_offsets(tp, timeout=1.0)
                lag += max(0, high - (tp.offset if tp.offset >= 0 else low))
            self.metrics.lag.set(lag)
        except KafkaException as exc:
            log.debug("consumer lag not updated: %s", exc)

    def _is_error(self, message) -> bool:
        """Whether `message` is an error to skip (logged); raise KafkaRefused where the brokers refused this principal
        the topic or the group (no retry changes that)."""
        error = message.error()
        if error is None:
            return False
        if is_refusal(error.name()):
            what, name = (("consumer group", self.group) if error.name() == "GROUP_AUTHORIZATION_FAILED"
                          else ("topic", message.topic() or self.topic))
            raise KafkaRefused(refusal(what, name, self.user, error.name()))
        log.warning("consumer error: %s", error)
        return True
