"""A real single-node Kafka broker (KRaft: broker and controller in one JVM) on loopback.

    python -m podserve.testbed.kafka install [.tools]   # resolve the pinned jars with Maven (once)
    python -m podserve.testbed.kafka serve [.tools]     # broker on 127.0.0.1:9092 until Ctrl-C (make kafka)

The broker is Apache Kafka itself, `org.apache.kafka:kafka_2.13` from Maven Central at the
version pinned here, resolved with its runtime dependencies by `mvn dependency:copy-dependencies`
into `.tools/kafka-<version>/libs` and reused after that. `KafkaBroker` formats a fresh
storage directory (what `kafka-storage.sh format` does, through the same Java main class)
and runs `kafka.Kafka`; the pytest fixture gives it free ports. Nothing is simulated except
the size of the cluster: one node, replication factor 1. The broker does NOT create topics
on first use (`auto.create.topics.enable=false`, as in production): the offline worker
creates the topics it names when they are missing.

Access is the platform's (podserve.kafka_access): clients authenticate with SASL/SCRAM-SHA-512 and
KRaft's StandardAuthorizer allows each principal only what its ACLs say
(`allow.everyone.if.no.acl.found=false`). The broker's own admin (`admin`, a super user with a
password made per start) sets each team's users and ACLs with the platform's own tool
(`team_access()`: podserve.tooling.kafka_acls). What differs from production: SASL over plain TCP
(loopback, or the real node's bridge), where production's brokers speak SASL_SSL; the controller
and inter-broker listeners authenticate the admin with PLAIN on loopback.
"""

from __future__ import annotations

import base64
import hashlib
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from podserve import kafka_access
from podserve.offline_settings import LOCAL_KAFKA_PORT
from podserve.testbed.machine_cache import shared_cache
from podserve.testbed.processes import Program, StartError, free_port, port_open

KAFKA_VERSION = "4.1.1"
#: Routes the broker's slf4j 1.x logging to the log4j2 jars Kafka already brings.
LOG4J_SLF4J_VERSION = "2.24.3"
#: The port `make kafka` listens on (fixtures take free ports instead).
DEFAULT_PORT = LOCAL_KAFKA_PORT
#: Partitions of a topic created without a count (the worker's topics, in the tests).
DEFAULT_PARTITIONS = 3
START_TIMEOUT_SECONDS = 90.0
JVM_OPTIONS = ("-Xms256m", "-Xmx768m", "-XX:+UseSerialGC", "-Djava.awt.headless=true")

POM = f"""<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>podserve.testbed</groupId>
  <artifactId>kafka-broker</artifactId>
  <version>1</version>
  <packaging>pom</packaging>
  <dependencies>
    <dependency>
      <groupId>org.apache.kafka</groupId><artifactId>kafka_2.13</artifactId><version>{KAFKA_VERSION}</version>
    </dependency>
    <dependency>
      <groupId>org.apache.logging.log4j</groupId><artifactId>log4j-slf4j-impl</artifactId>
      <version>{LOG4J_SLF4J_VERSION}</version>
    </dependency>
  </dependencies>
</project>
"""

LOG4J2 = """status = warn
appender.console.type = Console
appender.console.name = console
appender.console.layout.type = PatternLayout
appender.console.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = warn
rootLogger.appenderRef.console.ref = console
logger.server.name = kafka.server.KafkaRaftServer
logger.server.level = info
"""


class InstallError(RuntimeError):
    """Maven or Java is missing, or Maven could not resolve the broker's jars."""


def install_dir(tools: Path) -> Path:
    return Path(tools) / f"kafka-{KAFKA_VERSION}"


def _stamp(tools: Path) -> Path:
    return install_dir(tools) / ".installed"


def _pom_digest() -> str:
    return hashlib.sha256(POM.encode()).hexdigest()


def installed(tools: Path) -> bool:
    stamp = _stamp(tools)
    return stamp.exists() and stamp.read_text().strip() == _pom_digest()


def install(tools: Path) -> Path:
    """Resolve the pinned broker and its runtime jars into <tools>/kafka-<version>/libs; reuse them if there."""
    target = install_dir(tools)
    if installed(tools):
        return target / "libs"
    for program in ("mvn", "java"):
        if shutil.which(program) is None:
            raise InstallError(f"{program} is not on PATH; install Debian's maven and openjdk-17-jre-headless "
                               f"(the Makefile's kafka-install target does)")
    target.mkdir(parents=True, exist_ok=True)
    (target / "pom.xml").write_text(POM)
    shutil.rmtree(target / "libs", ignore_errors=True)
    command = ["mvn", "-B", "-q", "-f", str(target / "pom.xml"),
               f"-Dmaven.repo.local={shared_cache() / 'maven-repo'}",  # Maven's own cache, shared by checkouts
               "dependency:copy-dependencies", f"-DoutputDirectory={(target / 'libs').resolve()}",
               "-DincludeScope=runtime"]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise InstallError(f"Maven could not resolve org.apache.kafka:kafka_2.13:{KAFKA_VERSION} "
                           f"(exit {result.returncode}):\n{(result.stdout + result.stderr)[-3000:]}")
    _stamp(tools).write_text(_pom_digest() + "\n")
    return target / "libs"


def cluster_id() -> str:
    """A random cluster id in Kafka's format (what `kafka-storage.sh random-uuid` prints): never one starting with
    "-", which Kafka's own Uuid.randomUuid also redraws (1 draw in 64: a command line would read it as an option)."""
    while True:
        found = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not found.startswith("-"):
            return found


#: The largest record the test broker takes (48 MiB): the default video limit's JSON (~43 MiB) and its dead letter.
BROKER_MESSAGE_BYTES = 48 * 1024 * 1024


#: The broker's own super user (SCRAM on the clients' listener, PLAIN between its controller and broker parts).
ADMIN_USER = "admin"
#: What the clients' listener speaks here (production's brokers: SASL_SSL).
CLIENT_PROTOCOL = "SASL_PLAINTEXT"


def server_properties(data_dir: Path, port: int, controller_port: int, internal_port: int, admin_password: str,
                      host: str = "127.0.0.1") -> str:
    """The broker+controller configuration of a one-node cluster: clients (SASL/SCRAM) on `host` (loopback unless the
    real node's pods must reach it: its bridge address), the controller and inter-broker listeners on loopback, every
    request authorised by KRaft's StandardAuthorizer (nothing allowed without an ACL, but to the admin)."""
    plain = (f'org.apache.kafka.common.security.plain.PlainLoginModule required username="{ADMIN_USER}" '
             f'password="{admin_password}" user_{ADMIN_USER}="{admin_password}";')
    return "\n".join([
        "process.roles=broker,controller",
        "node.id=1",
        f"listeners=CLIENTS://{host}:{port},INTERNAL://127.0.0.1:{internal_port},CONTROLLER://127.0.0.1:{controller_port}",
        f"advertised.listeners=CLIENTS://{host}:{port},INTERNAL://127.0.0.1:{internal_port}",
        "controller.listener.names=CONTROLLER",
        "inter.broker.listener.name=INTERNAL",
        f"listener.security.protocol.map=CONTROLLER:SASL_PLAINTEXT,INTERNAL:SASL_PLAINTEXT,CLIENTS:{CLIENT_PROTOCOL}",
        f"listener.name.clients.sasl.enabled.mechanisms={kafka_access.SASL_MECHANISM}",
        f"listener.name.clients.{kafka_access.SASL_MECHANISM.lower()}.sasl.jaas.config="
        "org.apache.kafka.common.security.scram.ScramLoginModule required;",
        "listener.name.internal.sasl.enabled.mechanisms=PLAIN",
        f"listener.name.internal.plain.sasl.jaas.config={plain}",
        "listener.name.controller.sasl.enabled.mechanisms=PLAIN",
        f"listener.name.controller.plain.sasl.jaas.config={plain}",
        "sasl.mechanism.inter.broker.protocol=PLAIN",
        "sasl.mechanism.controller.protocol=PLAIN",
        "authorizer.class.name=org.apache.kafka.metadata.authorizer.StandardAuthorizer",
        f"super.users=User:{ADMIN_USER}",
        "allow.everyone.if.no.acl.found=false",
        f"controller.quorum.voters=1@127.0.0.1:{controller_port}",
        f"log.dirs={data_dir / 'logs'}",
        f"num.partitions={DEFAULT_PARTITIONS}",
        "auto.create.topics.enable=false",
        "offsets.topic.replication.factor=1",
        "offsets.topic.num.partitions=1",
        "transaction.state.log.replication.factor=1",
        "transaction.state.log.min.isr=1",
        "share.coordinator.state.topic.replication.factor=1",
        "share.coordinator.state.topic.min.isr=1",
        "group.initial.rebalance.delay.ms=0",
        "num.network.threads=2",
        "num.io.threads=2",
        # Room for a video message (the offline worker's topics ask for max_video_bytes in base64 JSON; Kafka's
        # default is about 1 MB): production brokers need the same (docs/offline.md).
        f"message.max.bytes={BROKER_MESSAGE_BYTES}",
        f"replica.fetch.max.bytes={BROKER_MESSAGE_BYTES}",
        "",
    ])


class KafkaBroker:
    """One broker process, its clients' listener on `host` (127.0.0.1; the real node's bridge address where its pods
    are clients: never an address outside this machine): `start()` formats storage and waits until clients can use
    it."""

    def __init__(self, tools: Path, data_dir: Path, port: int | None = None, controller_port: int | None = None,
                 host: str = "127.0.0.1"):
        self.host = host
        self.libs = install_dir(tools) / "libs"
        self.data_dir = Path(data_dir)
        self.port = port or free_port()
        self.controller_port = controller_port or free_port()
        self.internal_port = free_port()
        self.admin_password = secrets.token_urlsafe(24)
        #: The team principals' passwords, once team_access() made them: {user: password}.
        self.passwords: dict[str, str] = {}
        self.program: Program | None = None
        self.start_seconds: float | None = None

    @property
    def bootstrap(self) -> str:
        return f"{self.host}:{self.port}"

    def _java(self, main_class: str, *args: str) -> list[str]:
        log4j = f"-Dlog4j2.configurationFile={self.data_dir / 'log4j2.properties'}"
        return ["java", *JVM_OPTIONS, log4j, "-cp", f"{self.libs}/*", main_class, *args]

    def start(self, timeout: float = START_TIMEOUT_SECONDS) -> "KafkaBroker":
        if not self.libs.is_dir():
            raise StartError(f"Kafka {KAFKA_VERSION} is not installed in {self.libs.parent}; run "
                             f"`make kafka-install` (python -m podserve.testbed.kafka install)")
        if port_open(self.port, self.host):
            raise StartError(f"port {self.port} is taken: another broker (or program) listens on {self.bootstrap}")
        started = time.monotonic()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        config = self.data_dir / "server.properties"
        config.write_text(server_properties(self.data_dir, self.port, self.controller_port, self.internal_port,
                                            self.admin_password, self.host))
        config.chmod(0o600)  # it holds the admin's password
        (self.data_dir / "log4j2.properties").write_text(LOG4J2)
        admin = f"{kafka_access.SASL_MECHANISM}=[name={ADMIN_USER},password={self.admin_password}]"
        formatted = subprocess.run(self._java("kafka.tools.StorageTool", "format", f"--cluster-id={cluster_id()}", "-c",
                                              str(config), "--ignore-formatted", "--add-scram", admin),
                                   capture_output=True, text=True, timeout=timeout)
        if formatted.returncode != 0:
            raise StartError(f"kafka-storage format failed (exit {formatted.returncode}):\n"
                             f"{(formatted.stdout + formatted.stderr)[-2000:]}")
        self.program = Program("kafka", self._java("kafka.Kafka", str(config)), self.data_dir / "broker.log")
        try:
            self.program.wait_until(self._answers, timeout, f"a client sees the broker on {self.bootstrap}")
        except StartError:
            self.program.stop()
            raise
        self.start_seconds = time.monotonic() - started
        return self

    def _answers(self) -> bool:
        if not port_open(self.port, self.host):
            return False
        from confluent_kafka.admin import AdminClient  # the client is a test/runtime dependency, not the installer's

        metadata = AdminClient(self.admin_config()).list_topics(timeout=2)
        return bool(metadata.brokers)

    def environment(self, user: str = ADMIN_USER) -> dict[str, str]:
        """What a client of the platform's (a worker, the smoke, the topics tool) reads to connect as `user`."""
        password = self.admin_password if user == ADMIN_USER else self.passwords[user]
        return {kafka_access.BOOTSTRAP_ENV: self.bootstrap, kafka_access.USERNAME_ENV: user,
                kafka_access.PASSWORD_ENV: password, kafka_access.SECURITY_PROTOCOL_ENV: CLIENT_PROTOCOL}

    def client_config(self, user: str = ADMIN_USER) -> dict[str, str]:
        """librdkafka's settings to connect as `user` (the broker's admin by default)."""
        return kafka_access.client_config(self.environment(user))

    def admin_config(self) -> dict[str, str]:
        return self.client_config(ADMIN_USER)

    @property
    def admin(self) -> dict[str, str]:
        """librdkafka's settings of the broker's admin (a super user: the platform, playing production's stream)."""
        return self.admin_config()

    def team_access(self, conf=None) -> dict[str, str]:
        """Every team's principals (conf/teams.yaml) with fresh passwords and the platform's ACLs, set by the platform's
        own tool; return {user: password}."""
        from confluent_kafka.admin import AdminClient

        from podserve.tooling import kafka_acls
        from podserve.tooling.conf import load_conf

        conf = conf or load_conf()
        admin = AdminClient(self.admin_config())
        for user in kafka_acls.users(conf):
            self.passwords[user] = kafka_acls.new_password()
            kafka_acls.set_password(admin, user, self.passwords[user])
        kafka_acls.sync_acls(admin, conf)
        return dict(self.passwords)

    def write_credentials(self, folder: Path) -> Path:
        """Write each team principal's environment to <folder>/<user>.env (mode 600), where `make serve` and the topics
        tool find them (kafka_access.local_credentials); return the folder."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        for user in self.passwords:
            path = folder / f"{user}.env"
            path.touch(mode=0o600)
            path.chmod(0o600)
            path.write_text("".join(f"{name}={value}\n" for name, value in self.environment(user).items()))
        return folder

    def stop(self) -> int | None:
        return self.program.stop(timeout=20) if self.program else None


def _serve(tools: Path) -> int:
    install(tools)
    data_dir = Path(tempfile.mkdtemp(prefix="podserve-kafka-"))
    broker = KafkaBroker(tools, data_dir, port=DEFAULT_PORT, controller_port=DEFAULT_PORT + 1)
    try:
        broker.start()
    except StartError as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return 1
    broker.team_access()
    credentials = broker.write_credentials(Path(kafka_access.LOCAL_CREDENTIALS_DIR))
    print(f"Kafka {KAFKA_VERSION} (KRaft, one node, SASL/SCRAM with the platform's ACLs) on {broker.bootstrap}, started "
          f"in {broker.start_seconds:.1f}s; data in {data_dir}, log in {broker.program.log_path}; each team's "
          f"credentials (made for this run) in {credentials}/<user>.env. Ctrl-C stops it.", flush=True)
    stop: list[int] = []
    for signum in (signal.SIGINT, signal.SIGTERM):  # Ctrl-C, even where a shell started us with SIGINT ignored
        signal.signal(signum, lambda number, _frame: stop.append(number))
    while broker.program.alive() and not stop:
        time.sleep(0.5)
    code = broker.stop()
    shutil.rmtree(data_dir, ignore_errors=True)
    return 0 if stop or code in (0, 143, -15) else 1


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in ("install", "serve"):
        print("usage: python -m podserve.testbed.kafka install|serve [tools-dir]", file=sys.stderr)
        return 2
    tools = Path(argv[1] if len(argv) > 1 else os.environ.get("PODSERVE_TOOLS", ".tools"))
    if argv[0] == "install":
        started = time.monotonic()
        try:
            libs = install(tools)
        except InstallError as exc:
            print(f"Error: {exc}", file=sys.stderr)
            return 1
        print(f"Kafka {KAFKA_VERSION} jars in {libs} ({time.monotonic() - started:.1f}s)")
        return 0
    return _serve(tools)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
