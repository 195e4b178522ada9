"""The gathering fetcher against the real broker: nothing lost, fewer fetch requests."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from aiokafka import AIOKafkaProducer

from pipeline.ops.admin import ensure_topics, remove_run
from pipeline.ops.topics import topic_specs
from pipeline.worker import fetching
from pipeline.worker.fetching import GatheringFetcher
from schemas.topics import INPUT_TOPICS
from tests.integration.conftest import KEEP

RECORDS = 600


async def trickle_and_read(bootstrap: str, redis_url: str, gather_ms: int) -> tuple[list[int], int]:
    """Produce RECORDS values at about one per millisecond while one consumer reads them.

    Returns the values read (in order of one partition) and the consumer's fetch requests.
    """
    prefix = f"fetch{uuid.uuid4().hex[:8]}."
    topic = prefix + INPUT_TOPICS[0]
    await ensure_topics(bootstrap, topic_specs(prefix, 1, retention_ms=KEEP))
    before = GatheringFetcher.gather_wait_ms
    fetching.configure(gather_ms)
    consumer = fetching.GatheringConsumer(topic, bootstrap_servers=bootstrap, group_id=prefix,
                                          auto_offset_reset="earliest", fetch_max_wait_ms=1500)  # fmt: skip
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=0)
    try:
        await consumer.start()
        await producer.start()
        assert isinstance(consumer._fetcher, GatheringFetcher)
        while not consumer.assignment():  # joined the group
            await consumer.getmany(timeout_ms=100)
        read: list[int] = []

        async def reader() -> None:
            while len(read) < RECORDS:
                batch = await consumer.getmany(timeout_ms=1000)
                read.extend(int(m.value) for records in batch.values() for m in records)

        task = asyncio.create_task(reader())
        for value in range(RECORDS):
            await producer.send(topic, str(value).encode())
            await asyncio.sleep(0.001)  # the offered rate, not a wait for a condition
        await asyncio.wait_for(task, timeout=60)
        return read, consumer._fetcher.requests
    finally:
        await producer.stop()
        await consumer.stop()
        fetching.configure(before)
        await remove_run(bootstrap, redis_url, prefix, prefix)  # its topics (it has no keys)


@pytest.mark.integration
async def test_a_caught_up_consumer_gathers_records_into_few_fetches_and_loses_none(
    servers: tuple[str, str],
) -> None:
    bootstrap, redis_url = servers
    read_gathering, gathering = await trickle_and_read(bootstrap, redis_url, gather_ms=5)
    read_eager, eager = await trickle_and_read(bootstrap, redis_url, gather_ms=0)
    assert read_gathering == list(range(RECORDS))
    assert read_eager == list(range(RECORDS))
    # At most one request per 5 ms while records trickle in (0.6 s or more), plus the patient
    # ones around quiet spells; the library's own requests come every record or two.
    assert gathering < RECORDS / 3, (gathering, eager)
    assert gathering < eager * 0.6, (gathering, eager)
