"""After a rebalance every partition goes back to its committed offset, never-committed ones too.

Faust drops what it fetched and did not process at a rebalance and seeks to the committed
offsets (`transport.seek_to_committed`); a partition whose records were dropped and that was
never committed must be read again from its beginning, on the real broker.
"""

from __future__ import annotations

import uuid

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.structs import OffsetAndMetadata

from pipeline.ops.admin import ensure_topics, stop_consumer
from pipeline.ops.topics import TopicSpec
from pipeline.worker.transport import seek_to_committed

pytestmark = pytest.mark.integration


async def read_all(consumer: AIOKafkaConsumer, tp: TopicPartition, count: int) -> list[bytes]:
    """The next `count` values of `tp` (within 30 s)."""
    values: list[bytes] = []
    for _ in range(300):
        if len(values) >= count:
            break
        batch = await consumer.getmany(tp, timeout_ms=100)
        values += [record.value for record in batch.get(tp, [])]
    return values


async def a_partition_read_and_not_committed(
    bootstrap: str,
) -> tuple[AIOKafkaConsumer, TopicPartition]:
    """A consumer of a group that has read a partition's three records and committed nothing."""
    topic = f"seek{uuid.uuid4().hex[:10]}.in"
    await ensure_topics(bootstrap, [TopicSpec(topic, 1, {})])
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        for value in (b"a", b"b", b"c"):
            await producer.send_and_wait(topic, value, partition=0)
    finally:
        await producer.stop()
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=f"g-{topic}",
                                enable_auto_commit=False, auto_offset_reset="earliest")  # fmt: skip
    await consumer.start()
    tp = TopicPartition(topic, 0)
    consumer.assign([tp])
    assert await read_all(consumer, tp, 3) == [b"a", b"b", b"c"]
    return consumer, tp


async def test_a_partition_never_committed_is_read_again_from_its_beginning(
    servers: tuple[str, str],
) -> None:
    consumer, tp = await a_partition_read_and_not_committed(servers[0])
    try:
        await consumer.seek_to_committed()  # aiokafka's own leaves it where it was
        assert await consumer.position(tp) == 3
        assert await seek_to_committed(consumer) == {tp: None}
        assert await consumer.position(tp) == 0
        assert await read_all(consumer, tp, 3) == [b"a", b"b", b"c"]
    finally:
        await stop_consumer(consumer)


async def test_partitions_committed_at_zero_or_later_go_back_to_their_commit(
    servers: tuple[str, str],
) -> None:
    consumer, tp = await a_partition_read_and_not_committed(servers[0])
    try:
        await consumer.commit({tp: OffsetAndMetadata(0, "")})
        assert await seek_to_committed(consumer) == {tp: 0}
        assert await consumer.position(tp) == 0
        assert await read_all(consumer, tp, 3) == [b"a", b"b", b"c"]
        await consumer.commit({tp: OffsetAndMetadata(2, "")})
        assert await seek_to_committed(consumer) == {tp: 2}
        assert await read_all(consumer, tp, 1) == [b"c"]
    finally:
        await stop_consumer(consumer)
