"""The offline worker on a real Kafka broker with the real example model: nothing lost, each input answered.

Every test feeds its own fresh topics, keyed inputs with known answers (an upright line of
text is 0 degrees, the same line upside down 180), and reads back what the worker wrote.
Loops are bounded in count and time; figures are printed (run with -s to see them).
"""

from __future__ import annotations

import collections
import json
import signal
import time
import urllib.error

from kafka_workers import CommittedOffsets, committed, create_topic, line_messages, topic_exists
from podserve import metric_names as names
from podserve.runtime.offline.records import ERROR_HEADER, MESSAGE_HEADER
from podserve.testbed.topics import TopicReader, image_message, send

POISON = [
    b"not json at all",
    b'["a", "list"]',
    json.dumps({"postid": "p", "image": "%%% not base64 %%%"}).encode(),
    image_message(b"these bytes are no image", postid="p"),
    json.dumps({"postid": "p", "data": [1, 2, 3]}).encode(),  # this service reads an image
    # a field named by a lone surrogate (valid JSON, no UTF-8 for it): its error names the field
    b'{"postid": "p", "image": "aGk=", "\\udc00x": 1e999}',
]


def wait_for(reader: TopicReader, count: int, timeout: float, worker=None) -> list:
    """Read until `count` records are in the topic (or the time is up); return them all."""
    deadline = time.monotonic() + timeout
    while len(reader.records) < count and time.monotonic() < deadline:
        reader.read_new(timeout=5)
        if worker is not None:
            assert worker.program.alive(), worker.program.log_tail(30)
        if len(reader.records) < count:
            time.sleep(0.5)
    return reader.records


def wait_for_keys(reader: TopicReader, keys: set, timeout: float, worker=None) -> list:
    """Read until every key in `keys` has a record (or the time is up); return all records read."""
    deadline = time.monotonic() + timeout
    while not keys <= {r.key for r in reader.records} and time.monotonic() < deadline:
        reader.read_new(timeout=5)
        if worker is not None:
            assert worker.program.alive(), worker.program.log_tail(30)
        time.sleep(0.5)
    return reader.records


def settled(reader: TopicReader, watch, tries: int = 10) -> tuple[int, int]:
    """(results in the sink, inputs committed) once two looks 0.3 s apart agree: requests in flight have landed."""
    last = None
    for _ in range(tries):
        reader.read_new(timeout=5)
        now = (len(reader.records), watch.total())
        if now == last:
            break
        last = now
        time.sleep(0.3)
    return now


def by_key(records) -> collections.Counter:
    return collections.Counter(record.key for record in records)


def test_ten_thousand_messages_give_exactly_one_result_each(kafka, topics, start_worker):
    messages, angles = line_messages(10_000, "line")
    create_topic(kafka.admin, topics["source_topic"])
    send(kafka.admin, topics["source_topic"], messages)  # before the worker's group exists: read from the start
    assert not topic_exists(kafka.admin, topics["sink_topic"])  # the worker creates it (the broker never does)

    started = time.monotonic()
    worker = start_worker(topics)
    reader = TopicReader(kafka.admin, topics["sink_topic"])
    records = wait_for_keys(reader, set(angles), timeout=300, worker=worker)
    seconds = time.monotonic() - started
    counts = by_key(records)
    duplicates = sum(n - 1 for n in counts.values())
    missing = set(angles) - set(counts)
    batches = worker.metric(names.BATCH_SIZE + "_count")
    inputs = worker.metric(names.BATCH_SIZE + "_sum")
    print(f"\n10,000 messages: {len(counts)} keys answered in {seconds:.1f}s (worker start included), "
          f"{duplicates} duplicates, {len(missing)} missing, {batches:.0f} batches, {inputs / batches:.1f} per batch")
    assert not missing and duplicates == 0 and set(counts) == set(angles)
    wrong = [r.key for r in records if json.loads(r.value)["results"]["angle"] != angles[r.key]]
    assert wrong == [], f"{len(wrong)} wrong answers, e.g. {wrong[:3]}"
    first = json.loads(records[0].value)
    assert set(first) == {"postid", "uid", "seqid", "results"} and first["postid"] == records[0].key.decode()
    # Every input ran in exactly one predict call. How full those calls were is not asserted here: on a CPU the
    # batch policy runs what is queued at once where waiting would not lower the cost per input, so the mean
    # batch is how far one decode thread gets ahead of two batch threads (2.9 to over 4 on this machine).
    # test_fetch_batching.py shows, deterministically, that a fetch is queued whole and batched.
    assert inputs == len(messages)
    assert worker.metric(names.MESSAGES_CONSUMED) == worker.metric(names.MESSAGES_PRODUCED) == len(messages)
    deadline = time.monotonic() + 30
    while worker.metric(names.CONSUMER_LAG) != 0 and time.monotonic() < deadline:
        time.sleep(1)
    assert worker.metric(names.CONSUMER_LAG) == 0
    assert sum(committed(kafka.admin, topics["consumer_group"], topics["source_topic"]).values()) == len(messages)
    reader.close()


def test_poison_goes_to_the_dead_letter_topic_with_its_error_and_the_stream_goes_on(kafka, topics, start_worker):
    good, angles = line_messages(200, "good")
    poison = [(f"poison-{i}".encode(), value) for i, value in enumerate(POISON)]
    messages = good[:50] + poison[:2] + good[50:120] + poison[2:] + good[120:]
    worker = start_worker(topics)  # the source does not exist yet either: the worker creates it
    send(kafka.admin, topics["source_topic"], messages)
    results = wait_for(TopicReader(kafka.admin, topics["sink_topic"]), len(good), timeout=120, worker=worker)
    dead = wait_for(TopicReader(kafka.admin, topics["dead_letter_topic"]), len(poison), timeout=60)
    assert set(by_key(results)) == set(angles)  # those after the poison too
    assert sorted(r.key for r in dead) == sorted(key for key, _ in poison)
    originals = dict(poison)
    for record in dead:
        assert record.value == originals[record.key]  # the original message, unchanged: it can be replayed
        assert record.headers[ERROR_HEADER] == "invalid_input" and record.headers[MESSAGE_HEADER]
        assert record.headers["podserve-source-topic"] == topics["source_topic"]
    print("\n" + "\n".join(f"dead letter {r.key.decode()}: {r.headers[MESSAGE_HEADER][:100]}" for r in dead))
    assert worker.metric(names.MESSAGES_DEAD_LETTERED) == len(poison)
    assert worker.metric(names.MESSAGES_PRODUCED) == len(good)


def test_a_failing_predict_dead_letters_only_its_own_input(kafka, topics, start_worker):
    """Fussy's predict fails a whole batch if one input is negative; the worker reruns each alone."""
    good = [(f"n-{i}".encode(), json.dumps({"postid": i, "data": [i, 1.0]}).encode()) for i in range(100)]
    bad = [(b"negative", json.dumps({"postid": "neg", "data": [-1.0, 1.0]}).encode()),
           (b"raises-in-decode", json.dumps({"postid": "boom", "data": "boom"}).encode())]
    worker = start_worker(topics, handler="fussy_handler:Fussy")
    send(kafka.admin, topics["source_topic"], good[:40] + bad + good[40:])
    results = wait_for(TopicReader(kafka.admin, topics["sink_topic"]), len(good), timeout=60, worker=worker)
    dead = wait_for(TopicReader(kafka.admin, topics["dead_letter_topic"]), len(bad), timeout=60)
    assert {r.key: json.loads(r.value)["results"] for r in results} == {f"n-{i}".encode(): i + 1.0 for i in range(100)}
    errors = {r.key: r.headers[ERROR_HEADER] for r in dead}
    assert errors == {b"negative": "handler_error", b"raises-in-decode": "handler_error"}
    assert "RuntimeError" in next(r for r in dead if r.key == b"negative").headers[MESSAGE_HEADER]


def test_a_handler_bug_outside_its_verbs_dead_letters_its_message_and_the_stream_goes_on(kafka, topics, start_worker):
    """KeyFails' batch_key raises on 13: called outside the verbs, it is still the handler's bug (handler_error, as
    online), no fault of the runtime's own; the worker used to exit on it and read the same message again on every
    restart."""
    good = [(f"n-{i}".encode(), json.dumps({"postid": i, "data": [100 + i, 1.0]}).encode()) for i in range(30)]
    bad = [(b"thirteen", json.dumps({"postid": "13", "data": [13, 1.0]}).encode())]
    worker = start_worker(topics, handler="fussy_handler:KeyFails")
    send(kafka.admin, topics["source_topic"], good[:10] + bad + good[10:])
    results = wait_for(TopicReader(kafka.admin, topics["sink_topic"]), len(good), timeout=60, worker=worker)
    dead = wait_for(TopicReader(kafka.admin, topics["dead_letter_topic"]), len(bad), timeout=60, worker=worker)
    assert sorted(r.key for r in results) == sorted(key for key, _ in good)
    assert [(r.key, r.headers[ERROR_HEADER]) for r in dead] == [(b"thirteen", "handler_error")]
    assert "KeyFails.batch_key failed: RuntimeError: batch_key cannot key 13" in dead[0].headers[MESSAGE_HEADER]
    assert worker.metric(names.RUNTIME_FAULTS) == 0 and worker.program.alive()


def test_sigkill_mid_stream_then_restart_loses_nothing(kafka, topics, start_worker):
    """Killed where it hurts most: results written, their offsets not yet committed (frozen with SIGSTOP at varied
    moments until caught there, for up to 20 s; SIGKILL then, or at the end of that time anyway)."""
    messages, angles = line_messages(2000, "kill")
    create_topic(kafka.admin, topics["source_topic"])
    send(kafka.admin, topics["source_topic"], messages)
    first = start_worker(topics)
    reader = TopicReader(kafka.admin, topics["sink_topic"])
    wait_for(reader, 200, timeout=120, worker=first)
    watch = CommittedOffsets(kafka.admin, topics["consumer_group"], topics["source_topic"])
    deadline, attempt = time.monotonic() + 20, 0
    while time.monotonic() < deadline:  # freeze it at varied moments until it is caught in the window
        time.sleep((0.03, 0.07, 0.11)[attempt % 3])
        attempt += 1
        first.program.signal(signal.SIGSTOP)
        written, committed_now = settled(reader, watch)
        if written > committed_now:  # written, not yet committed: kill it right there
            break
        first.program.signal(signal.SIGCONT)
    first.program.signal(signal.SIGKILL)
    first.program.process.wait(10)
    written_at_kill, committed_at_kill = settled(reader, watch)
    watch.close()
    second = start_worker(topics)  # same group: resumes from the last commit (after the dead member's session ends)
    wait_for_keys(reader, set(angles), timeout=180, worker=second)
    deadline = time.monotonic() + 30  # let the restarted worker finish, then read whatever else it wrote
    while second.metric(names.CONSUMER_LAG) != 0 and time.monotonic() < deadline:
        time.sleep(1)
    reader.read_new()
    counts = by_key(reader.records)
    duplicates = sum(n - 1 for n in counts.values())
    missing = set(angles) - set(counts)
    print(f"\nSIGKILL (after {attempt} freezes) with {written_at_kill} results written and {committed_at_kill} inputs "
          f"committed; after the restart: {len(counts)} keys answered, {len(missing)} missing, {duplicates} duplicates")
    assert not missing
    assert duplicates == written_at_kill - committed_at_kill  # exactly those written but not committed, read again
    assert duplicates <= 64  # at most the one fetch in hand at the kill (queue_size 64 x 1 instance)
    assert sum(committed(kafka.admin, topics["consumer_group"], topics["source_topic"]).values()) == len(messages)


def test_sigterm_mid_stream_exits_0_with_everything_fetched_written_and_committed(kafka, topics, start_worker):
    messages, _ = line_messages(2000, "term")
    create_topic(kafka.admin, topics["source_topic"])
    send(kafka.admin, topics["source_topic"], messages)
    source = TopicReader(kafka.admin, topics["source_topic"])
    assert len(source.read_new()) == len(messages)
    worker = start_worker(topics)
    reader = TopicReader(kafka.admin, topics["sink_topic"])
    wait_for(reader, 400, timeout=120, worker=worker)
    worker.program.signal(signal.SIGTERM)
    assert worker.program.process.wait(60) == 0
    counts = worker.final_counts()
    reader.read_new()
    written = by_key(reader.records)
    offsets = {partition: max(offset, 0)  # -1001: nothing committed on that partition yet
               for partition, offset in committed(kafka.admin, topics["consumer_group"], topics["source_topic"]).items()}
    should_be_written = {r.key for r in source.records if r.offset < offsets[r.partition]}
    print(f"\nSIGTERM after {len(written)} results: exit 0; the worker fetched {counts['consumed']}, wrote "
          f"{counts['produced']}, committed {counts['committed']}; committed offsets {offsets}")
    assert 0 < counts["consumed"] < len(messages)  # mid-stream
    assert counts["consumed"] == counts["produced"] == counts["committed"] == len(written)
    assert set(written) == should_be_written and max(written.values()) == 1
    assert sum(offsets.values()) == counts["consumed"]


def test_a_sink_that_is_down_is_retried_without_committing_then_written(kafka, topics, start_worker, tmp_path):
    """The sink is a JSON-lines file on a volume that is not mounted yet (its folder is missing): a real failure."""
    volume = tmp_path / "volume"
    sink_file = volume / "directions.jsonl"
    topics = {**{k: v for k, v in topics.items() if k != "sink_topic"}, "sink_file": str(sink_file),
              "sink_retry_max_seconds": 1.0}
    messages, angles = line_messages(100, "down")
    worker = start_worker(topics)
    send(kafka.admin, topics["source_topic"], messages)
    deadline = time.monotonic() + 60
    while worker.metric(names.SINK_RETRIES) < 2 and time.monotonic() < deadline:  # it failed, then failed again
        time.sleep(0.2)
    assert worker.metric(names.SINK_RETRIES) >= 2 and worker.metric(names.MESSAGES_PRODUCED) == 0
    offsets = committed(kafka.admin, topics["consumer_group"], topics["source_topic"])
    assert all(offset < 0 for offset in offsets.values()), offsets  # nothing committed while the sink is down
    assert worker.get("/api/live")[0] == 200  # backing off is not being wedged
    volume.mkdir()  # the volume comes back
    deadline = time.monotonic() + 60
    while worker.metric(names.MESSAGES_PRODUCED) < len(messages) and time.monotonic() < deadline:
        time.sleep(0.2)
    lines = [json.loads(line) for line in sink_file.read_text().splitlines()]
    assert sorted(line["key"] for line in lines) == sorted(key.decode() for key in angles)
    assert all(line["results"]["angle"] == angles[line["key"].encode()] for line in lines)
    assert sum(committed(kafka.admin, topics["consumer_group"], topics["source_topic"]).values()) == len(messages)


def test_probes_and_metrics_mean_what_the_servers_do(kafka, topics, start_worker):
    worker = start_worker(topics)
    status, body = worker.get("/api/ping")
    assert status == 200 and json.loads(body)["results"] == {"ready": True, "instances": 1}
    assert worker.get("/api/live") == (200, json.dumps({"results": {"alive": True}, "msg": "ok"}))
    assert worker.get("/api/text-direction")[0] == 404  # a worker takes no requests
    text = worker.get("/metrics")[1]
    for name in (names.INSTANCE_READY, names.BATCH_SIZE, names.INFERENCE_SECONDS, names.MESSAGES_CONSUMED,
                 names.MESSAGES_PRODUCED, names.MESSAGES_DEAD_LETTERED, names.CONSUMER_LAG):
        assert f"# TYPE {name} " in text, name
    assert worker.metric(names.INSTANCE_READY) == 1
    worker.program.signal(signal.SIGTERM)
    answers, deadline = [], time.monotonic() + 30
    while time.monotonic() < deadline:  # ping turns 503 once the signal is handled, then the worker is gone
        try:
            answers.append(worker.get("/api/ping")[0])
        except (urllib.error.URLError, ConnectionError):  # refused, or reset as the worker exits: gone
            answers.append(None)
            break
        time.sleep(0.05)
    assert answers[-1] is None, answers
    turned = next(index for index, status in enumerate(answers) if status != 200)
    assert set(answers[turned:]) <= {503, None}, answers  # once draining, never ready again
    assert worker.program.process.wait(30) == 0
