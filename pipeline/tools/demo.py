"""`idp demo`: feed a generated journey through the running pipeline and summarise what came out.

Progress is read from the broker, not guessed: the worker's committed consumer offsets against
the end of the input topics. The summary counts what the output topics received since the
demo started.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from pipeline.ops.admin import stop_consumer
from pipeline.ops.settings import Settings
from pipeline.tools.journey import Record
from schemas.topics import INPUT_TOPICS, MERGED, OUTPUT_TOPICS, PROFILES, REJECTED, SHUTDOWN


async def end_offsets(bootstrap: str, topics: list[str]) -> dict[TopicPartition, int]:
    """The current end offset of every partition of `topics`."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap)
    await consumer.start()
    try:
        partitions = [
            TopicPartition(topic, p)
            for topic in topics
            for p in sorted(
                consumer.partitions_for_topic(topic) or await _partitions(consumer, topic)
            )
        ]
        return await consumer.end_offsets(partitions)
    finally:
        await stop_consumer(consumer)


async def _partitions(consumer: AIOKafkaConsumer, topic: str) -> set[int]:
    await consumer._client.force_metadata_update()  # aiokafka has no public call
    return consumer.partitions_for_topic(topic) or set()


async def produce(
    bootstrap: str, settings: Settings, records: list[Record], progress: Progress
) -> None:
    """Produce the journey in order, keyed by anonymous_id."""
    task = progress.add_task("producing telemetry", total=len(records))
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=5, acks="all")
    await producer.start()
    try:
        for index, record in enumerate(records, 1):
            value = record.value if isinstance(record.value, bytes) else orjson.dumps(record.value)
            await producer.send(settings.topic(record.topic), value, key=record.key.encode(),
                                timestamp_ms=record.timestamp_ms)  # fmt: skip
            if index % 200 == 0:
                progress.update(task, completed=index)
        await producer.flush()
        progress.update(task, completed=len(records))
    finally:
        await producer.stop()


async def wait_processed(
    settings: Settings,
    targets: dict[TopicPartition, int],
    progress: Progress,
    *,
    timeout: float,
    what: str = "worker processing",
) -> bool:
    """Wait until the worker's group has committed up to `targets`; show how far it is."""
    start = {tp: 0 for tp in targets}
    total = sum(targets.values())
    task = progress.add_task(what, total=total)
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap_servers)
    await admin.start()
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            try:
                committed = await admin.list_consumer_group_offsets(settings.app_id)
            except KafkaError:  # the group or its coordinator does not exist yet
                committed = {}
            done = sum(
                min(committed[tp].offset, end) if tp in committed and committed[tp].offset >= 0
                else start[tp]
                for tp, end in targets.items()
            )  # fmt: skip
            progress.update(task, completed=done)
            if done >= total:
                return True
            await asyncio.sleep(0.5)
        return False
    finally:
        await admin.close()


async def summarise(settings: Settings, since: dict[TopicPartition, int]) -> dict[str, Counter]:
    """Count what each output topic received after the `since` offsets."""
    until = await end_offsets(settings.kafka_bootstrap_servers, list({tp.topic for tp in since}))
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.kafka_bootstrap_servers,
                                enable_auto_commit=False)  # fmt: skip
    await consumer.start()
    counts: dict[str, Counter] = {name: Counter() for name in OUTPUT_TOPICS}
    logical = {settings.topic(name): name for name in OUTPUT_TOPICS}
    try:
        wanted = {tp: end for tp, end in until.items() if end > since.get(tp, 0)}
        if not wanted:
            return counts
        consumer.assign(list(wanted))
        for tp in wanted:
            consumer.seek(tp, since.get(tp, 0))
        remaining = dict(wanted)
        while remaining:
            batch = await consumer.getmany(timeout_ms=1000)
            for tp, messages in batch.items():
                for message in messages:
                    if message.offset >= wanted[tp]:
                        continue
                    value = orjson.loads(message.value)
                    name = logical[tp.topic]
                    if name == PROFILES:
                        counts[name][value["type"]] += 1
                    elif name == REJECTED:
                        counts[name][value["reason"]] += 1
                    else:
                        counts[name][value["reason"]] += 1
                if messages and messages[-1].offset + 1 >= wanted[tp]:
                    remaining.pop(tp, None)
        return counts
    finally:
        await stop_consumer(consumer)


async def run(settings: Settings, records: list[Record], *, timeout: float = 300.0) -> int:
    """Feed `records`, wait for the worker, print the summary; 0 when all was processed."""
    console = Console()
    outputs = [settings.topic(name) for name in OUTPUT_TOPICS]
    inputs = [settings.topic(name) for name in INPUT_TOPICS]
    before = await end_offsets(settings.kafka_bootstrap_servers, outputs)
    columns = (TextColumn("{task.description:<22}"), BarColumn(), MofNCompleteColumn(),
               TimeElapsedColumn())  # fmt: skip
    started = time.monotonic()
    with Progress(*columns, console=console) as progress:
        await produce(settings.kafka_bootstrap_servers, settings, records, progress)
        targets = await end_offsets(settings.kafka_bootstrap_servers, inputs)
        caught_up = await wait_processed(settings, targets, progress, timeout=timeout)
    elapsed = time.monotonic() - started
    counts = await summarise(settings, before)
    table = Table(title=f"identity-pipeline demo: {len(records)} events in {elapsed:.1f}s")
    table.add_column("what")
    table.add_column("count", justify="right")
    table.add_column("detail")
    rows = (
        ("events in", len(records), Counter(r.topic for r in records)),
        ("profiles published", sum(counts[PROFILES].values()), counts[PROFILES]),
        ("merges", sum(counts[MERGED].values()), counts[MERGED]),
        ("shutdowns", sum(counts[SHUTDOWN].values()), counts[SHUTDOWN]),
        ("rejections", sum(counts[REJECTED].values()), counts[REJECTED]),
    )
    for what, count, detail in rows:
        table.add_row(what, str(count), ", ".join(f"{k} {v}" for k, v in sorted(detail.items())))
    console.print(table)
    if not caught_up:
        console.print(f"[red]the worker did not catch up within {timeout:.0f}s; see its log[/red]")
        return 1
    return 0
