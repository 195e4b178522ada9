"""A consumer stopped while a failed fetch request waits out its retry backoff (aiokafka#647)."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import RequestTimedOutError
from aiokafka.protocol.fetch import FetchRequest

from pipeline.ops.admin import ensure_topics, stop_consumer
from pipeline.ops.topics import TopicSpec

pytestmark = pytest.mark.integration


async def consumer_in_backoff(bootstrap: str) -> tuple[AIOKafkaConsumer, list[int]]:
    """A started consumer whose fetch requests time out, one of them now in its 60 s backoff.

    Every other request (metadata, offsets) reaches the real broker; a fetch fails as one to a
    broker that is too slow to answer does.
    """
    topic = f"stop{uuid.uuid4().hex[:10]}.in"
    await ensure_topics(bootstrap, [TopicSpec(topic, 1, {})])
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False,
                                retry_backoff_ms=60_000)  # fmt: skip
    await consumer.start()
    send = consumer._client.send
    fetches: list[int] = []

    async def slow_fetches(node_id, request, **kwargs):
        if isinstance(request, FetchRequest):
            fetches.append(node_id)
            raise RequestTimedOutError()
        return await send(node_id, request, **kwargs)

    consumer._client.send = slow_fetches
    tp = TopicPartition(topic, 0)
    consumer.assign([tp])
    consumer.seek(tp, 0)
    deadline = asyncio.get_running_loop().time() + 30
    while not (fetches and consumer._fetcher._pending_tasks):
        assert asyncio.get_running_loop().time() < deadline, "no fetch request was made in 30 s"
        await asyncio.sleep(0.01)
    return consumer, fetches


async def test_a_consumer_stops_while_a_fetch_waits_out_its_backoff(
    servers: tuple[str, str],
) -> None:
    consumer, _ = await consumer_in_backoff(servers[0])
    await asyncio.wait_for(stop_consumer(consumer), timeout=30)
    assert consumer._closed
    assert not [conn for conn in consumer._client._conns.values() if conn.connected()]


async def test_the_callers_own_cancellation_still_propagates(servers: tuple[str, str]) -> None:
    consumer, _ = await consumer_in_backoff(servers[0])
    stopping = asyncio.create_task(stop_consumer(consumer))
    await asyncio.sleep(0)  # let it begin the stop (a step of the loop, not a wait for time)
    stopping.cancel()
    with pytest.raises(asyncio.CancelledError):
        await stopping
    await consumer._client.close()
