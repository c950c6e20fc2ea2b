"""The settings of an offline (Kafka) worker: names, defaults, and their environment variables.

An offline service runs the same handler, instances and batcher as the HTTP server
(`ServingSettings` still carries batch size, delay, queue, threads and the HTTP port, which
serves only the probes and /metrics here); these are the settings only the worker has. The
tooling turns value.py into them (`to_env`), the worker reads them back once (`from_env`).
The Kafka bootstrap servers are never in the repo: PODSERVE_KAFKA_BOOTSTRAP comes from the
pod's environment (the cluster's ConfigMap) or the caller's shell. Imports nothing heavy,
so that CI's tooling can use it.
"""

from __future__ import annotations

import dataclasses
import os
import re
from dataclasses import dataclass
from typing import Mapping

from podserve import kafka_access
from podserve.settings import ServingSettings, SettingsError

#: The value of value.py's `mode` (and PODSERVE_MODE) that runs the worker.
OFFLINE = "offline"
ONLINE = "online"
MODES = (ONLINE, OFFLINE)
#: The environment variable with the Kafka bootstrap servers ("host:port,host:port").
BOOTSTRAP_ENV = kafka_access.BOOTSTRAP_ENV
#: The longest topic name Kafka accepts (and the longest consumer group we do).
MAX_NAME = 249
#: Kafka's rule for topic names (and the one we apply to consumer groups); use it with fullmatch.
TOPIC_NAME = re.compile(rf"[A-Za-z0-9._-]{{1,{MAX_NAME}}}")
#: Where `make kafka` runs its broker, and so where a local `make serve` of an offline service looks by default.
LOCAL_KAFKA_PORT = 9092
LOCAL_KAFKA_BOOTSTRAP = f"127.0.0.1:{LOCAL_KAFKA_PORT}"
#: Consumer lag per replica that KEDA aims at when value.py sets no `lag_target`.
DEFAULT_LAG_TARGET = 1000


@dataclass(frozen=True)
class OfflineSettings:
    """What the worker reads, writes and where it commits; one of sink_topic or sink_file is set."""

    source_topic: str = ""
    consumer_group: str = ""
    sink_topic: str = ""
    sink_file: str = ""
    dead_letter_topic: str = ""
    kafka_bootstrap: str = ""
    #: The principal the worker authenticates as, from the namespace's Secret podserve-kafka-credentials (never the
    #: repo), and the protocol from the ConfigMap podserve-kafka; like the brokers, never among to_env().
    kafka_username: str = ""
    kafka_password: str = ""
    kafka_security_protocol: str = ""
    sink_retry_max_seconds: float = 30.0

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> "OfflineSettings":
        """Read the settings from PODSERVE_* variables; raise SettingsError naming the first one missing."""
        environ = os.environ if environ is None else environ
        values = {}
        for f in dataclasses.fields(cls):
            raw = environ.get(ServingSettings.env_name(f.name), "")
            if raw:
                values[f.name] = float(raw) if f.type in (float, "float") else raw
        settings = cls(**values)
        settings.check()
        return settings

    def to_env(self) -> dict[str, str]:
        """The PODSERVE_* variables that reproduce these settings (the brokers and credentials never among them)."""
        return {ServingSettings.env_name(f.name): str(getattr(self, f.name)) for f in dataclasses.fields(self)
                if not f.name.startswith("kafka_") and getattr(self, f.name) not in ("", None)}

    def client_config(self) -> dict[str, str]:
        """librdkafka's connection settings: the brokers and, with a user, SASL/SCRAM (podserve.kafka_access)."""
        return kafka_access.client_config({
            BOOTSTRAP_ENV: self.kafka_bootstrap, kafka_access.USERNAME_ENV: self.kafka_username,
            kafka_access.PASSWORD_ENV: self.kafka_password,
            kafka_access.SECURITY_PROTOCOL_ENV: self.kafka_security_protocol})

    def check(self) -> None:
        if not self.kafka_bootstrap:
            raise SettingsError(f"{BOOTSTRAP_ENV} is not set; set it to the Kafka bootstrap servers, e.g. "
                                f"{BOOTSTRAP_ENV}=127.0.0.1:9092 (make kafka runs a broker there)")
        named = ("source_topic", "consumer_group", "dead_letter_topic") + (("sink_topic",) if self.sink_topic else ())
        for name in named:
            if not TOPIC_NAME.fullmatch(getattr(self, name)):
                raise SettingsError(f"{ServingSettings.env_name(name)}={getattr(self, name)!r} must be a Kafka name: "
                                    f"1 to {MAX_NAME} of A-Z a-z 0-9 . _ -")
        if bool(self.sink_topic) == bool(self.sink_file):
            raise SettingsError(f"set exactly one of {ServingSettings.env_name('sink_topic')} and "
                                f"{ServingSettings.env_name('sink_file')}")
