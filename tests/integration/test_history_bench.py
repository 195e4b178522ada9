"""`idp bench --history` end to end on short histories: it measures, and cleans up after itself."""

from __future__ import annotations

import asyncio

import redis.asyncio as aioredis
from aiokafka.admin import AIOKafkaAdminClient

from pipeline.ops.settings import Settings
from pipeline.tools import history


async def test_short_histories_are_measured_and_removed(servers: tuple[str, str]) -> None:
    bootstrap, redis_url = servers
    settings = Settings(kafka_bootstrap_servers=bootstrap, redis_url=redis_url)
    shapes = await history.run(settings, sizes=(2, 6), shapes=("laptop", "email"), budget_s=120)
    assert [shape.name for shape in shapes] == ["laptop", "email"]
    for shape in shapes:
        assert [point.size for point in shape.points] == [2, 6]
        for point in shape.points:  # reached within the budget, and measured
            assert point.ms_per_event is not None and point.ms_per_event >= 0
            assert point.largest_record > 0
        # laptop: its device record is the largest; email: the e-mail's or a contact's.
        assert shape.points[-1].largest_kind in {"dev", "user", "email", "contact"}
    client = aioredis.Redis.from_url(redis_url)
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        for shape in shapes:
            run = f"hist{shape.run}"
            assert [k async for k in client.scan_iter(match=f"{run}*", count=1000)] == []
            deadline = asyncio.get_running_loop().time() + 30  # topic deletion is asynchronous
            while [t for t in await admin.list_topics() if t.startswith(run)]:
                assert asyncio.get_running_loop().time() < deadline, "the history topics stayed"
                await asyncio.sleep(0.2)
    finally:
        await admin.close()
        await client.aclose()
