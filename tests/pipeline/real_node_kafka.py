"""The real node's Kafka: a broker its pods reach, and a region's objects that point a namespace's workers at it.

The broker is Apache Kafka with the platform's access on (SASL/SCRAM, the StandardAuthorizer, every team's ACLs from
conf/teams.yaml: podserve.testbed.kafka), its clients' listener on the node's bridge address. What the platform team
writes for a region's brokers (podserve.tooling.kafka_acls apply) the test writes the same way: each namespace's
ConfigMap podserve-kafka names the broker, its Secret podserve-kafka-credentials holds the namespace's principal, and
its TriggerAuthentication podserve-kafka lets KEDA's kafka trigger read the same principal.
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from podserve.testbed.cluster import node as real
from podserve.testbed.kafka import CLIENT_PROTOCOL, KafkaBroker, install_dir, installed
from podserve.tooling import kafka_acls
from podserve.tooling.deploy.kube import CONFIGMAPS, Kind, Kube
from podserve.tooling.offline_manifests import KAFKA_CONFIGMAP, KAFKA_PROTOCOL_KEY, KAFKA_TRIGGER_AUTHENTICATION
from podserve import kafka_access

SECRETS = Kind("v1", "secrets")
TRIGGER_AUTHENTICATIONS = Kind("keda.sh/v1alpha1", "triggerauthentications")


def start_node_broker(tools: Path, work: Path) -> KafkaBroker:
    """A broker the real node's pods reach (its clients' listener on the node's bridge address), every team's
    principals and ACLs set; stop() it at the end."""
    assert installed(tools), f"Kafka is not installed in {install_dir(tools)}: run `make kafka-install`"
    started = KafkaBroker(tools, work, host=real.NODE_IP).start()
    try:
        started.team_access()
    except BaseException:
        started.stop()
        raise
    return started


@contextmanager
def region_brokers(plane, users: dict[str, str], broker: KafkaBroker) -> Iterator[None]:
    """As the platform team: point each namespace's podserve-kafka at `broker`, write its Secret with the principal of
    `users` ({namespace: user}) and its TriggerAuthentication; at the end put the ConfigMaps back and delete the
    rest."""
    admin = Kube(plane.api_client())
    before: dict[str, dict] = {}
    try:
        for namespace, user in users.items():
            before[namespace] = admin.get(CONFIGMAPS, namespace, KAFKA_CONFIGMAP["name"])["data"]
            pointed = {KAFKA_CONFIGMAP["key"]: broker.bootstrap, KAFKA_PROTOCOL_KEY: CLIENT_PROTOCOL}
            admin.request("PATCH", CONFIGMAPS.path(namespace, KAFKA_CONFIGMAP["name"]), body={"data": pointed},
                          content_type="application/merge-patch+json")
            admin.request("POST", SECRETS.path(namespace),
                          body=kafka_acls.secret(namespace, user, broker.passwords[user], CLIENT_PROTOCOL))
            admin.request("POST", TRIGGER_AUTHENTICATIONS.path(namespace),
                          body=kafka_acls.trigger_authentication(namespace))
        yield
    finally:
        for namespace, data in before.items():
            admin.request("PATCH", CONFIGMAPS.path(namespace, KAFKA_CONFIGMAP["name"]),
                          body={"data": data}, content_type="application/merge-patch+json")
            admin.delete(SECRETS, namespace, kafka_access.CREDENTIALS_SECRET)
            admin.delete(TRIGGER_AUTHENTICATIONS, namespace, KAFKA_TRIGGER_AUTHENTICATION)
