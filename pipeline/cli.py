"""The `idp` command: run the worker, manage the local stack, feed the demo journey."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import secrets
import signal
import sys
import textwrap
import time
from collections.abc import Coroutine
from datetime import UTC, datetime
from pathlib import Path

import orjson
from pydantic import ValidationError

from pipeline.ops import stack
from pipeline.ops.settings import SecretsFileError, Settings
from pipeline.state.base import Keys
from pipeline.state.format import UnreadableState
from schemas.time import format_timestamp

logger = logging.getLogger(__name__)


def _settings(args: argparse.Namespace) -> Settings:
    overrides = {
        name: getattr(args, name)
        for name in ("kafka_bootstrap_servers", "redis_url", "topic_prefix", "secrets_file")
        if getattr(args, name, None) is not None
    }
    return Settings(**overrides)


class JsonLogFormatter(logging.Formatter):
    """One JSON object per line: time (UTC, RFC 3339), level, logger, message, exception."""

    def format(self, record: logging.LogRecord) -> str:
        """The record as one line of JSON."""
        line = {
            "time": format_timestamp(datetime.fromtimestamp(record.created, UTC)),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            line["stack"] = self.formatStack(record.stack_info)
        return orjson.dumps(line, default=str).decode()


def _logging_config(settings: Settings) -> dict | None:
    """The worker's logging configuration for Faust (mode's `dictConfig`); None: Faust's own."""
    if settings.log_format != "json":
        return None
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"json": {"()": JsonLogFormatter}},
        "handlers": {
            "default": {
                "class": "logging.StreamHandler",
                "formatter": "json",
                "stream": "ext://sys.stdout",
            }
        },  # fmt: skip
        "root": {"level": settings.log_level.upper(), "handlers": ["default"]},
    }


class Unreachable(Exception):
    """A server the command needs does not answer; the message is the one line to print."""


# How long `idp worker` (`idp topics`) waits at start for Kafka and Redis to answer: a worker
# started together with them (docker-compose, a pod) waits, a wrong address fails in seconds.
STARTUP_WAIT_S = 15.0
TOPICS_WAIT_S = 5.0


def _await_servers(settings: Settings, *, kafka: bool, redis: bool, wait_s: float) -> None:
    """Return once the servers answer (TCP), else raise `Unreachable` after `wait_s`."""
    try:
        brokers = [stack.kafka_endpoint(s) for s in settings.kafka_bootstrap_servers.split(",")]
        redis_at = stack.redis_endpoint(settings.redis_url)
    except ValueError as exc:
        raise Unreachable(f"cannot read the server addresses: {exc}") from exc
    deadline = time.monotonic() + wait_s
    logged = False
    while True:
        missing = []
        if kafka and not any(stack.port_open(b) for b in brokers):
            missing.append(f"no Kafka broker answers at {settings.kafka_bootstrap_servers} "
                           "(KAFKA_BOOTSTRAP_SERVERS, --bootstrap)")  # fmt: skip
        if redis and not stack.port_open(redis_at):
            missing.append(f"no Redis answers at {settings.redis_url} (REDIS_URL, --redis)")
        if not missing:
            return
        if time.monotonic() >= deadline:
            waited = f"; waited {wait_s:.0f} s" if wait_s else ""
            raise Unreachable(f"{'; '.join(missing)}{waited}")
        if not logged:
            logger.info("waiting up to %.0f s: %s", wait_s, "; ".join(missing))
            logged = True
        time.sleep(0.5)


def _run_once(coroutine: Coroutine[object, object, None]) -> None:
    """Run a coroutine on a loop of its own, leaving the thread's event loop to Faust.

    `asyncio.run` would leave the main thread without a current loop, which Faust's
    `get_event_loop` then refuses.
    """
    loop = asyncio.new_event_loop()
    try:
        loop.run_until_complete(coroutine)
    finally:
        loop.close()


async def _check_state_format(settings: Settings, namespace: str | None = None) -> None:
    """Raise `UnreadableState` unless this release reads the namespace's state (recording it)."""
    from pipeline.state.factory import open_store
    from pipeline.state.format import ensure_format

    keys = Keys(namespace or settings.state_namespace)
    store = open_store(settings.redis_url, marker_ttl_s=settings.dedup_ttl_days * 86400,
                       wait_replicas=settings.redis_wait_replicas)  # fmt: skip
    try:
        found = await ensure_format(store, keys)
    finally:
        await store.close()
    if found.upgraded_from is not None:
        logger.info("namespace %r: state format %d read, recorded as format %d",
                    keys.namespace, found.upgraded_from, found.format)  # fmt: skip
    elif found.recorded:
        logger.info("namespace %r: state format %d recorded", keys.namespace, found.format)


def cmd_worker(args: argparse.Namespace) -> int:
    """Run the Faust worker in the foreground."""
    import faust

    from pipeline.ops.admin import prepare_topics
    from pipeline.worker.app import create_app, freeze_heap

    settings = _settings(args)
    if settings.log_format == "json":
        for handler in logging.getLogger().handlers:  # the lines before Faust takes over
            handler.setFormatter(JsonLogFormatter())
    try:
        workspaces = settings.workspace_secrets
    except SecretsFileError as exc:
        print(f"idp worker: {exc}", file=sys.stderr)
        return 2
    if not workspaces:
        logger.warning(
            "no IDP_SECRETS_FILE (or it is empty): every event will be rejected as "
            "unknown_workspace"
        )  # a log line: JSON too with IDP_LOG_FORMAT=json
    _await_servers(settings, kafka=True, redis=True, wait_s=STARTUP_WAIT_S)
    _run_once(_check_state_format(settings))
    _run_once(prepare_topics(settings))  # created or awaited before Faust subscribes
    app = create_app(settings)
    freeze_heap()
    worker = faust.Worker(app, loglevel=settings.log_level, quiet=True,
                          logging_config=_logging_config(settings))  # fmt: skip
    # Faust's terminal spinner sets the root logger to DEBUG while it spins (~15% slower).
    worker.spinner = None
    worker.execute_from_commandline()
    return 0


def cmd_topics(args: argparse.Namespace) -> int:
    """Create the topics of SPEC §3 (idempotent)."""
    from pipeline.ops.admin import ensure_topics
    from pipeline.ops.topics import topic_specs

    settings = _settings(args)
    _await_servers(settings, kafka=True, redis=False, wait_s=TOPICS_WAIT_S)
    specs = topic_specs(settings.topic_prefix, settings.partitions,
                        timestamp_type=settings.input_timestamp_type)  # fmt: skip
    created = asyncio.run(ensure_topics(settings.kafka_bootstrap_servers, specs))
    print(f"topics: {len(created)} created, {len(specs) - len(created)} already there")
    return 0


def cmd_stack(args: argparse.Namespace) -> int:
    """Start, stop or show the local Kafka and Redis, or run one of Kafka's own tools."""
    if args.action != "kafka-tool" and (
        getattr(args, "tool", None) or getattr(args, "tool_args", None)
    ):
        words = [*([args.tool] if args.tool else []), *args.tool_args]
        args = _stack_options().parse_args(words, namespace=args)
    settings = _settings(args)
    try:
        if args.action == "kafka-tool":
            if not getattr(args, "tool", None):
                names = ", ".join(sorted(stack.KAFKA_TOOLS))
                print(f"idp stack kafka-tool NAME [ARGS...]; NAME is one of: {names}",
                      file=sys.stderr)  # fmt: skip
                return 2
            return stack.kafka_tool(args.tool, args.tool_args)
        masters, brokers = getattr(args, "redis_cluster", None), getattr(args, "brokers", None)
        if args.action == "up" and (masters or (brokers or 1) > 1):
            return _stack_up_cluster(args, masters=masters, brokers=brokers)
        if args.action == "up":
            print(stack.start_redis(settings.redis_url), flush=True)
            print(stack.start_kafka(settings.kafka_bootstrap_servers), flush=True)
            return cmd_topics(args)
        if args.action == "down" and getattr(args, "cluster", False):
            print("\n".join(stack.stop_cluster()) or "cluster: was never started")
            return 0
        if args.action == "down":
            for name, stop in (("worker", stack.stop_worker), ("kafka", stack.stop_kafka),
                               ("redis", stack.stop_redis)):  # fmt: skip
                print(f"{name}: {'stopped' if stop() else 'was not running'}")
            return 0
        for line in stack.status(settings.kafka_bootstrap_servers, settings.redis_url):
            print(line)
        for line in stack.cluster_status():
            print(line)
        return 0
    except stack.StackError as exc:
        print(f"idp stack {args.action}: {exc}", file=sys.stderr)
        return 1


def _stack_up_cluster(args: argparse.Namespace, *, masters: int | None, brokers: int | None) -> int:
    """`stack up --redis-cluster N --brokers M`: the cluster mode, then its topics."""
    env = {}
    if masters:
        print(stack.start_redis_cluster(masters), flush=True)
        env["REDIS_URL"] = stack.cluster_redis_url()
    else:
        print(stack.start_redis(_settings(args).redis_url), flush=True)
    if brokers is not None and brokers > 1:
        print(stack.start_kafka_cluster(brokers), flush=True)
        env["KAFKA_BOOTSTRAP_SERVERS"] = stack.cluster_bootstrap(brokers)
    else:
        print(stack.start_kafka(_settings(args).kafka_bootstrap_servers), flush=True)
    print("point the pipeline at it:\n" + "\n".join(f"  export {k}={v}" for k, v in env.items()))
    overrides = {"kafka_bootstrap_servers": env.get("KAFKA_BOOTSTRAP_SERVERS"),
                 "redis_url": env.get("REDIS_URL")}  # fmt: skip
    return cmd_topics(argparse.Namespace(**{**vars(args), **{k: v for k, v in overrides.items()
                                                              if v is not None}}))  # fmt: skip


def _demo_secrets() -> Path:
    path = stack.run_dir() / "demo-secrets.json"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(orjson.dumps({ws: secrets.token_hex(16) for ws in ("acme", "globex")}))
    return path


def cmd_demo(args: argparse.Namespace) -> int:
    """Set up everything, start the worker and feed it a generated journey."""
    from pipeline.tools import demo, journey

    if cmd_stack(argparse.Namespace(**{**vars(args), "action": "up"})) != 0:
        return 1
    settings = _settings(args)
    secrets_file = settings.secrets_file or _demo_secrets()
    settings = settings.model_copy(update={"secrets_file": secrets_file})
    env = {"IDP_SECRETS_FILE": str(secrets_file),
           "KAFKA_BOOTSTRAP_SERVERS": settings.kafka_bootstrap_servers,
           "REDIS_URL": settings.redis_url, "IDP_TOPIC_PREFIX": settings.topic_prefix}  # fmt: skip
    print(stack.start_worker(env), flush=True)
    plain = {ws: values[0].get_secret_value() for ws, values in settings.workspace_secrets.items()}
    records = journey.generate(plain, people=args.people, seed=args.seed)
    return asyncio.run(demo.run(settings, records, timeout=args.timeout))


def cmd_bench(args: argparse.Namespace) -> int:
    """Measure throughput against a bare Faust agent, and latency at half the peak."""
    from pipeline.tools import bench, history

    shapes = tuple(args.shapes.split(","))
    if args.history:
        try:
            history.check_shapes(shapes)  # before anything starts
        except ValueError as exc:
            print(f"idp bench: {exc}", file=sys.stderr)
            return 2
        if args.probe_sessions < 1:
            print("idp bench: --probe-sessions must be at least 1", file=sys.stderr)
            return 2
    if cmd_stack(argparse.Namespace(**{**vars(args), "action": "up"})) != 0:
        return 1
    settings = _settings(args)

    def interrupted(signum: int, frame: object) -> None:
        raise KeyboardInterrupt  # the run then stops its processes, removes its topics and keys

    signal.signal(signal.SIGTERM, interrupted)
    try:
        if args.history:
            sizes = tuple(int(size) for size in args.sizes.split(","))
            asyncio.run(history.run(settings, sizes=sizes, shapes=shapes,
                                    budget_s=args.budget_s,
                                    probe_sessions=args.probe_sessions))  # fmt: skip
            return 0
        asyncio.run(bench.run(settings, events=args.events, latency_seconds=args.latency_seconds,
                              seed=args.seed, load=args.load, passes=args.passes))  # fmt: skip
    except KeyboardInterrupt:
        print("idp bench: interrupted; its processes, topics and keys are removed", file=sys.stderr)
        return 130
    return 0


def cmd_bench_bare(args: argparse.Namespace) -> int:
    """The benchmark's baselines: a Faust agent that only iterates the input topics."""
    from pipeline.tools import bench

    bench.run_bare_worker(_settings(args), our_consumer=args.our_consumer)
    return 0


def cmd_inspect(args: argparse.Namespace) -> int:
    """Print the profile an identifier resolves to, with its history; or draw it (--html)."""
    from redis.exceptions import ConnectionError as RedisConnectionError
    from redis.exceptions import TimeoutError as RedisTimeoutError

    from pipeline.tools.inspect import describe, load
    from pipeline.tools.inspect_html import page

    settings = _settings(args)
    _await_servers(settings, kafka=False, redis=True, wait_s=0)
    try:
        asyncio.run(_check_state_format(settings))
        found = asyncio.run(load(settings, args.workspace_id, args.identifier))
    except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
        raise Unreachable(f"Redis at {settings.redis_url} does not answer: {exc}") from exc
    if found is None:
        print(f"no contact in workspace {args.workspace_id!r} for {args.identifier!r}",
              file=sys.stderr)  # fmt: skip
        return 1
    if args.html is None:
        print("\n".join(describe(*found)))
        return 0
    try:
        args.html.write_text(page(*found), encoding="utf-8")
    except OSError as exc:
        print(f"idp inspect: cannot write {args.html}: {exc.strerror}", file=sys.stderr)
        return 2
    print(f"wrote {args.html}")
    return 0


def cmd_replay(args: argparse.Namespace) -> int:
    """Replay the input topics into separate state and output topics."""
    from pipeline.tools import replay

    settings = _settings(args)
    since = replay.parse_since(args.since) if args.since else None
    to_prefix = args.to_prefix or f"replay.{args.name}."
    return asyncio.run(replay.run(settings, name=args.name, to_prefix=to_prefix, since=since,
                                  timeout=args.timeout))  # fmt: skip


def cmd_erase(args: argparse.Namespace) -> int:
    """Produce a proven erase request (R16) on privacy.erase."""
    import uuid

    from aiokafka import AIOKafkaProducer

    from pipeline.core.erasure import erase_request
    from schemas.topics import ERASE

    settings = _settings(args)
    try:
        entry = settings.workspaces.get(args.workspace_id)
    except SecretsFileError as exc:
        print(f"idp erase: {exc}", file=sys.stderr)
        return 2
    if entry is None:
        print(f"idp erase: no secret for workspace {args.workspace_id!r} in IDP_SECRETS_FILE",
              file=sys.stderr)  # fmt: skip
        return 2
    subject = f"user:{args.user_id}" if args.user_id is not None else f"device:{args.anonymous_id}"
    request = erase_request(
        args.workspace_id, subject, entry.secrets[0].get_secret_value().encode(),
        event_id=f"erase-{uuid.uuid4().hex}", timestamp=format_timestamp(datetime.now(UTC)),
        reason=args.reason,
    )  # fmt: skip
    _await_servers(settings, kafka=True, redis=False, wait_s=TOPICS_WAIT_S)

    async def produce() -> None:
        producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap_servers, acks="all")
        await producer.start()
        try:
            await producer.send_and_wait(settings.topic(ERASE), orjson.dumps(request),
                                         key=subject.encode())  # fmt: skip
        finally:
            await producer.stop()

    asyncio.run(produce())
    print(f"erase request {request['event_id']} for {subject} sent to {settings.topic(ERASE)}")
    return 0


def cmd_restore(args: argparse.Namespace) -> int:
    """Rebuild (or catch up) a Redis namespace from the state changelog."""
    from pipeline.tools import restore

    settings = _settings(args)
    _await_servers(settings, kafka=True, redis=True, wait_s=0)
    namespace = args.namespace or settings.state_namespace
    topic = restore.changelog_topic(settings, args.prefix)
    asyncio.run(_check_state_format(settings, namespace))
    return asyncio.run(restore.run(settings, namespace=namespace, topic=topic, whole=args.force,
                                   empty=args.from_empty))  # fmt: skip


def _stack_options() -> argparse.ArgumentParser:
    """The options of `idp stack`, also read after the action (`idp stack up --brokers 3`)."""
    options = argparse.ArgumentParser(prog="idp stack", add_help=False)
    options.add_argument("--redis-cluster", type=int, metavar="N",
                         help="with up: a Redis Cluster of N masters (one replica each) on "
                              "127.0.0.1:7000-")  # fmt: skip
    options.add_argument("--brokers", type=int, metavar="N",
                         help="with up: N KRaft brokers on 127.0.0.1:29092-")  # fmt: skip
    options.add_argument("--cluster", action="store_true",
                         help="with down: stop the cluster mode's nodes")  # fmt: skip
    return options


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of `idp`."""
    parser = argparse.ArgumentParser(prog="idp", description=__doc__)
    parser.add_argument(
        "--bootstrap",
        dest="kafka_bootstrap_servers",
        help="Kafka bootstrap servers (env KAFKA_BOOTSTRAP_SERVERS)",
    )
    parser.add_argument("--redis", dest="redis_url", help="Redis URL (env REDIS_URL)")
    parser.add_argument("--topic-prefix", dest="topic_prefix", help="env IDP_TOPIC_PREFIX")
    parser.add_argument("--secrets-file", dest="secrets_file", type=Path,
                        help="workspace secrets JSON (env IDP_SECRETS_FILE)")  # fmt: skip
    # COMMAND names the choices, so that the internal command (no help) stays out of --help.
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    sub.add_parser("worker", help="run the Faust worker").set_defaults(func=cmd_worker)
    sub.add_parser("topics", help="create the topics (idempotent)").set_defaults(func=cmd_topics)
    stack_parser = sub.add_parser("stack", help="local Kafka and Redis without Docker",
                                  parents=[_stack_options()])  # fmt: skip
    stack_parser.add_argument("action", choices=("up", "down", "status", "kafka-tool"))
    stack_parser.add_argument(
        "tool", nargs="?", help="with kafka-tool: the script name, e.g. kafka-topics"
    )
    stack_parser.add_argument(
        "tool_args", nargs=argparse.REMAINDER, help="with kafka-tool: the tool's own arguments"
    )
    stack_parser.set_defaults(func=cmd_stack)
    demo_parser = sub.add_parser("demo", help="set up, start the worker, feed a journey")
    demo_parser.add_argument("--people", type=int, default=2000)
    demo_parser.add_argument("--seed", type=int, default=7)
    demo_parser.add_argument("--timeout", type=float, default=300.0)
    demo_parser.set_defaults(func=cmd_demo)
    bench_parser = sub.add_parser("bench", help="throughput and latency through the real stack")
    bench_parser.add_argument("--events", type=int, default=100_000)
    bench_parser.add_argument("--latency-seconds", type=float, default=10.0)
    bench_parser.add_argument("--seed", type=int, default=1)
    bench_parser.add_argument(
        "--load", type=float, default=0.5, help="fraction of the worker's peak for latency"
    )
    bench_parser.add_argument(
        "--passes", type=int, default=3, help="throughput passes of each process (best counts)"
    )
    bench_parser.add_argument(
        "--history",
        action="store_true",
        help="instead: the cost per event as one history grows (R15)",
    )
    bench_parser.add_argument(
        "--sizes", default="10,100,1000,10000", help="--history: the history sizes measured"
    )
    bench_parser.add_argument(
        "--shapes",
        default="library,laptop,devices,email",
        help="--history: the shapes of history measured (also the hostile logouts, reused, leads)",
    )
    bench_parser.add_argument(
        "--budget-s",
        type=float,
        default=300.0,
        help="--history: how long each shape's history may take to grow",
    )
    bench_parser.add_argument(
        "--probe-sessions",
        type=int,
        default=50,
        help="--history: the sessions measured at each size, at most (those before it)",
    )
    bench_parser.set_defaults(func=cmd_bench)
    bare_parser = sub.add_parser("bench-bare")  # internal to `idp bench`: no help, not listed
    bare_parser.add_argument("--our-consumer", action="store_true", help="the worker's consumer")
    bare_parser.set_defaults(func=cmd_bench_bare)
    inspect_parser = sub.add_parser(
        "inspect", help="a profile by user_id, e-mail, anonymous_id or contact_id, and its history"
    )
    inspect_parser.add_argument("workspace_id")
    inspect_parser.add_argument("identifier")
    inspect_parser.add_argument("--html", type=Path, metavar="FILE",
                                help="write a self-contained page drawing the profile")  # fmt: skip
    inspect_parser.set_defaults(func=cmd_inspect)
    replay_parser = sub.add_parser(
        "replay", help="replay the inputs into separate state and topics"
    )
    replay_parser.add_argument("name", help="names the replay's consumer group and Redis namespace")
    replay_parser.add_argument("--to-prefix", help="output topic prefix (default replay.NAME.)")
    replay_parser.add_argument("--from", dest="since", help="start at this RFC 3339 time")
    replay_parser.add_argument("--timeout", type=float, default=3600.0)
    replay_parser.set_defaults(func=cmd_replay)
    erase_parser = sub.add_parser("erase", help="erase a user or a device (right to be forgotten)")
    erase_parser.add_argument("workspace_id")
    erased = erase_parser.add_mutually_exclusive_group(required=True)
    erased.add_argument("--user-id", help="the user_id to erase")
    erased.add_argument("--anonymous-id", help="the device's anonymous_id to erase")
    erase_parser.add_argument("--reason", help="free text (the worker keeps none of it)")
    erase_parser.set_defaults(func=cmd_erase)
    restore_parser = sub.add_parser("restore", help="rebuild Redis state from the state changelog")
    restore_parser.add_argument("--namespace", help="the Redis namespace (default: the worker's)")
    restore_parser.add_argument("--prefix", help="the changelog's topic prefix (default: the "
                                "worker's output prefix)")  # fmt: skip
    whole = restore_parser.add_mutually_exclusive_group()
    whole.add_argument(
        "--from-empty", action="store_true", help="read it all; refuse a namespace holding keys"
    )
    whole.add_argument(
        "--force", action="store_true", help="read it all into a namespace that holds keys"
    )
    restore_parser.set_defaults(func=cmd_restore)
    for name, command in sub.choices.items():
        what, example = _HELP.get(name, ("", ""))
        command.description = command.description or textwrap.fill(what, 88)
        command.epilog = command.epilog or (f"example:\n  {example}" if example else None)
        command.formatter_class = argparse.RawDescriptionHelpFormatter
    return parser


# What each command does and an example, for its --help.
_HELP = {
    "worker": ("Run the Faust worker in the foreground: resolve the telemetry topics into "
               "identities, with state in Redis.",
               "IDP_SECRETS_FILE=deploy/example-secrets.json idp worker"),
    "topics": ("Create the topics of the wire contract that are missing (idempotent).",
               "idp --bootstrap kafka:9092 --topic-prefix staging. topics"),
    "stack": ("Start, stop or show the local Kafka (KRaft) and Redis, no Docker needed; or run "
              "one of Kafka's own tools from the local stack's jars.",
              "idp stack up; idp stack kafka-tool kafka-topics --bootstrap-server "
              "127.0.0.1:9092 --list"),
    "demo": ("Start the stack and a background worker, feed a generated journey and print a "
             "summary.", "idp demo --people 500 --seed 8"),
    "bench": ("Measure throughput against a bare Faust agent, then latency at a fraction of the "
              "worker's peak.", "idp bench --events 100000 --load 0.5"),
    "bench-bare": ("Internal to `idp bench`: a Faust agent that only iterates the input topics.",
                   "idp bench-bare --our-consumer"),
    "inspect": ("Show the profile a user_id, e-mail, anonymous_id or contact_id resolves to: "
                "its devices, sessions, merges, refused links and why; --html draws it as a page.",
                "idp inspect acme user-42 --html user-42.html"),
    "replay": ("Replay the input topics into the Redis namespace replay-NAME and topics "
               "replay.NAME.identity.*, never touching live state.",
               "idp replay q4-audit --from 2026-11-01T00:00:00Z"),
    "erase": ("Produce a request proven with the workspace's secret on privacy.erase: the "
              "worker removes the user's or device's profiles and facts (R16).",
              "idp erase acme --user-id user-42 --reason 'support ticket 1234'"),
    "restore": ("Apply the state changelog to Redis: the tail the namespace lacks (from its "
                "markers), or all of it (--from-empty, --force). Idempotent.",
                "idp restore --from-empty"),
}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `idp` console script."""
    logging.getLogger("aiokafka").setLevel(logging.WARNING)
    logging.basicConfig(level=os.environ.get("IDP_LOG_LEVEL", "info").upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")  # fmt: skip
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (Unreachable, UnreadableState) as exc:  # the message is the one line to print
        print(f"idp {args.command}: {exc}", file=sys.stderr)
        return 2
    except ValidationError as exc:  # a setting from the environment that cannot be read
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'settings'}: {e['msg']}"
                             for e in exc.errors())  # fmt: skip
        print(f"idp {args.command}: bad configuration: {problems}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
