"""The outbox sweep on the real Redis and broker: found through the indexes, SCAN only rarely.

A dead worker's outbox records are found through the outbox indexes of the configured
workspaces; records no index lists (an earlier release's, written without an index entry, or of
a workspace no longer configured) are found by the SCAN a sweep makes when the namespace's
flag has expired, the first sweep after an upgrade among them; the flag then holds the next
SCANs off for `rescan_s`.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass

import orjson
import pytest
import redis.asyncio as aioredis
from aiokafka import AIOKafkaProducer

from pipeline.ops.admin import ensure_topics, remove_run
from pipeline.ops.topics import topic_specs
from pipeline.state.base import Commit, Keys, Store
from pipeline.state.factory import open_store
from pipeline.worker.outbox import Outbox
from pipeline.worker.processor import outbox_blob
from schemas.topics import MERGED
from tests.integration.conftest import KEEP
from tests.support.kafka import read_topics

pytestmark = pytest.mark.integration

CONFIGURED = ["ws-a", "ws:b{odd}"]


class CountingStore:
    """The worker's store, counting the SCANs made through it."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.scans = 0

    def __getattr__(self, name: str) -> object:
        return getattr(self.store, name)

    async def scan(self, pattern: str) -> list[str]:
        self.scans += 1
        return await self.store.scan(pattern)


@dataclass
class Run:
    keys: Keys
    store: CountingStore
    client: aioredis.Redis
    producer: AIOKafkaProducer
    bootstrap: str
    prefix: str

    def outbox(self, *, rescan_s: int = 86400) -> Outbox:
        async def send(topic: str, key: bytes | None, value: bytes | None) -> Awaitable[object]:
            return await self.producer.send(self.prefix + topic, value, key=key)

        return Outbox(self.store, self.keys, send, workspaces=CONFIGURED,  # type: ignore[arg-type]
                      rescan_s=rescan_s)  # fmt: skip

    async def commit_outbox(self, workspace_id: str, ident: str, *, created: float) -> str:
        """An outbox record written by this release's commit (listed in its index)."""
        key = self.keys.outbox(workspace_id, ident)
        blob = outbox_blob([(MERGED, ident.encode(), merged(ident))], created)
        assert await self.store.commit([Commit(checks={key: 0}, writes={key: blob})]) == [True]
        return key

    async def legacy_outbox(self, workspace_id: str, ident: str, *, created: float) -> str:
        """An outbox record as an earlier release wrote it: the record alone, in no index."""
        key = self.keys.outbox(workspace_id, ident)
        blob = outbox_blob([(MERGED, ident.encode(), merged(ident))], created)
        await self.client.hset(key, mapping={"v": 1, "d": blob})
        return key

    async def merged_sent(self) -> list[str]:
        log = await read_topics(self.bootstrap, [self.prefix + MERGED], self.prefix)
        return sorted(value["event_id"] for value in log.values(MERGED))


def merged(ident: str) -> bytes:
    return orjson.dumps({"event_id": f"m-{ident}"})


@pytest.fixture
async def run(servers: tuple[str, str]) -> AsyncIterator[Run]:
    bootstrap, redis_url = servers
    name = uuid.uuid4().hex[:10]
    prefix, namespace = f"o{name}.", f"o{name}"
    await ensure_topics(bootstrap, topic_specs(prefix, 1, retention_ms=KEEP))
    store = open_store(redis_url, marker_ttl_s=3600)
    client = aioredis.Redis.from_url(redis_url)
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
    await producer.start()
    keys = Keys(namespace)
    try:
        yield Run(keys, CountingStore(store), client, producer, bootstrap, prefix)
    finally:
        await producer.stop()
        await client.delete(keys.outbox_scan_marker())
        await client.aclose()
        await store.close()
        await remove_run(bootstrap, redis_url, prefix, namespace)


async def test_a_dead_workers_records_are_found_through_the_indexes_alone(run: Run) -> None:
    await run.store.mark(run.keys.outbox_scan_marker(), 3600, only_new=False)  # SCANned lately
    now = time.time()
    old = [await run.commit_outbox(ws, f"old-{n}", created=now - 60)
           for n, ws in enumerate(CONFIGURED)]  # fmt: skip
    young = await run.commit_outbox("ws-a", "young", created=now)
    outbox = run.outbox()
    # Listed as committed now: a sweep for records at least 15 s old leaves them all.
    assert await outbox.drain(15.0) == 0
    for key in [*old, young]:
        assert await run.client.exists(key)
    # A sweep of everything committed until now sends them all, without SCAN.
    assert await outbox.drain(0.0) == 3
    assert run.store.scans == 0
    assert await run.merged_sent() == ["m-old-0", "m-old-1", "m-young"]
    for key in [*old, young]:
        assert not await run.client.exists(key)
    for ws in CONFIGURED:  # every index emptied, so gone
        assert not await run.client.exists(run.keys.outbox_index(ws))


async def test_records_in_no_index_are_found_by_the_first_sweep_and_then_daily(run: Run) -> None:
    now = time.time()
    legacy = await run.legacy_outbox("ws-a", "legacy", created=now - 60)
    removed = await run.commit_outbox("ws-gone", "removed", created=now - 60)  # not configured
    live = await run.legacy_outbox("ws-a", "live", created=now)  # a live worker's, in flight
    outbox = run.outbox()
    # No sweep of the namespace SCANned yet (the first start after an upgrade): this one does.
    assert await outbox.drain(15.0) == 2
    assert run.store.scans == 1
    assert await run.merged_sent() == ["m-legacy", "m-removed"]
    assert not await run.client.exists(legacy) and not await run.client.exists(removed)
    assert await run.client.exists(live)  # too young: a live worker's batch in flight
    ttl = await run.client.ttl(run.keys.outbox_scan_marker())
    assert 86400 - 60 < ttl <= 86400  # no other SCAN for a day, by any worker
    # Another worker's sweep (a rebalance, the 5-minute timer) reads the indexes only.
    assert await run.outbox().drain(0.0) == 0
    assert run.store.scans == 1 and await run.client.exists(live)
    # Once the flag expires, the next sweep SCANs again and finds it.
    await run.client.delete(run.keys.outbox_scan_marker())
    assert await outbox.drain(0.0) == 1
    assert run.store.scans == 2
    assert await run.merged_sent() == ["m-legacy", "m-live", "m-removed"]


async def test_an_index_entry_whose_record_is_gone_is_dropped(run: Run) -> None:
    await run.store.mark(run.keys.outbox_scan_marker(), 3600, only_new=False)
    index = run.keys.outbox_index("ws-a")
    gone = run.keys.outbox("ws-a", "gone")
    # As after a connection lost between a delivered record's UNLINK and its ZREM.
    await run.client.zadd(index, {gone: time.time() - 60})
    assert await run.outbox().drain(0.0) == 0
    assert not await run.client.exists(index)
    assert run.store.scans == 0
