"""Two environments on one broker and one Redis never meet (SPEC §3, the topic prefix).

Each worker is configured by `IDP_TOPIC_PREFIX` alone, as a deployment that sets nothing else:
its consumer group is then `identity-pipeline-<prefix>` and its Redis namespace `idp-<prefix>`.
Both environments read the same journey, so the same event_ids: one that saw the other's
state would skip them as already processed (R12), and one in the other's consumer group
would share its partitions with the other's worker.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis
from aiokafka.admin import AIOKafkaAdminClient

from pipeline.ops.admin import ensure_topics, remove_run
from pipeline.ops.topics import topic_specs
from schemas.topics import INPUT_TOPICS
from tests.integration.conftest import KEEP
from tests.integration.test_partitioners import (
    assignments,
    expected,
    full_log,
    produce,
    recent_journey,
    settle,
)
from tests.support.kafka import OutputLog, Pipeline

INPUT_PARTITIONS = len(INPUT_TOPICS) * 4  # every input topic has 4 partitions


class Environment(Pipeline):
    """A pipeline whose workers get the topic prefix and no consumer group or namespace."""

    @property
    def env(self) -> dict[str, str]:
        env = dict(super().env)
        del env["IDP_APP_ID"], env["IDP_STATE_NAMESPACE"]
        return env


@pytest.fixture
async def environments(
    servers: tuple[str, str], secrets_file: Path, tmp_path: Path
) -> AsyncIterator[tuple[Environment, Environment]]:
    """Two fresh environments on the same servers; removed afterwards, topics and keys."""
    bootstrap, redis_url = servers
    envs = []
    for name in ("a", "b"):
        prefix = f"env{uuid.uuid4().hex[:10]}."
        await ensure_topics(bootstrap, topic_specs(prefix, 4, retention_ms=KEEP))
        (tmp_path / name).mkdir()
        envs.append(Environment(bootstrap=bootstrap, redis_url=redis_url, prefix=prefix,
                                app_id=f"identity-pipeline-{prefix}", namespace=f"idp-{prefix}",
                                secrets_file=secrets_file, log_dir=tmp_path / name))  # fmt: skip
    try:
        for env in envs:
            await env.start()
        yield envs[0], envs[1]
    finally:
        for env in envs:
            await env.close()
            await remove_run(bootstrap, redis_url, env.prefix, env.namespace)


async def group_members(bootstrap: str, group_id: str) -> tuple[str, int]:
    """(state, number of members) of a consumer group, as the group coordinator reports it."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        (response,) = await admin.describe_consumer_groups([group_id])
    finally:
        await admin.close()
    ((error_code, found, state, _protocol_type, _protocol, members, *_),) = response.groups
    assert (error_code, found) == (0, group_id)
    return state, len(members)


async def test_two_prefixes_share_a_broker_and_a_redis(
    environments: tuple[Environment, Environment], redis_client: aioredis.Redis
) -> None:
    records = recent_journey(people=150, seed=62)
    want = expected(records)

    # The second worker starts once the first is consuming: were they in one group, its join
    # would take partitions from the first.
    for env in environments:
        env.start_worker()

        def consuming(_: OutputLog, env: Environment = env) -> bool:
            return "Worker]: Ready" in full_log(env, 0) and bool(assignments(env, 0))

        await env.wait_for(consuming, timeout=60, what="the worker's assignment")

    for env in environments:
        await produce(env.bootstrap, env.prefix, records)
    for env in environments:
        await settle(env, want)

    for env in environments:
        log = full_log(env, 0)
        # Assigned once, everything: nobody else ever joined its group.
        assert [len(a) for a in assignments(env, 0)] == [INPUT_PARTITIONS], log
        assert await group_members(env.bootstrap, env.app_id) == ("Stable", 1)
        keys = [key async for key in redis_client.scan_iter(match=f"{env.namespace}:*", count=1000)]
        assert keys, f"no state under the namespace {env.namespace}"
    assert environments[0].outputs.latest_profiles() == environments[1].outputs.latest_profiles()
