"""Kafka administration: readiness probe and idempotent creation of the SPEC §3 topics."""

from __future__ import annotations

import asyncio
import logging

import redis.asyncio as aioredis
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError, TopicAlreadyExistsError

from pipeline.ops.topics import TopicSpec, topic_specs
from pipeline.state.base import Keys

logger = logging.getLogger(__name__)


async def _describe(bootstrap: str) -> bool:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=3000)
    try:
        await admin.start()
        await admin.list_topics()
        return True
    except (KafkaError, OSError):
        return False
    finally:
        await admin.close()


def cluster_ready(bootstrap: str) -> bool:
    """Whether the broker answers a metadata request."""
    return asyncio.run(_describe(bootstrap))


async def ensure_topics(bootstrap: str, specs: list[TopicSpec]) -> list[str]:
    """Create the topics that do not exist yet; return the names created."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=15000)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        missing = [spec for spec in specs if spec.name not in existing]
        if not missing:
            return []
        new = [
            NewTopic(
                name=spec.name,
                num_partitions=spec.partitions,
                replication_factor=1,
                topic_configs=spec.config,
            )
            for spec in missing
        ]
        response = await admin.create_topics(new, timeout_ms=15000)
        for name, code, *_ in response.topic_errors:
            if code not in (0, TopicAlreadyExistsError.errno):
                message = f"creating topic {name} failed with Kafka error code {code}"
                raise RuntimeError(message)
        return [spec.name for spec in missing]
    finally:
        await admin.close()


async def remove_run(bootstrap: str, redis_url: str, prefix: str, namespace: str) -> None:
    """Delete a run's topics (`prefix` + the SPEC §3 names) and its Redis keys (`namespace`).

    For the benchmark's and the tests' throw-away runs, so that a long-lived local broker and
    Redis do not pile up thousands of partitions and keys.
    """
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.delete_topics([spec.name for spec in topic_specs(prefix, 1)])
    except KafkaError as exc:
        logger.warning("could not delete the topics of %s* (%s)", prefix, exc)
    finally:
        await admin.close()
    await remove_keys(redis_url, namespace)


async def remove_keys(redis_url: str, namespace: str) -> None:
    """Delete the Redis keys of a state namespace."""
    client = aioredis.Redis.from_url(redis_url)
    try:
        batch = []
        async for key in client.scan_iter(match=Keys(namespace).everything(), count=1000):
            batch.append(key)
            if len(batch) >= 1000:
                await client.unlink(*batch)
                batch = []
        if batch:
            await client.unlink(*batch)
    finally:
        await client.aclose()
