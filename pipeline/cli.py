"""The `idp` command: run the worker, manage the local stack, feed the demo journey."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import secrets
import signal
import sys
from pathlib import Path

import orjson

from pipeline.ops import stack
from pipeline.ops.settings import SecretsFileError, Settings

logger = logging.getLogger(__name__)


def _settings(args: argparse.Namespace) -> Settings:
    overrides = {
        name: getattr(args, name)
        for name in ("kafka_bootstrap_servers", "redis_url", "topic_prefix", "secrets_file")
        if getattr(args, name, None) is not None
    }
    return Settings(**overrides)


def cmd_worker(args: argparse.Namespace) -> int:
    """Run the Faust worker in the foreground."""
    import faust

    from pipeline.worker.app import create_app, settle_heap

    settings = _settings(args)
    try:
        workspaces = settings.workspace_secrets
    except SecretsFileError as exc:
        print(f"idp worker: {exc}", file=sys.stderr)
        return 2
    if not workspaces:
        print("idp worker: no IDP_SECRETS_FILE (or it is empty): every event will be rejected "
              "as unknown_workspace", file=sys.stderr)  # fmt: skip
    app = create_app(settings)
    settle_heap()
    worker = faust.Worker(app, loglevel=settings.log_level, quiet=True)
    # Faust's terminal spinner sets the root logger to DEBUG while it spins (~15% slower).
    worker.spinner = None
    worker.execute_from_commandline()
    return 0


def cmd_topics(args: argparse.Namespace) -> int:
    """Create the topics of SPEC §3 (idempotent)."""
    from pipeline.ops.admin import ensure_topics
    from pipeline.ops.topics import topic_specs

    settings = _settings(args)
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
    if (brokers or 1) > 1:
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
    from pipeline.tools import bench

    if cmd_stack(argparse.Namespace(**{**vars(args), "action": "up"})) != 0:
        return 1
    settings = _settings(args)

    def interrupted(signum: int, frame: object) -> None:
        raise KeyboardInterrupt  # the run then stops its processes, removes its topics and keys

    signal.signal(signal.SIGTERM, interrupted)
    try:
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
    """Print the profile an identifier resolves to, with its history."""
    from pipeline.tools.inspect import inspect

    lines = asyncio.run(inspect(_settings(args), args.workspace_id, args.identifier))
    if not lines:
        print(f"no contact in workspace {args.workspace_id!r} for {args.identifier!r}",
              file=sys.stderr)  # fmt: skip
        return 1
    print("\n".join(lines))
    return 0


def cmd_replay(args: argparse.Namespace) -> int:
    """Replay the input topics into separate state and output topics."""
    from pipeline.tools import replay

    settings = _settings(args)
    since = replay.parse_since(args.since) if args.since else None
    to_prefix = args.to_prefix or f"replay.{args.name}."
    return asyncio.run(replay.run(settings, name=args.name, to_prefix=to_prefix, since=since,
                                  timeout=args.timeout))  # fmt: skip


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
    sub = parser.add_subparsers(dest="command", required=True)
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
    bench_parser.set_defaults(func=cmd_bench)
    bare_parser = sub.add_parser("bench-bare", help=argparse.SUPPRESS)
    bare_parser.add_argument("--our-consumer", action="store_true", help="the worker's consumer")
    bare_parser.set_defaults(func=cmd_bench_bare)
    inspect_parser = sub.add_parser(
        "inspect", help="a profile by user_id, e-mail, anonymous_id or contact_id, and its history"
    )
    inspect_parser.add_argument("workspace_id")
    inspect_parser.add_argument("identifier")
    inspect_parser.set_defaults(func=cmd_inspect)
    replay_parser = sub.add_parser(
        "replay", help="replay the inputs into separate state and topics"
    )
    replay_parser.add_argument("name", help="names the replay's consumer group and Redis namespace")
    replay_parser.add_argument("--to-prefix", help="output topic prefix (default replay.NAME.)")
    replay_parser.add_argument("--from", dest="since", help="start at this RFC 3339 time")
    replay_parser.add_argument("--timeout", type=float, default=3600.0)
    replay_parser.set_defaults(func=cmd_replay)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `idp` console script."""
    logging.getLogger("aiokafka").setLevel(logging.WARNING)
    logging.basicConfig(level=os.environ.get("IDP_LOG_LEVEL", "info").upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")  # fmt: skip
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
