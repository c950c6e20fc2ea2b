"""An offline grey's smoke (it has no route): its workers ready on this pipeline's build, its consumer group moving.

Grey reads its own stream (`<team>.grey.<source>`, which the team feeds; kafka_access), and no test
message is sent: what grey does with its stream is watched instead. The stage's pods, found by the Deployment's selector with $KUBECONFIG (the preview
account may list them), must all be ready, each running the pipeline's image digest (its spec
and, where the kubelet reports it, the image it really runs). Then the group's committed offsets
on the source topic, read from the brokers of the namespace's ConfigMap podserve-kafka as the
namespace's own principal (the Secret podserve-kafka-credentials, which CI's account may read;
never joining the group: nothing is taken from the workers), must be caught up with the topic
(no lag) or move forward within --attempts x --every seconds.
"""

from __future__ import annotations

import argparse
import sys
import time

import base64

from podserve import kafka_access
from podserve.tooling.deploy.kube import CONFIGMAPS, PODS, Kind, Kube
from podserve.tooling.deploy.target import label_selector
from podserve.tooling.offline_manifests import KAFKA_CONFIGMAP, KAFKA_PROTOCOL_KEY
from podserve.tooling.smoke import EXIT_FAILED, EXIT_OK, SmokeError, other_build

SECRETS = Kind("v1", "secrets")
#: librdkafka's offset for a partition the group never committed.
NO_OFFSET = -1001


def check(args: argparse.Namespace, docs: dict[str, dict], expected: str | None) -> int:
    """Return EXIT_OK when the stage's workers are ready (on `expected`) and their consumer group makes progress."""
    deployment, scaled = docs["Deployment"], docs["ScaledObject"]
    namespace = deployment["metadata"]["namespace"]
    trigger = next((t.get("metadata") or {} for t in scaled["spec"].get("triggers") or [] if t.get("type") == "kafka"),
                   None)
    if not trigger or not trigger.get("topic") or not trigger.get("consumerGroup"):
        raise SmokeError(f"{args.manifests / args.stage}: the ScaledObject has no kafka trigger naming its topic and "
                         "consumer group; render the stage again")
    kube = Kube.from_environment()
    selector = label_selector(deployment["spec"]["selector"]["matchLabels"])
    for attempt in range(1, args.attempts + 1):
        ready, waiting, others = pods_seen(kube, namespace, selector, expected)
        if others:
            print(f"Error: {other_build(args.stage, others[0], expected or '')}", file=sys.stderr)
            return EXIT_FAILED
        if ready and not waiting:
            print(f"smoke: {len(ready)} worker pod(s) of {args.stage} ready in {namespace}"
                  + (f", each on {expected}" if expected else "") + f": {', '.join(ready)}", flush=True)
            break
        print(f"smoke: try {attempt}/{args.attempts}: {len(ready)} ready, waiting for "
              f"{', '.join(waiting) or 'a pod to appear'}", flush=True)
        if attempt == args.attempts:
            print(f"Error: {args.stage}'s workers never all became ready in {namespace}: see `python -m "
                  f"podserve.tooling.deploy status --stage {args.stage}`", file=sys.stderr)
            return EXIT_FAILED
        time.sleep(args.every)
    return progress(args, connection(kube, namespace), trigger["topic"], trigger["consumerGroup"])


def pods_seen(kube: Kube, namespace: str, selector: str, expected: str | None) -> tuple[list[str], list[str], list[str]]:
    """Return (ready pods, pods not ready yet, digests of pods running another build than `expected`)."""
    ready, waiting, others = [], [], []
    for pod in kube.list(PODS, namespace, selector).get("items") or []:
        if pod["metadata"].get("deletionTimestamp"):
            continue
        name = pod["metadata"]["name"]
        digests = {digest_of(c.get("image", "")) for c in pod["spec"]["containers"] if c.get("name") == "server"}
        digests |= {digest_of(s.get("imageID", "")) for s in (pod.get("status") or {}).get("containerStatuses") or []
                    if s.get("name") == "server" and "@sha256:" in s.get("imageID", "")}
        if expected and digests - {expected}:
            others.append(sorted(digests - {expected})[0] or "(a tag, no digest)")
        conditions = (pod.get("status") or {}).get("conditions") or []
        is_ready = any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)
        (ready if is_ready else waiting).append(name)
    return ready, waiting, others


def digest_of(image: str) -> str:
    """Return the sha256 digest an image reference names ('' for a tag)."""
    return image.rsplit("@", 1)[1] if "@sha256:" in image else ""


def connection(kube: Kube, namespace: str) -> dict[str, str]:
    """Return how the namespace's workers reach the brokers: the platform chart's ConfigMap podserve-kafka (brokers,
    protocol) and the platform's Secret podserve-kafka-credentials (the namespace's principal)."""
    found = (kube.get(CONFIGMAPS, namespace, KAFKA_CONFIGMAP["name"]) or {}).get("data") or {}
    if not found.get(KAFKA_CONFIGMAP["key"]):
        raise SmokeError(f"the ConfigMap {namespace}/{KAFKA_CONFIGMAP['name']} (key {KAFKA_CONFIGMAP['key']}) is "
                         "missing: the platform chart puts the region's brokers there; ask the platform team")
    secret = (kube.get(SECRETS, namespace, kafka_access.CREDENTIALS_SECRET) or {}).get("data") or {}
    if not secret.get(kafka_access.USERNAME_KEY):
        raise SmokeError(f"the Secret {namespace}/{kafka_access.CREDENTIALS_SECRET} is missing: the platform writes the "
                         "namespace's Kafka principal there (python -m podserve.tooling.kafka_acls apply); ask the "
                         "platform team")
    plain = {key: base64.b64decode(value).decode() for key, value in secret.items()}
    return kafka_access.client_config({
        kafka_access.BOOTSTRAP_ENV: found[KAFKA_CONFIGMAP["key"]],
        kafka_access.SECURITY_PROTOCOL_ENV: found.get(KAFKA_PROTOCOL_KEY, ""),
        kafka_access.USERNAME_ENV: plain[kafka_access.USERNAME_KEY],
        kafka_access.PASSWORD_ENV: plain.get(kafka_access.PASSWORD_KEY, "")})


def offsets(client: dict[str, str], topic: str, group: str, timeout: float) -> dict[int, tuple[int, int, int]]:
    """Return {partition: (committed or NO_OFFSET, low, high)} of `group` on `topic`, without joining the group."""
    from confluent_kafka import Consumer, KafkaException, TopicPartition

    bootstrap = client["bootstrap.servers"]
    consumer = Consumer({**client, "group.id": group, "enable.auto.commit": False,
                         "socket.timeout.ms": int(timeout * 1000)})
    try:
        metadata = consumer.list_topics(topic, timeout=timeout).topics.get(topic)
        if metadata is None or metadata.error is not None or not metadata.partitions:
            raise SmokeError(f"the source topic {topic} is not on the brokers {bootstrap}: the workers create it at "
                             "their start; see their logs")
        partitions = [TopicPartition(topic, p) for p in sorted(metadata.partitions)]
        committed = {tp.partition: tp.offset for tp in consumer.committed(partitions, timeout=timeout)}
        found = {}
        for tp in partitions:
            low, high = consumer.get_watermark_offsets(tp, timeout=timeout, cached=False)
            found[tp.partition] = (committed.get(tp.partition, NO_OFFSET), low, high)
        return found
    except KafkaException as exc:
        name = exc.args[0].name()
        if kafka_access.is_refusal(name):
            what = ("consumer group", group) if name == "GROUP_AUTHORIZATION_FAILED" else ("topic", topic)
            raise SmokeError(kafka_access.refusal(*what, kafka_access.user_of(client), name)) from None
        raise SmokeError(f"the brokers {bootstrap} did not answer for {topic} ({exc}); check the ConfigMap "
                         f"{KAFKA_CONFIGMAP['name']} and the brokers") from None
    finally:
        consumer.close()


def lag(seen: dict[int, tuple[int, int, int]]) -> int:
    """Messages the group has yet to commit (a partition it never committed: from the topic's start)."""
    return sum(high - (committed if committed >= 0 else low) for committed, low, high in seen.values())


def progress(args: argparse.Namespace, client: dict[str, str], topic: str, group: str) -> int:
    """Pass when the group is caught up with the topic or its commits move within the attempts."""
    first = offsets(client, topic, group, args.timeout)
    for attempt in range(1, args.attempts + 1):
        now = first if attempt == 1 else offsets(client, topic, group, args.timeout)
        moved = {p: (first[p][0], now[p][0]) for p in now if p in first and now[p][0] > first[p][0]}
        if lag(now) == 0 or moved:
            how = ("caught up with the topic (no lag)" if not moved else "committing: " + ", ".join(
                f"partition {p} {max(a, 0)} -> {b}" for p, (a, b) in sorted(moved.items())) + f" (lag {lag(now)})")
            print(f"smoke: {args.stage}'s consumer group {group} on {topic}: {how}")
            return EXIT_OK
        print(f"smoke: try {attempt}/{args.attempts}: consumer group {group} on {topic}: lag {lag(now)}, nothing "
              "committed since the first look", flush=True)
        if attempt < args.attempts:
            time.sleep(args.every)
    print(f"Error: {args.stage}'s consumer group {group} committed nothing on {topic} in "
          f"{(args.attempts - 1) * args.every:.0f} s with {lag(first)} message(s) to read: the workers are ready but "
          f"do not consume; see their logs (`python -m podserve.tooling.deploy status --stage {args.stage}`)",
          file=sys.stderr)
    return EXIT_FAILED
