"""Who may do what on the platform's Kafka: each team's principals, the prefixes they own, and how a client connects.

Every team has two principals on the brokers, each a SASL/SCRAM user whose password only the
cluster holds (the Secret `podserve-kafka-credentials` the platform writes into the team's
namespaces; `python -m podserve.tooling.kafka_acls`):

- `<team>` (production's workers, in the team's production namespaces): reads, writes and
  creates topics `<team>.*`, joins and commits consumer groups `<team>.*`;
- `<team>-grey` (grey's workers, in the team's grey namespace, deployed from any branch): reads,
  writes, creates and joins only `<team>.grey.*`: grey's own stream, which the team feeds. Not
  production's: every branch's CI job holds the preview credential, which reads this principal's
  Secret (the offline smoke) and can start a pod that mounts it, so whatever grey's principal may
  read, any branch's code may. Production's data stays with production's principal.

The brokers authorise each request with KRaft's StandardAuthorizer against these prefixed ACLs
(`allow.everyone.if.no.acl.found=false`): a principal may do nothing else, to any other team's
topics or groups. Imports nothing heavy: the runtime, CI's tooling and the testbed share it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Mapping

#: Separates a team from the rest of a topic or group name: team names hold no dots, so no team's prefix starts
#: another's.
SEPARATOR = "."
#: What grey's own topics and groups carry after the team's prefix (`like.grey.text-directions`).
GREY_PART = "grey."
#: The suffix of grey's principal (`like-grey`); conf refuses a team name that ends with it (it would be another team's
#: grey principal).
GREY_USER_SUFFIX = "-grey"
#: The SASL mechanism every team principal authenticates with.
SASL_MECHANISM = "SCRAM-SHA-512"

#: The Secret (in each team namespace where workers run) and its keys: written by the platform, never by CI.
CREDENTIALS_SECRET = "podserve-kafka-credentials"
USERNAME_KEY = "username"
PASSWORD_KEY = "password"

#: The environment a Kafka client of the platform reads (the worker, the smoke, the testbed's tools).
BOOTSTRAP_ENV = "PODSERVE_KAFKA_BOOTSTRAP"
USERNAME_ENV = "PODSERVE_KAFKA_USERNAME"
PASSWORD_ENV = "PODSERVE_KAFKA_PASSWORD"
SECURITY_PROTOCOL_ENV = "PODSERVE_KAFKA_SECURITY_PROTOCOL"
#: What a client speaks when its environment names no protocol: SASL over TLS where credentials are given.
DEFAULT_SECURE_PROTOCOL = "SASL_SSL"

#: Where `make kafka` (the local broker) writes each principal's environment, <user>.env, for `make serve` and the
#: topics tool to use when the caller's environment names no user (PODSERVE_KAFKA_LOCAL_CREDENTIALS moves it).
LOCAL_CREDENTIALS_ENV = "PODSERVE_KAFKA_LOCAL_CREDENTIALS"
LOCAL_CREDENTIALS_DIR = "build/kafka"

#: Kafka's error names that mean "this principal may not" (retrying changes nothing).
REFUSALS = ("TOPIC_AUTHORIZATION_FAILED", "GROUP_AUTHORIZATION_FAILED", "CLUSTER_AUTHORIZATION_FAILED",
            "TRANSACTIONAL_ID_AUTHORIZATION_FAILED", "SASL_AUTHENTICATION_FAILED", "_AUTHENTICATION")


def team_prefix(team: str) -> str:
    """The prefix of every topic and consumer group of `team` ("like.")."""
    return team + SEPARATOR


def grey_prefix(team: str) -> str:
    """The prefix of the topics grey writes and the groups grey joins ("like.grey.")."""
    return team_prefix(team) + GREY_PART


def grey_name(name: str, team: str) -> str:
    """Grey's own name for one of production's topics (source, sink, dead letters) or its consumer group of `team`:
    `like.text-directions` -> `like.grey.text-directions`."""
    prefix = team_prefix(team)
    if not name.startswith(prefix):
        raise ValueError(f"{name!r} does not start with {prefix!r}")
    return grey_prefix(team) + name[len(prefix):]


def username(team: str, grey: bool = False) -> str:
    """The SCRAM user of a team's production workers, or of its grey workers."""
    return team + GREY_USER_SUFFIX if grey else team


def principal(user: str) -> str:
    return f"User:{user}"


def owner(user: str) -> tuple[str, bool]:
    """(team, grey) of a team principal's user name."""
    return (user[:-len(GREY_USER_SUFFIX)], True) if user.endswith(GREY_USER_SUFFIX) else (user, False)


@dataclass(frozen=True)
class Grant:
    """What one principal may do to every topic or consumer group whose name starts with `prefix`."""

    resource: str  # "topic" or "group"
    prefix: str
    operations: tuple[str, ...]  # Kafka's ACL operation names: READ, WRITE, CREATE, DESCRIBE, DESCRIBE_CONFIGS


#: A worker's topics: read (fetch, commit), write (produce, idempotent), create the missing ones (with their
#: max.message.bytes), and see them (metadata, offsets, configs).
_OWN_TOPICS = ("READ", "WRITE", "CREATE", "DESCRIBE", "DESCRIBE_CONFIGS")
#: A consumer group: join, sync, heartbeat and commit (READ), find its coordinator and offsets (DESCRIBE).
_OWN_GROUPS = ("READ", "DESCRIBE")


def grants(team: str, grey: bool = False) -> list[Grant]:
    """Everything the brokers allow a team's production (or grey) principal: nothing else is allowed."""
    if not grey:
        return [Grant("topic", team_prefix(team), _OWN_TOPICS), Grant("group", team_prefix(team), _OWN_GROUPS)]
    return [Grant("topic", grey_prefix(team), _OWN_TOPICS), Grant("group", grey_prefix(team), _OWN_GROUPS)]


def grants_said(user: str) -> str:
    """What the platform grants `user`, in words (the end of every refusal)."""
    team, grey = owner(user)
    if grey:
        return (f"the platform grants grey of team {team!r} only its own stream: topics '{grey_prefix(team)}*' and "
                f"consumer groups '{grey_prefix(team)}*' (never production's topics: grey runs any branch's code)")
    return f"the platform grants team {team!r} only topics '{team_prefix(team)}*' and consumer groups " \
           f"'{team_prefix(team)}*'"


def refusal(what: str, name: str, user: str, error: str) -> str:
    """The message for a refused request: "Kafka refused topic 'like.x' to principal 'User:imo':
    TOPIC_AUTHORIZATION_FAILED; the platform grants team 'imo' only topics 'imo.*' ..."."""
    if not user:
        return (f"Kafka refused {what} {name!r}: {error}; this client sent no credentials ({USERNAME_ENV} is not set), "
                f"and the platform's brokers serve only a team's principal (Secret {CREDENTIALS_SECRET})")
    if error in ("SASL_AUTHENTICATION_FAILED", "_AUTHENTICATION"):
        return (f"Kafka refused principal {principal(user)!r}: {error} (wrong user name or password); the worker reads "
                f"them from the Secret {CREDENTIALS_SECRET} the platform writes into the namespace: ask the platform "
                f"team to write it again (python -m podserve.tooling.kafka_acls)")
    return f"Kafka refused {what} {name!r} to principal {principal(user)!r}: {error}; {grants_said(user)}"


def is_refusal(error_name: str) -> bool:
    return error_name in REFUSALS


class KafkaRefused(RuntimeError):
    """The brokers refused this principal a topic or group (or refused the principal): a restart changes nothing."""


def client_config(environ: Mapping[str, str] | None = None, bootstrap: str | None = None) -> dict[str, str]:
    """librdkafka's connection settings from the platform's environment: the brokers and, where a user is given, SASL
    with SCRAM over the protocol the environment names (TLS by default)."""
    environ = os.environ if environ is None else environ
    config = {"bootstrap.servers": bootstrap or environ.get(BOOTSTRAP_ENV, "")}
    user = environ.get(USERNAME_ENV, "")
    if user:
        config.update({"security.protocol": environ.get(SECURITY_PROTOCOL_ENV) or DEFAULT_SECURE_PROTOCOL,
                       "sasl.mechanism": SASL_MECHANISM, "sasl.username": user,
                       "sasl.password": environ.get(PASSWORD_ENV, "")})
    elif environ.get(SECURITY_PROTOCOL_ENV):
        config["security.protocol"] = environ[SECURITY_PROTOCOL_ENV]
    return config


def local_credentials(user: str, environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment `make kafka` wrote for `user` (empty when there is none): only for a local broker."""
    environ = os.environ if environ is None else environ
    path = os.path.join(environ.get(LOCAL_CREDENTIALS_ENV) or LOCAL_CREDENTIALS_DIR, f"{user}.env")
    if not os.path.isfile(path):
        return {}
    with open(path, encoding="utf-8") as file:
        return dict(line.strip().split("=", 1) for line in file if "=" in line)


def with_local_credentials(user: str, environ: Mapping[str, str]) -> dict[str, str]:
    """`environ`, and where it names no user, `make kafka`'s credentials of `user` (a local run's convenience)."""
    if environ.get(USERNAME_ENV):
        return dict(environ)
    return {**environ, **local_credentials(user, environ)}


def user_of(config: Mapping[str, str]) -> str:
    """The SASL user of a client configuration ("" for none)."""
    return config.get("sasl.username", "")
