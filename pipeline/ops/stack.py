"""The local stack without Docker: a single-node Kafka (KRaft) and a Redis on loopback.

Kafka 3.9.x runs from Maven Central jars resolved once into `.run/kafka-<version>/lib` and
started with `java -cp`, as do Kafka's own command-line tools (`kafka_tool`); Redis is
Debian's `redis-server` with its own port, data directory and AOF persistence under
`.run/redis`. Each service is started idempotently, waited for by probing it (never a fixed
sleep), and has a pid file and a log file.
"""

from __future__ import annotations

import base64
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

logger = logging.getLogger(__name__)

KAFKA_VERSION = "3.9.2"
PROJECT_ROOT = Path(__file__).resolve().parents[2]
POM = PROJECT_ROOT / "deploy" / "local" / "kafka-pom.xml"


class StackError(RuntimeError):
    """A service could not be installed, started or stopped; the message says what to do."""


@dataclass(frozen=True, slots=True)
class Endpoint:
    """Where a service listens."""

    host: str
    port: int


def run_dir() -> Path:
    """The project-local folder (ignored by git) for jars, data, logs and pid files."""
    return Path(os.environ.get("IDP_RUN_DIR", PROJECT_ROOT / ".run")).resolve()


def kafka_endpoint(bootstrap: str) -> Endpoint:
    """The first host:port of a bootstrap list."""
    first = bootstrap.split(",")[0].strip().removeprefix("kafka://")
    host, _, port = first.rpartition(":")
    return Endpoint(host or "127.0.0.1", int(port or 9092))


def redis_endpoint(url: str) -> Endpoint:
    """Host and port of a redis:// URL."""
    parsed = urlparse(url)
    return Endpoint(parsed.hostname or "127.0.0.1", parsed.port or 6379)


def port_open(endpoint: Endpoint) -> bool:
    """Whether something accepts TCP connections there."""
    try:
        with socket.create_connection((endpoint.host, endpoint.port), timeout=0.5):
            return True
    except OSError:
        return False


def wait_until(
    condition: Callable[[], bool], *, timeout: float, what: str, log: Path | None = None
) -> None:
    """Poll `condition` until true; fail with the tail of the service log otherwise."""
    deadline = time.monotonic() + timeout
    delay = 0.05
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(delay)
        delay = min(delay * 1.5, 0.5)
    tail = ""
    if log is not None and log.exists():
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-25:])
    message = f"{what} was not ready after {timeout:.0f}s.\n{tail}"
    raise StackError(message)


def _read_pid(pid_file: Path) -> int | None:
    try:
        pid = int(pid_file.read_text().strip())
    except (OSError, ValueError):
        return None
    try:
        os.waitpid(pid, os.WNOHANG)  # reap it if it is our child and has exited
    except ChildProcessError:
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        return pid
    try:  # a zombie (exited, not yet reaped by its parent) is not running
        if Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
            return None
    except (OSError, IndexError):
        pass
    return pid


def _spawn(argv: list[str], *, log: Path, pid_file: Path, cwd: Path) -> int:
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as out:
        process = subprocess.Popen(
            argv, cwd=cwd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    pid_file.write_text(f"{process.pid}\n")
    return process.pid


def _stop(pid_file: Path, name: str, *, timeout: float = 60.0) -> bool:
    pid = _read_pid(pid_file)
    if pid is None:
        pid_file.unlink(missing_ok=True)
        return False
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and _read_pid(pid_file) is not None:
        time.sleep(0.1)
    if _read_pid(pid_file) is not None:
        logger.warning("%s did not stop within %.0fs; killing it", name, timeout)
        os.kill(pid, signal.SIGKILL)
    pid_file.unlink(missing_ok=True)
    return True


# --------------------------------------------------------------------------- Kafka


def kafka_lib() -> Path:
    """Folder of the broker's jars."""
    return run_dir() / f"kafka-{KAFKA_VERSION}" / "lib"


def install_kafka() -> Path:
    """Resolve the broker's and the tools' jars from Maven Central once, into a git-ignored folder.

    About 10 s. A folder that has the broker but not the tools (resolved before they were part
    of the stack) is completed: Maven adds the missing jars and leaves the others as they are.
    """
    lib = kafka_lib()
    wanted = (f"kafka_2.13-{KAFKA_VERSION}.jar", f"kafka-tools-{KAFKA_VERSION}.jar")
    if all((lib / jar).exists() for jar in wanted):
        return lib
    if shutil.which("java") is None:
        message = "Java is missing: install a JDK 17 (e.g. apt-get install openjdk-17-jre-headless)"
        raise StackError(message)
    if shutil.which("mvn") is None:
        message = "Maven is missing: install it (e.g. apt-get install maven) to fetch Kafka's jars"
        raise StackError(message)
    print(f"Resolving Apache Kafka {KAFKA_VERSION} from Maven Central into {lib} ...", flush=True)
    argv = [
        "mvn", "-q", "-B", "-f", str(POM),
        f"-Dmaven.repo.local={run_dir() / 'm2'}",
        f"-Dkafka.version={KAFKA_VERSION}",
        "dependency:copy-dependencies",
        f"-DoutputDirectory={lib}", "-DincludeScope=runtime",
    ]  # fmt: skip
    result = subprocess.run(argv, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        message = f"Maven could not resolve Kafka:\n{result.stdout[-3000:]}{result.stderr[-3000:]}"
        raise StackError(message)
    return lib


# The scripts of Kafka 3.9's bin/ folder and the main class each runs (`kafka-run-class.sh`).
KAFKA_TOOLS = {
    "kafka-topics": "org.apache.kafka.tools.TopicCommand",
    "kafka-console-consumer": "org.apache.kafka.tools.consumer.ConsoleConsumer",
    "kafka-console-producer": "kafka.tools.ConsoleProducer",
    "kafka-consumer-groups": "org.apache.kafka.tools.consumer.group.ConsumerGroupCommand",
    "kafka-configs": "kafka.admin.ConfigCommand",
    "kafka-get-offsets": "org.apache.kafka.tools.GetOffsetShell",
    "kafka-dump-log": "kafka.tools.DumpLogSegments",
    "kafka-delete-records": "org.apache.kafka.tools.DeleteRecordsCommand",
    "kafka-log-dirs": "org.apache.kafka.tools.LogDirsCommand",
    "kafka-leader-election": "org.apache.kafka.tools.LeaderElectionCommand",
    "kafka-reassign-partitions": "org.apache.kafka.tools.reassign.ReassignPartitionsCommand",
    "kafka-transactions": "org.apache.kafka.tools.TransactionsCommand",
    "kafka-features": "org.apache.kafka.tools.FeatureCommand",
    "kafka-metadata-quorum": "org.apache.kafka.tools.MetadataQuorumCommand",
    "kafka-cluster": "org.apache.kafka.tools.ClusterTool",
    "kafka-acls": "kafka.admin.AclCommand",
    "kafka-broker-api-versions": "kafka.admin.BrokerApiVersionsCommand",
    "kafka-producer-perf-test": "org.apache.kafka.tools.ProducerPerformance",
    "kafka-consumer-perf-test": "org.apache.kafka.tools.ConsumerPerformance",
    "kafka-storage": "kafka.tools.StorageTool",
}


def kafka_tool_argv(name: str, args: list[str]) -> list[str]:
    """The `java` command line that runs Kafka's tool `name` (a script name, `.sh` optional)."""
    script = name.removesuffix(".sh")
    main_class = KAFKA_TOOLS.get(script)
    if main_class is None:
        message = f"unknown Kafka tool {name!r}; known: {', '.join(sorted(KAFKA_TOOLS))}"
        raise StackError(message)
    lib = install_kafka()
    home = run_dir() / "kafka"
    home.mkdir(parents=True, exist_ok=True)
    log4j = home / "tools-log4j.properties"
    if not log4j.exists():  # as Kafka's config/tools-log4j.properties: warnings, on stderr
        log4j.write_text(
            "log4j.rootLogger=WARN, stderr\n"
            "log4j.appender.stderr=org.apache.log4j.ConsoleAppender\n"
            "log4j.appender.stderr.layout=org.apache.log4j.PatternLayout\n"
            "log4j.appender.stderr.layout.ConversionPattern=[%d] %p %m (%c)%n\n"
            "log4j.appender.stderr.Target=System.err\n"
        )
    return ["java", "-Xmx512m", "-XX:+UseSerialGC", f"-Dlog4j.configuration=file:{log4j}",
            "-cp", f"{lib}/*", main_class, *args]  # fmt: skip


def kafka_tool(name: str, args: list[str]) -> int:
    """Run one of Kafka's command-line tools in the foreground; its exit status."""
    if shutil.which("java") is None:
        message = "Java is missing: install a JDK 17 (e.g. apt-get install openjdk-17-jre-headless)"
        raise StackError(message)
    return subprocess.run(kafka_tool_argv(name, args), check=False).returncode


def _kafka_properties(broker: Endpoint, data: Path) -> str:
    controller = broker.port + 1
    return f"""\
# Written by `idp stack up`: one combined broker+controller for development and tests.
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@{broker.host}:{controller}
listeners=PLAINTEXT://{broker.host}:{broker.port},CONTROLLER://{broker.host}:{controller}
advertised.listeners=PLAINTEXT://{broker.host}:{broker.port}
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
log.dirs={data}
num.partitions=4
auto.create.topics.enable=false
offsets.topic.replication.factor=1
offsets.topic.num.partitions=8
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=8
group.initial.rebalance.delay.ms=0
log.retention.hours=168
log.segment.bytes=67108864
"""


def _kafka_ready(broker: Endpoint) -> bool:
    """The broker answers a metadata request (the port alone opens before it can serve)."""
    if not port_open(broker):
        return False
    from pipeline.ops.admin import cluster_ready  # late import: aiokafka is heavy

    return cluster_ready(f"{broker.host}:{broker.port}")


def start_kafka(bootstrap: str) -> str:
    """Start the broker unless it runs already; return a one-line status."""
    broker = kafka_endpoint(bootstrap)
    home = run_dir() / "kafka"
    pid_file, log = home / "kafka.pid", home / "kafka.log"
    if _read_pid(pid_file) is not None:
        wait_until(lambda: _kafka_ready(broker), timeout=90, what="Kafka", log=log)
        return f"kafka already running on {broker.host}:{broker.port}"
    for endpoint in (broker, Endpoint(broker.host, broker.port + 1)):
        if port_open(endpoint):
            message = (
                f"port {endpoint.port} on {endpoint.host} is taken by another process; stop it or "
                "point KAFKA_BOOTSTRAP_SERVERS at another port"
            )
            raise StackError(message)
    lib = install_kafka()
    data = home / "data"
    data.mkdir(parents=True, exist_ok=True)
    config = home / "server.properties"
    config.write_text(_kafka_properties(broker, data))
    log4j = home / "log4j.properties"
    log4j.write_text(
        "log4j.rootLogger=INFO, stdout\n"
        "log4j.appender.stdout=org.apache.log4j.ConsoleAppender\n"
        "log4j.appender.stdout.layout=org.apache.log4j.PatternLayout\n"
        "log4j.appender.stdout.layout.ConversionPattern=[%d] %p %m (%c)%n\n"
        "log4j.logger.kafka=INFO\nlog4j.logger.org.apache.kafka=INFO\n"
    )
    java = ["java", "-Xms256m", "-Xmx1g", "-XX:+UseG1GC", f"-Dlog4j.configuration=file:{log4j}",
            "-cp", f"{lib}/*"]  # fmt: skip
    if not (data / "meta.properties").exists():
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        # `=`: a random id may begin with `-`, which the tool would take for an option.
        argv = [*java, "kafka.tools.StorageTool", "format", f"--cluster-id={cluster_id}",
                "-c", str(config)]  # fmt: skip
        result = subprocess.run(argv, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            message = f"formatting Kafka storage failed:\n{result.stdout}{result.stderr}"
            raise StackError(message)
    _spawn([*java, "kafka.Kafka", str(config)], log=log, pid_file=pid_file, cwd=home)
    wait_until(lambda: _kafka_ready(broker), timeout=90, what="Kafka", log=log)
    return f"kafka {KAFKA_VERSION} started on {broker.host}:{broker.port} (log {log})"


def stop_kafka(bootstrap: str = "127.0.0.1:9092") -> bool:
    """Stop the broker started by `start_kafka`; False if it was not running."""
    stopped = _stop(run_dir() / "kafka" / "kafka.pid", "Kafka")
    broker = kafka_endpoint(bootstrap)
    for endpoint in (broker, Endpoint(broker.host, broker.port + 1)):
        wait_until(
            lambda e=endpoint: not port_open(e),  # type: ignore[misc]
            timeout=30,
            what=f"port {endpoint.port} to close",
        )
    return stopped


# --------------------------------------------------------------------------- Redis


def _apt_install(package: str, program: str) -> str:
    """Path of `program`, installing Debian's `package` when it is missing (needs root)."""
    found = shutil.which(program)
    if found:
        return found
    if os.geteuid() != 0:
        message = f"{program} is missing: run `sudo apt-get install {package}`"
        raise StackError(message)
    print(f"Installing Debian's {package} ...", flush=True)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for argv in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", package]):
        result = subprocess.run(argv, capture_output=True, text=True, env=env, check=False)
        if result.returncode != 0:
            message = f"{' '.join(argv)} failed:\n{result.stderr[-3000:]}"
            raise StackError(message)
    found = shutil.which(program)
    if found is None:
        message = f"installing {package} brought no {program}"
        raise StackError(message)
    return found


def install_kcat() -> str:
    """Path of `kcat` (librdkafka's command-line client), installing Debian's package if missing.

    The tests produce through it what librdkafka-based producers send (e.g. lz4 batches).
    """
    return _apt_install("kcat", "kcat")


def install_redis() -> str:
    """Path of `redis-server`, installing Debian's package when it is missing (needs root)."""
    found = shutil.which("redis-server")
    if found:
        return found
    server = _apt_install("redis-server", "redis-server")
    # Debian starts a system-wide redis on 6379 after installing it; ours has its own config.
    subprocess.run(["service", "redis-server", "stop"], capture_output=True, check=False)
    return server


def _redis_ready(endpoint: Endpoint) -> bool:
    try:
        with socket.create_connection((endpoint.host, endpoint.port), timeout=0.5) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False


def start_redis(url: str) -> str:
    """Start Redis unless it runs already; return a one-line status."""
    endpoint = redis_endpoint(url)
    home = run_dir() / "redis"
    pid_file, log = home / "redis.pid", home / "redis.log"
    if _read_pid(pid_file) is not None:
        wait_until(lambda: _redis_ready(endpoint), timeout=30, what="Redis", log=log)
        return f"redis already running on {endpoint.host}:{endpoint.port}"
    if port_open(endpoint):
        message = (
            f"port {endpoint.port} on {endpoint.host} is taken by another process (a system "
            "redis-server? `service redis-server stop`), or point REDIS_URL at another port"
        )
        raise StackError(message)
    server = install_redis()
    if port_open(endpoint):  # the package's own service may have just started
        subprocess.run(["service", "redis-server", "stop"], capture_output=True, check=False)
    home.mkdir(parents=True, exist_ok=True)
    config = home / "redis.conf"
    config.write_text(
        f"bind {endpoint.host}\nport {endpoint.port}\ndir {home}\n"
        'daemonize no\nappendonly yes\nappendfsync everysec\nsave ""\n'
        "protected-mode yes\nmaxmemory-policy noeviction\n"
    )
    _spawn([server, str(config)], log=log, pid_file=pid_file, cwd=home)
    wait_until(lambda: _redis_ready(endpoint), timeout=30, what="Redis", log=log)
    return f"redis started on {endpoint.host}:{endpoint.port} (AOF in {home}, log {log})"


def stop_redis() -> bool:
    """Stop the Redis started by `start_redis`; False if it was not running."""
    return _stop(run_dir() / "redis" / "redis.pid", "Redis")


def status(bootstrap: str, url: str) -> list[str]:
    """One line per service: running or not, pid, where."""
    lines = []
    for name, pid_file, endpoint in (
        ("kafka", run_dir() / "kafka" / "kafka.pid", kafka_endpoint(bootstrap)),
        ("redis", run_dir() / "redis" / "redis.pid", redis_endpoint(url)),
    ):
        pid = _read_pid(pid_file)
        where = f"{endpoint.host}:{endpoint.port}"
        if pid is not None:
            lines.append(f"{name}: running (pid {pid}) on {where}")
        elif port_open(endpoint):
            lines.append(f"{name}: not ours, but something listens on {where}")
        else:
            lines.append(f"{name}: stopped")
    return lines


# --------------------------------------------------------------------------- worker


def start_worker(env: dict[str, str]) -> str:
    """Run `idp worker` in the background with `env` unless one runs already."""
    home = run_dir() / "worker"
    home.mkdir(parents=True, exist_ok=True)
    pid_file, log = home / "worker.pid", home / "worker.log"
    pid = _read_pid(pid_file)
    if pid is not None:
        return f"worker already running (pid {pid}, log {log})"
    argv = [sys.executable, "-m", "pipeline.cli", "worker"]
    with log.open("ab") as out:
        process = subprocess.Popen(
            argv, cwd=PROJECT_ROOT, stdout=out, stderr=subprocess.STDOUT,
            env={**os.environ, **env}, start_new_session=True,
        )  # fmt: skip
    pid_file.write_text(f"{process.pid}\n")
    return f"worker started (pid {process.pid}, log {log})"


def stop_worker() -> bool:
    """Stop the background worker; False if none ran."""
    return _stop(run_dir() / "worker" / "worker.pid", "worker")


# --------------------------------------------------------------------------- cluster mode
#
# `idp stack up --redis-cluster 3 --brokers 3`: Redis masters with one replica each and KRaft
# nodes that are each broker and controller (a quorum of all of them), on loopback ports that
# do not meet the single-node stack's, data under `.run/cluster/`. Each node has the pid file,
# log and readiness probe of the single-node services.

CLUSTER_KAFKA_PORT = 29092  # broker i listens on 29092 + i, its controller on 29192 + i
CLUSTER_CONTROLLER_OFFSET = 100
CLUSTER_REDIS_PORT = 7000  # masters and replicas on 7000, 7001, ...
CLUSTER_HOST = "127.0.0.1"
# How long a master may be silent before its replica takes over (Redis's default is 15 s;
# loopback needs no more than 2 s, and the tests kill masters).
CLUSTER_NODE_TIMEOUT_MS = 2000


def cluster_dir() -> Path:
    """Where the cluster mode keeps each node's data, log and pid file."""
    return run_dir() / "cluster"


def cluster_bootstrap(brokers: int = 3) -> str:
    """KAFKA_BOOTSTRAP_SERVERS of the local Kafka cluster."""
    return ",".join(f"{CLUSTER_HOST}:{CLUSTER_KAFKA_PORT + i}" for i in range(brokers))


def cluster_redis_url() -> str:
    """REDIS_URL of the local Redis Cluster (any node would do; the first is the one named)."""
    return f"redis://{CLUSTER_HOST}:{CLUSTER_REDIS_PORT}/0"


def _broker_home(index: int) -> Path:
    return cluster_dir() / f"kafka-{index}"


def _cluster_kafka_properties(index: int, brokers: int, data: Path) -> str:
    port = CLUSTER_KAFKA_PORT + index
    controller = port + CLUSTER_CONTROLLER_OFFSET
    voters = ",".join(
        f"{i + 1}@{CLUSTER_HOST}:{CLUSTER_KAFKA_PORT + i + CLUSTER_CONTROLLER_OFFSET}"
        for i in range(brokers)
    )
    replication = min(3, brokers)
    isr = 2 if replication >= 3 else 1
    return f"""\
# Written by `idp stack up --brokers {brokers}`: node {index + 1}, a broker and a controller.
process.roles=broker,controller
node.id={index + 1}
controller.quorum.voters={voters}
listeners=PLAINTEXT://{CLUSTER_HOST}:{port},CONTROLLER://{CLUSTER_HOST}:{controller}
advertised.listeners=PLAINTEXT://{CLUSTER_HOST}:{port}
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
log.dirs={data}
num.partitions=4
default.replication.factor={replication}
min.insync.replicas={isr}
auto.create.topics.enable=false
offsets.topic.replication.factor={replication}
offsets.topic.num.partitions=8
transaction.state.log.replication.factor={replication}
transaction.state.log.min.isr={isr}
transaction.state.log.num.partitions=8
group.initial.rebalance.delay.ms=0
unclean.leader.election.enable=false
log.retention.hours=168
log.segment.bytes=67108864
"""


def _cluster_java(home: Path) -> list[str]:
    log4j = home / "log4j.properties"
    log4j.write_text(
        "log4j.rootLogger=INFO, stdout\n"
        "log4j.appender.stdout=org.apache.log4j.ConsoleAppender\n"
        "log4j.appender.stdout.layout=org.apache.log4j.PatternLayout\n"
        "log4j.appender.stdout.layout.ConversionPattern=[%d] %p %m (%c)%n\n"
        "log4j.logger.kafka=INFO\nlog4j.logger.org.apache.kafka=INFO\n"
        "log4j.logger.state.change.logger=WARN\nlog4j.logger.kafka.controller=WARN\n"
    )
    # Three JVMs share the machine with the tests: small heaps and one GC thread each.
    return ["java", "-Xms128m", "-Xmx512m", "-XX:+UseSerialGC",
            f"-Dlog4j.configuration=file:{log4j}", "-cp", f"{install_kafka()}/*"]  # fmt: skip


def start_cluster_broker(index: int, brokers: int = 3) -> None:
    """Start node `index` of the local Kafka cluster (formatting its storage the first time)."""
    home = _broker_home(index)
    pid_file, log = home / "kafka.pid", home / "kafka.log"
    if _read_pid(pid_file) is not None:
        return
    port = CLUSTER_KAFKA_PORT + index
    for taken in (port, port + CLUSTER_CONTROLLER_OFFSET):
        if port_open(Endpoint(CLUSTER_HOST, taken)):
            message = f"port {taken} on {CLUSTER_HOST} is taken by another process; stop it"
            raise StackError(message)
    data = home / "data"
    data.mkdir(parents=True, exist_ok=True)
    config = home / "server.properties"
    config.write_text(_cluster_kafka_properties(index, brokers, data))
    java = _cluster_java(home)
    id_file = cluster_dir() / "kafka-cluster-id"
    if not id_file.exists():
        id_file.write_text(base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("="))
    if not (data / "meta.properties").exists():
        argv = [*java, "kafka.tools.StorageTool", "format",
                f"--cluster-id={id_file.read_text().strip()}", "-c", str(config)]  # fmt: skip
        result = subprocess.run(argv, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            message = f"formatting Kafka storage failed:\n{result.stdout}{result.stderr}"
            raise StackError(message)
    _spawn([*java, "kafka.Kafka", str(config)], log=log, pid_file=pid_file, cwd=home)


def wait_cluster_broker(index: int, *, timeout: float = 120) -> None:
    """Wait until node `index` answers metadata requests."""
    endpoint = Endpoint(CLUSTER_HOST, CLUSTER_KAFKA_PORT + index)
    wait_until(lambda: _kafka_ready(endpoint), timeout=timeout, what=f"Kafka node {index + 1}",
               log=_broker_home(index) / "kafka.log")  # fmt: skip


def stop_cluster_broker(index: int, *, kill: bool = False) -> bool:
    """Stop node `index` (SIGTERM, or SIGKILL with `kill`); False if it was not running."""
    pid_file = _broker_home(index) / "kafka.pid"
    if kill:
        pid = _read_pid(pid_file)
        if pid is None:
            return False
        os.kill(pid, signal.SIGKILL)
        wait_until(lambda: _read_pid(pid_file) is None, timeout=30, what=f"node {index + 1} gone")
        pid_file.unlink(missing_ok=True)
        return True
    return _stop(pid_file, f"Kafka node {index + 1}", timeout=30)


def start_kafka_cluster(brokers: int = 3, *, timeout: float = 120) -> str:
    """Start the local Kafka cluster unless it runs already; return a one-line status.

    `timeout` bounds the wait for each node to answer, and then for each to see all the others.
    """
    if brokers < 1:
        raise StackError("--brokers must be at least 1")
    for index in range(brokers):
        start_cluster_broker(index, brokers)
    for index in range(brokers):
        wait_cluster_broker(index, timeout=timeout)
    from pipeline.ops.admin import brokers_agree  # late import: aiokafka is heavy

    # Topics created before every broker has registered would get fewer replicas.
    bootstrap = cluster_bootstrap(brokers)
    wait_until(lambda: brokers_agree(bootstrap, brokers), timeout=timeout,
               what=f"each of the {brokers} brokers to see all of them")  # fmt: skip
    return f"kafka cluster: {brokers} KRaft nodes on {bootstrap}"


def _cluster_brokers() -> list[int]:
    return sorted(
        int(path.name.removeprefix("kafka-"))
        for path in cluster_dir().glob("kafka-*")
        if path.is_dir() and path.name.removeprefix("kafka-").isdigit()
    )


def _redis_home(port: int) -> Path:
    return cluster_dir() / f"redis-{port}"


def _cluster_redis_conf(port: int, home: Path) -> str:
    return (
        f"bind {CLUSTER_HOST}\nport {port}\ndir {home}\ndaemonize no\n"
        f"cluster-enabled yes\ncluster-config-file nodes.conf\n"
        f"cluster-node-timeout {CLUSTER_NODE_TIMEOUT_MS}\n"
        'appendonly yes\nappendfsync everysec\nsave ""\n'
        "protected-mode yes\nmaxmemory-policy noeviction\n"
    )


def start_cluster_redis(port: int) -> None:
    """Start the Redis Cluster node on `port` (it rejoins its cluster from its nodes.conf)."""
    home = _redis_home(port)
    pid_file, log = home / "redis.pid", home / "redis.log"
    if _read_pid(pid_file) is None:
        if port_open(Endpoint(CLUSTER_HOST, port)):
            message = f"port {port} on {CLUSTER_HOST} is taken by another process; stop it"
            raise StackError(message)
        home.mkdir(parents=True, exist_ok=True)
        config = home / "redis.conf"
        config.write_text(_cluster_redis_conf(port, home))
        _spawn([install_redis(), str(config)], log=log, pid_file=pid_file, cwd=home)
    wait_until(lambda: _redis_ready(Endpoint(CLUSTER_HOST, port)), timeout=30,
               what=f"Redis node {port}", log=log)  # fmt: skip


def stop_cluster_redis(port: int, *, kill: bool = False) -> bool:
    """Stop the node on `port` (SIGTERM, or SIGKILL with `kill`); False if it was not running."""
    pid_file = _redis_home(port) / "redis.pid"
    if kill:
        pid = _read_pid(pid_file)
        if pid is None:
            return False
        os.kill(pid, signal.SIGKILL)
        wait_until(lambda: _read_pid(pid_file) is None, timeout=30, what=f"Redis {port} gone")
        pid_file.unlink(missing_ok=True)
        return True
    return _stop(pid_file, f"Redis node {port}", timeout=30)


def redis_cli(port: int, *args: str) -> str:
    """Run `redis-cli` against a local node; its output (raises StackError on failure)."""
    cli = shutil.which("redis-cli")
    if cli is None:
        raise StackError("redis-cli is missing: run `sudo apt-get install redis-tools`")
    argv = [cli, "-h", CLUSTER_HOST, "-p", str(port), *args]
    result = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=60)
    if result.returncode != 0:
        message = f"redis-cli {' '.join(args)} failed:\n{result.stdout}{result.stderr}"
        raise StackError(message)
    return result.stdout


def _cluster_info(port: int) -> dict[str, str]:
    try:
        text = redis_cli(port, "cluster", "info")
    except (StackError, subprocess.TimeoutExpired):
        return {}
    return dict(line.strip().split(":", 1) for line in text.splitlines() if ":" in line)


def redis_cluster_healthy(ports: list[int], *, masters: int) -> bool:
    """Every node sees the cluster ok: `masters` masters serving all slots, no node failing."""
    for port in ports:
        info = _cluster_info(port)
        if info.get("cluster_state") != "ok" or info.get("cluster_size") != str(masters):
            return False
        if info.get("cluster_known_nodes") != str(len(ports)):
            return False
        nodes = redis_cli(port, "cluster", "nodes")
        if "fail" in nodes or "handshake" in nodes or "noaddr" in nodes:
            return False
    return True


def start_redis_cluster(masters: int = 3, *, replicas: int = 1) -> str:
    """Start the local Redis Cluster unless it runs already; return a one-line status.

    The first start creates it (`redis-cli --cluster create`); later starts reload each node's
    nodes.conf, so the cluster comes back as it was, masters promoted by failovers included.
    """
    if masters < 3:
        raise StackError("a Redis Cluster needs at least 3 masters (--redis-cluster 3)")
    ports = [CLUSTER_REDIS_PORT + i for i in range(masters * (1 + replicas))]
    for port in ports:
        start_cluster_redis(port)
    if all(_cluster_info(port).get("cluster_known_nodes") == "1" for port in ports):
        redis_cli(ports[0], "--cluster", "create",
                  *(f"{CLUSTER_HOST}:{port}" for port in ports),
                  "--cluster-replicas", str(replicas), "--cluster-yes")  # fmt: skip
    wait_until(lambda: redis_cluster_healthy(ports, masters=masters), timeout=60,
               what="the Redis Cluster", log=_redis_home(ports[0]) / "redis.log")  # fmt: skip
    return (f"redis cluster: {masters} masters with {replicas} replica(s) each on "
            f"{CLUSTER_HOST}:{ports[0]}-{ports[-1]} (REDIS_URL={cluster_redis_url()})")  # fmt: skip


def _cluster_redis_ports() -> list[int]:
    return sorted(
        int(path.name.removeprefix("redis-"))
        for path in cluster_dir().glob("redis-*")
        if path.is_dir() and path.name.removeprefix("redis-").isdigit()
    )


def stop_cluster() -> list[str]:
    """Stop every node of the cluster mode, all at once (a quorum stopped one by one stalls)."""
    pid_files = [(f"kafka node {i + 1}", _broker_home(i) / "kafka.pid") for i in _cluster_brokers()]
    pid_files += [(f"redis {p}", _redis_home(p) / "redis.pid") for p in _cluster_redis_ports()]
    running = [(name, pid_file, _read_pid(pid_file)) for name, pid_file in pid_files]
    for _, _, pid in running:
        if pid is not None:
            os.kill(pid, signal.SIGTERM)
    lines = []
    for name, pid_file, pid in running:
        if pid is None:
            lines.append(f"{name}: was not running")
            continue
        _stop(pid_file, name, timeout=30)
        lines.append(f"{name}: stopped")
    return lines


def cluster_status() -> list[str]:
    """One line per node of the cluster mode (none when it was never started)."""
    lines = []
    for index in _cluster_brokers():
        pid = _read_pid(_broker_home(index) / "kafka.pid")
        where = f"{CLUSTER_HOST}:{CLUSTER_KAFKA_PORT + index}"
        lines.append(f"kafka node {index + 1}: " + (f"running (pid {pid}) on {where}" if pid
                                                     else "stopped"))  # fmt: skip
    for port in _cluster_redis_ports():
        pid = _read_pid(_redis_home(port) / "redis.pid")
        role = ""
        if pid is not None:
            role = " as " + ("master" if "role:master" in redis_cli(port, "info", "replication")
                             else "replica")  # fmt: skip
        where = f"{CLUSTER_HOST}:{port}"
        lines.append(f"redis {port}: " + (f"running (pid {pid}) on {where}{role}" if pid
                                          else "stopped"))  # fmt: skip
    return lines
