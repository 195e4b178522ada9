"""`idp replay`: the input topics again, into separate state and outputs, for analytics.

The replay runs a worker under its own consumer group and Redis namespace, reading the live
input topics from the beginning (or from a time) and writing to output topics under another
prefix, so live state and live outputs are never touched: first `privacy.erase` alone, then
every input. It shows progress and stops when it has caught up with the end of the input
topics as they were when it started.
"""

from __future__ import annotations

import os
import sys
from datetime import datetime
from pathlib import Path

from aiokafka import AIOKafkaConsumer
from aiokafka.structs import OffsetAndMetadata
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from pipeline.ops.admin import ensure_topics, stop_consumer
from pipeline.ops.processes import spawn, stop
from pipeline.ops.settings import Settings
from pipeline.ops.topics import topic_specs
from pipeline.tools import demo
from schemas.topics import ERASE, INPUT_TOPICS, OUTPUT_TOPICS, STATE_CHANGELOG


async def start_from(settings: Settings, group: str, since: datetime) -> None:
    """Commit the group's offsets at the first record stamped at or after `since`.

    Every input topic but `privacy.erase`: erasure requests are read from the beginning
    whatever the time, so that a replay erases every subject erased before it (R16).
    """
    inputs = [settings.topic(name) for name in INPUT_TOPICS if name != ERASE]
    ends = await demo.end_offsets(settings.kafka_bootstrap_servers, inputs)
    erasures = await demo.end_offsets(settings.kafka_bootstrap_servers, [settings.topic(ERASE)])
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.kafka_bootstrap_servers, group_id=group,
                                enable_auto_commit=False)  # fmt: skip
    await consumer.start()
    try:
        consumer.assign([*ends, *erasures])
        found = await consumer.offsets_for_times({tp: int(since.timestamp() * 1000) for tp in ends})
        offsets = {tp: OffsetAndMetadata(found[tp].offset if found[tp] else ends[tp], "")
                   for tp in ends}  # fmt: skip
        starts = await consumer.beginning_offsets(list(erasures))
        offsets.update({tp: OffsetAndMetadata(starts[tp], "") for tp in erasures})
        await consumer.commit(offsets)
    finally:
        await stop_consumer(consumer)


async def run(
    settings: Settings, *, name: str, to_prefix: str, since: datetime | None, timeout: float
) -> int:
    """Replay into `to_prefix`* topics and the `replay-<name>` namespace; 0 once caught up."""
    console = Console()
    group, namespace = f"{settings.app_id}-replay-{name}", f"replay-{name}"
    if to_prefix == settings.topic_prefix:
        console.print("[red]the replay's output prefix must differ from the live topics'[/red]")
        return 2
    specs = [s for s in topic_specs(to_prefix, settings.partitions)
             if s.name.removeprefix(to_prefix) in (*OUTPUT_TOPICS, STATE_CHANGELOG)]  # fmt: skip
    await ensure_topics(settings.kafka_bootstrap_servers, specs)
    if since is not None:
        await start_from(settings, group, since)
    inputs = [settings.topic(name) for name in INPUT_TOPICS]
    targets = await demo.end_offsets(settings.kafka_bootstrap_servers, inputs)
    env = {
        "KAFKA_BOOTSTRAP_SERVERS": settings.kafka_bootstrap_servers,
        "REDIS_URL": settings.redis_url, "IDP_TOPIC_PREFIX": settings.topic_prefix,
        "IDP_OUTPUT_TOPIC_PREFIX": to_prefix,
        "IDP_APP_ID": group, "IDP_STATE_NAMESPACE": namespace,
        "IDP_SECRETS_FILE": str(settings.secrets_file or ""), "IDP_COMMIT_INTERVAL_S": "0.5",
    }  # fmt: skip
    run_dir = Path(os.environ.get("IDP_RUN_DIR", ".run"))
    run_dir.mkdir(parents=True, exist_ok=True)
    log = run_dir / f"replay-{name}.log"
    # The erasure requests first, alone: the replay then refuses every event of an erased
    # subject stamped before its erasure (R16), whatever order it reads the other topics in.
    erasures = {tp: end for tp, end in targets.items() if tp.topic == settings.topic(ERASE)}
    phases = [("worker processing", env, targets, log)]
    if sum(erasures.values()):
        first = run_dir / f"replay-{name}-erasures.log"
        phases.insert(0, ("erasures first", {**env, "IDP_INPUTS": ERASE}, erasures, first))
    columns = (TextColumn("{task.description:<22}"), BarColumn(), MofNCompleteColumn(),
               TimeElapsedColumn())  # fmt: skip
    for what, environment, wanted, phase_log in phases:
        worker = spawn("worker", environment, phase_log)
        try:
            with Progress(*columns, console=console) as progress:
                caught_up = await demo.wait_processed(
                    settings.model_copy(update={"app_id": group}), wanted, progress,
                    timeout=timeout, what=what,
                )  # fmt: skip
        finally:
            stop(worker)
        if not caught_up:
            console.print(f"[red]the replay did not catch up within {timeout:.0f}s ({what}); "
                          f"see {phase_log}[/red]")  # fmt: skip
            return 1
    console.print(f"caught up: {sum(targets.values()):,} input records replayed into {to_prefix}* "
                  f"(state in Redis namespace {namespace!r}, log {log})")  # fmt: skip
    return 0


def parse_since(value: str) -> datetime:
    """An RFC 3339 time for --from."""
    from schemas.time import parse_timestamp

    try:
        return parse_timestamp(value)
    except ValueError as exc:
        print(f"idp replay: --from: {exc}", file=sys.stderr)
        raise SystemExit(2) from exc
