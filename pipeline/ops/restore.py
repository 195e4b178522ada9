"""Rebuild a Redis namespace from the state changelog, or catch it up with the changelog's tail.

`catch_up` reads each changelog partition from the offset its marker in Redis names (from
the beginning when there is none, or with `from_beginning`) to the end the partition had when
it started, applies the records (`Store.apply`: a record Redis holds in the same or a newer
version is left as it is, a tombstone deletes), and then moves the markers to those ends. It
is idempotent and may run while workers commit: nothing it writes can replace a newer version.
`idp restore` runs it for an operator; a worker runs it at start, and whenever it finds a
marker gone back (Redis lost writes), before it decides anything (`IDP_AUTO_RESTORE`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from aiokafka import AIOKafkaConsumer
from aiokafka.structs import TopicPartition

from pipeline.ops.admin import stop_consumer
from pipeline.state.base import Change, Keys, Store
from pipeline.state.changelog import decode

logger = logging.getLogger(__name__)

APPLY_CHUNK = 2000  # records per round trip to Redis
QUIET_ROUNDS = 3  # empty fetches (of a second each) after which a partition has nothing more
Progress = Callable[[int, int], None]  # (records read so far, records to read)


@dataclass
class Caught:
    """What a catch-up did."""

    read: int = 0  # changelog records read
    changed: int = 0  # Redis keys written or deleted
    partitions: int = 0  # changelog partitions that had records to apply
    seconds: float = 0.0
    behind: dict[int, int] = field(default_factory=dict)  # partition -> records it was behind


async def markers(store: Store, keys: Keys, partitions: list[int]) -> dict[int, int]:
    """Changelog partition -> the next offset to apply (0: nothing of it applied here)."""
    records = await store.read([keys.changelog_marker(p) for p in partitions])
    return {p: r.version for p, r in zip(partitions, records, strict=True)}


async def changelog_ends(bootstrap: str, topic: str) -> dict[int, int]:
    """Partition -> end offset of the changelog topic (it must exist)."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        return {tp.partition: end for tp, end in (await _ends(consumer, topic)).items()}
    finally:
        await stop_consumer(consumer)


async def _ends(consumer: AIOKafkaConsumer, topic: str) -> dict[TopicPartition, int]:
    partitions = consumer.partitions_for_topic(topic)
    for _ in range(50):  # a topic created moments ago takes a metadata round to show
        if partitions:
            break
        await consumer._client.force_metadata_update()  # aiokafka has no public call
        partitions = consumer.partitions_for_topic(topic)
        if not partitions:
            await asyncio.sleep(0.1)
    if not partitions:
        raise LookupError(f"the state changelog topic {topic} does not exist (run idp topics)")
    return await consumer.end_offsets([TopicPartition(topic, p) for p in sorted(partitions)])


async def catch_up(
    store: Store,
    keys: Keys,
    bootstrap: str,
    topic: str,
    *,
    from_beginning: bool = False,
    progress: Progress | None = None,
) -> Caught:
    """Apply the changelog from each partition's marker (or its beginning) to its end now."""
    started = time.monotonic()
    caught = Caught()
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False,
                                auto_offset_reset="earliest", max_partition_fetch_bytes=4 << 20,
                                fetch_max_bytes=16 << 20)  # fmt: skip
    await consumer.start()
    try:
        ends = await _ends(consumer, topic)
        applied = await markers(store, keys, [tp.partition for tp in ends])
        todo: dict[TopicPartition, int] = {}
        for tp, end in ends.items():
            start = 0 if from_beginning else applied[tp.partition]
            if start < end:
                todo[tp] = end
                caught.behind[tp.partition] = end - start
        total = sum(caught.behind.values())
        caught.partitions = len(todo)
        if todo:
            consumer.assign(list(todo))
            for tp in todo:
                start = 0 if from_beginning else applied[tp.partition]
                if start:
                    consumer.seek(tp, start)
                else:
                    await consumer.seek_to_beginning(tp)
        prefix = keys.prefix()
        pending: dict[TopicPartition, int] = dict(todo)
        quiet = 0  # fetches in a row that brought nothing
        while pending:
            batches = await consumer.getmany(*pending, timeout_ms=1000, max_records=APPLY_CHUNK)
            changes: list[Change] = []
            for tp, records in batches.items():
                for record in records:
                    if record.offset < pending.get(tp, 0) and record.key is not None:
                        changes.append(decode(record.key, record.value, prefix))
                caught.read += len(records)
            if changes:
                caught.changed += await store.apply(changes)
            quiet = 0 if batches else quiet + 1
            for tp in list(pending):
                # Compaction can remove a partition's last records: nothing is left to fetch
                # below its end, and the position never reaches it.
                if await consumer.position(tp) >= pending[tp] or quiet >= QUIET_ROUNDS:
                    del pending[tp]
            if progress is not None:
                progress(min(caught.read, total), total)
        # Every record below the ends is now in Redis: the markers say so.
        await store.apply([Change(keys.changelog_marker(tp.partition), end, b"")
                           for tp, end in todo.items()])  # fmt: skip
    finally:
        await stop_consumer(consumer)
    caught.seconds = time.monotonic() - started
    return caught
