"""The platform's Kafka access for a region, from conf/: every team's SCRAM users, their prefixed ACLs, their Secrets.

    python -m podserve.tooling.kafka_acls show                       # the ACLs of every team (kafka-acls.sh terms)
    python -m podserve.tooling.kafka_acls apply --region hk [--rotate]

The team list is conf/teams.yaml's, nothing else: adding a team there and running `apply` in
each region gives it its principals; the grants are podserve.kafka_access's. `apply` is the
platform team's (never CI's): with the brokers' admin credential in its environment
(PODSERVE_KAFKA_BOOTSTRAP, PODSERVE_KAFKA_USERNAME, PODSERVE_KAFKA_PASSWORD,
PODSERVE_KAFKA_SECURITY_PROTOCOL) and $KUBECONFIG for the region's cluster, for each team and
each namespace where its offline workers run (production's and grey's), it
1. keeps the password of the namespace's Secret podserve-kafka-credentials, or makes one
   (a new one for all with --rotate), and writes the Secret and the TriggerAuthentication
   podserve-kafka through which KEDA's kafka trigger reads the same principal,
2. sets that SCRAM-SHA-512 credential on the brokers,
3. creates the ACLs conf asks for and deletes any other ACL of a team principal;
and exits 0, or 1 naming what the brokers or the cluster refused. Run it again at will: it
changes only what differs. Passwords are printed nowhere.
"""

from __future__ import annotations

import argparse
import secrets
import sys
from dataclasses import dataclass

from podserve import kafka_access
from podserve.tooling.conf import Conf, load_conf

#: Work factor of each SCRAM credential (Kafka's minimum is 4096).
SCRAM_ITERATIONS = 8192
#: The stages whose namespaces run offline workers (and so hold a Secret): production's and grey's, never ab's.
OFFLINE_TRACKS = ("stable", "grey")


@dataclass(frozen=True)
class Binding:
    """One ACL: ALLOW `operation` on every `resource` whose name starts with `prefix`, to `principal`, from any host."""

    principal: str
    resource: str
    prefix: str
    operation: str

    def said(self) -> str:
        flag = "--topic" if self.resource == "topic" else "--group"
        return (f"kafka-acls.sh --add --allow-principal {self.principal} --operation {self.operation} "
                f"--resource-pattern-type prefixed {flag} {self.prefix}")


def users(conf: Conf) -> list[str]:
    """Every team principal's user of conf's teams: production's and grey's."""
    return [kafka_access.username(team, grey) for team in conf.teams for grey in (False, True)]


def bindings(conf: Conf) -> list[Binding]:
    """Every ACL the brokers hold for conf's teams, and nothing else for them."""
    return [Binding(kafka_access.principal(kafka_access.username(team, grey)), grant.resource, grant.prefix, operation)
            for team in conf.teams for grey in (False, True) for grant in kafka_access.grants(team, grey)
            for operation in grant.operations]


def _acl(binding: Binding):
    from confluent_kafka.admin import AclBinding, AclOperation, AclPermissionType, ResourcePatternType, ResourceType

    return AclBinding(ResourceType[binding.resource.upper()], binding.prefix, ResourcePatternType.PREFIXED,
                      binding.principal, "*", AclOperation[binding.operation], AclPermissionType.ALLOW)


def _binding(acl) -> Binding | None:
    """Our Binding for a described ACL that could be one of ours (an ALLOW on a prefix from any host), else None."""
    if acl.permission_type.name != "ALLOW" or acl.resource_pattern_type.name != "PREFIXED" or acl.host != "*":
        return None
    if acl.restype.name not in ("TOPIC", "GROUP"):
        return None
    return Binding(acl.principal, acl.restype.name.lower(), acl.name, acl.operation.name)


def sync_acls(admin, conf: Conf, timeout: float = 30.0) -> tuple[list[Binding], list[object]]:
    """Make the brokers' ACLs of team principals exactly `bindings(conf)`; return (created, deleted)."""
    from confluent_kafka.admin import AclBindingFilter, AclOperation, AclPermissionType, ResourcePatternType, \
        ResourceType

    managed = {kafka_access.principal(user) for user in users(conf)}
    everything = AclBindingFilter(ResourceType.ANY, None, ResourcePatternType.ANY, None, None, AclOperation.ANY,
                                  AclPermissionType.ANY)
    existing = admin.describe_acls(everything, request_timeout=timeout).result()
    wanted = set(bindings(conf))
    have = {_binding(acl) for acl in existing if acl.principal in managed}
    stale = [acl for acl in existing if acl.principal in managed and _binding(acl) not in wanted]
    missing = sorted(wanted - have, key=lambda b: (b.principal, b.resource, b.prefix, b.operation))
    if missing:
        for future in admin.create_acls([_acl(b) for b in missing], request_timeout=timeout).values():
            future.result()
    if stale:
        filters = [AclBindingFilter(acl.restype, acl.name, acl.resource_pattern_type, acl.principal, acl.host,
                                    acl.operation, acl.permission_type) for acl in stale]
        for future in admin.delete_acls(filters, request_timeout=timeout).values():
            future.result()
    return missing, stale


def set_password(admin, user: str, password: str, timeout: float = 30.0) -> None:
    """Set `user`'s SCRAM-SHA-512 credential on the brokers (creating the user)."""
    from confluent_kafka.admin import ScramCredentialInfo, ScramMechanism, UserScramCredentialUpsertion

    info = ScramCredentialInfo(ScramMechanism.SCRAM_SHA_512, SCRAM_ITERATIONS)
    upsert = UserScramCredentialUpsertion(user, info, password.encode())
    for future in admin.alter_user_scram_credentials([upsert], request_timeout=timeout).values():
        future.result()


def new_password() -> str:
    return secrets.token_urlsafe(32)


MANAGED_BY = {"app.kubernetes.io/managed-by": "podserve-kafka-acls"}
#: KEDA's kafka scaler's parameters, each read from a key of the Secret (TriggerAuthentication secretTargetRef).
KEDA_PARAMETERS = {"username": kafka_access.USERNAME_KEY, "password": kafka_access.PASSWORD_KEY, "sasl": "sasl",
                   "tls": "tls"}


def secret(namespace: str, user: str, password: str, protocol: str = kafka_access.DEFAULT_SECURE_PROTOCOL) -> dict:
    """The Secret a team namespace's workers (and KEDA, and the smoke) read their principal from."""
    return {"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
            "metadata": {"name": kafka_access.CREDENTIALS_SECRET, "namespace": namespace, "labels": MANAGED_BY},
            "stringData": {kafka_access.USERNAME_KEY: user, kafka_access.PASSWORD_KEY: password,
                           "sasl": "scram_sha512", "tls": "enable" if protocol.endswith("SSL") else "disable"}}


def trigger_authentication(namespace: str) -> dict:
    """KEDA's way to the namespace's principal: the ScaledObject's kafka trigger names it (offline_manifests)."""
    from podserve.tooling.offline_manifests import KAFKA_TRIGGER_AUTHENTICATION

    return {"apiVersion": "keda.sh/v1alpha1", "kind": "TriggerAuthentication",
            "metadata": {"name": KAFKA_TRIGGER_AUTHENTICATION, "namespace": namespace, "labels": MANAGED_BY},
            "spec": {"secretTargetRef": [{"parameter": parameter, "name": kafka_access.CREDENTIALS_SECRET, "key": key}
                                         for parameter, key in KEDA_PARAMETERS.items()]}}


def worker_namespaces(conf: Conf, region: str) -> dict[str, str]:
    """{namespace: user} of every namespace of `region` where a team's offline workers run."""
    found = {}
    for stage in conf.stages.values():
        if stage.region == region and stage.track in OFFLINE_TRACKS:
            for team in conf.teams:
                found[stage.namespace_for(team)] = kafka_access.username(team, grey=stage.track == "grey")
    return found


def apply(admin, kube, conf: Conf, region: str, rotate: bool = False, out=sys.stdout) -> None:
    """Passwords (kept or made), Secrets, SCRAM credentials and ACLs of every team of `region`."""
    import base64

    from podserve.tooling.deploy.kube import Kind

    secrets_kind, triggers_kind = Kind("v1", "secrets"), Kind("keda.sh/v1alpha1", "triggerauthentications")

    def server_side_apply(kind: Kind, doc: dict) -> None:
        kube.request("PATCH", kind.path(doc["metadata"]["namespace"], doc["metadata"]["name"]),
                     {"fieldManager": "podserve-kafka-acls", "fieldValidation": "Strict", "force": True}, doc,
                     "application/apply-patch+yaml")

    passwords: dict[str, str] = {}
    namespaces = worker_namespaces(conf, region)
    for namespace, user in namespaces.items():
        found = None if rotate else kube.get(secrets_kind, namespace, kafka_access.CREDENTIALS_SECRET)
        data = (found or {}).get("data") or {}
        if data.get(kafka_access.PASSWORD_KEY) and user not in passwords:
            passwords[user] = base64.b64decode(data[kafka_access.PASSWORD_KEY]).decode()
    protocol = conf.regions[region].kafka_security_protocol
    for namespace, user in namespaces.items():
        password = passwords.setdefault(user, new_password())
        server_side_apply(secrets_kind, secret(namespace, user, password, protocol))
        server_side_apply(triggers_kind, trigger_authentication(namespace))
    for user, password in sorted(passwords.items()):
        set_password(admin, user, password)
    created, deleted = sync_acls(admin, conf)
    print(f"{region}: {len(passwords)} principal(s) in {len(namespaces)} namespace(s); ACLs: {len(created)} created, "
          f"{len(deleted)} deleted, {len(bindings(conf))} held", file=out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("show", help="print every team's ACLs as kafka-acls.sh would be told them")
    applying = sub.add_parser("apply", help="users, Secrets and ACLs of a region (the brokers' admin credential "
                                            "and $KUBECONFIG from the environment)")
    applying.add_argument("--region", required=True)
    applying.add_argument("--rotate", action="store_true", help="new passwords for every principal")
    args = parser.parse_args(argv)
    conf = load_conf()
    if args.command == "show":
        for binding in bindings(conf):
            print(binding.said())
        return 0
    if args.region not in conf.regions:
        print(f"Error: --region {args.region!r} is not in conf/regions.yaml ({', '.join(conf.regions)})", file=sys.stderr)
        return 2
    from confluent_kafka import KafkaException
    from confluent_kafka.admin import AdminClient

    from podserve.tooling.deploy.errors import DeployError
    from podserve.tooling.deploy.kube import Kube

    try:
        apply(AdminClient(kafka_access.client_config()), Kube.from_environment(), conf, args.region, args.rotate)
    except (KafkaException, DeployError) as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
