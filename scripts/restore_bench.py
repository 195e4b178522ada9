"""`idp restore`'s speed: rebuild an empty namespace from a changelog of N records.

Usage: .venv/bin/python scripts/restore_bench.py [RECORDS]   (default 1,000,000; stack up)
Writes N changelog records (the shapes and sizes of a worker's: device, contact, user, e-mail
and processed-event records of 2,000 workspaces) to a fresh changelog topic, times
`catch_up` into an empty namespace, checks a sample, prints records/s, and removes both.
"""

from __future__ import annotations

import asyncio
import random
import sys
import time
import uuid

from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient

from pipeline.ops.admin import ensure_topics, remove_keys
from pipeline.ops.restore import catch_up
from pipeline.ops.settings import Settings
from pipeline.ops.topics import topic_specs
from pipeline.state.base import Change, Keys, Record
from pipeline.state.changelog import encode
from pipeline.state.factory import open_store
from schemas.topics import STATE_CHANGELOG

SIZES = {"dev": 420, "contact": 600, "user": 160, "email": 90, "evt": 16}


def changes(count: int, keys: Keys) -> list[Change]:
    """`count` records of the sizes a worker writes, spread over 2,000 workspaces."""
    rng = random.Random(7)
    kinds = list(SIZES)
    made = []
    for i in range(count):
        kind = kinds[i % len(kinds)]
        data = rng.randbytes(SIZES[kind])
        expires = int(time.time() * 1000) + 30 * 86_400_000 if kind == "evt" else 0
        made.append(Change(keys.of(f"ws-{i % 2000}", kind, f"id-{i}"), 1 + i % 3, data, expires))
    return made


async def main(count: int) -> None:
    """Write the changelog, restore it, check a sample, clean up."""
    settings = Settings()
    run = uuid.uuid4().hex[:8]
    prefix, namespace = f"rst{run}.", f"rst{run}"
    topic = prefix + STATE_CHANGELOG
    bootstrap = settings.kafka_bootstrap_servers
    await ensure_topics(bootstrap, [s for s in topic_specs(prefix, settings.partitions)
                                    if s.name == topic])  # fmt: skip
    keys = Keys(namespace)
    made = changes(count, keys)
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=20,
                                max_batch_size=512 * 1024, compression_type="lz4")  # fmt: skip
    await producer.start()
    started = time.monotonic()
    try:
        futures = []
        for index, change in enumerate(made):
            key, value = encode(change, keys.prefix())
            futures.append(await producer.send(topic, value, key=key))
            if index % 100_000 == 0:
                print(f"  produced {index:,}", flush=True)
        await asyncio.gather(*futures)
    finally:
        await producer.stop()
    print(f"changelog of {count:,} records written in {time.monotonic() - started:.1f}s")
    store = open_store(settings.redis_url, marker_ttl_s=3600)
    try:
        caught = await catch_up(store, keys, bootstrap, topic, from_beginning=True)
        rate = caught.read / caught.seconds
        print(f"restored {caught.read:,} records ({caught.changed:,} keys) into an empty "
              f"namespace in {caught.seconds:.1f}s: {rate:,.0f} records/s")  # fmt: skip
        sample = made[:: max(1, count // 1000)]
        got = await store.read([c.key for c in sample])
        assert got == [Record(c.version, c.data) for c in sample], "restored records differ"
    finally:
        await store.close()
        await remove_keys(settings.redis_url, namespace)
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
        await admin.start()
        try:
            await admin.delete_topics([topic])
        finally:
            await admin.close()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 1_000_000))
