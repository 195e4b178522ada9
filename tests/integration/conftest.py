"""Integration fixtures: the real Kafka broker and Redis server, started by the project itself.

If KAFKA_BOOTSTRAP_SERVERS / REDIS_URL are set, those servers are used as they are; otherwise
`pipeline.ops.stack` starts (or reuses) the local ones. A server that cannot be reached fails the
test run: these tests never skip.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import orjson
import pytest
import redis.asyncio as aioredis

from pipeline.ops import stack
from pipeline.ops.admin import ensure_topics, remove_run
from pipeline.ops.topics import topic_specs
from tests.support.kafka import Pipeline


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Every test under tests/integration needs the real broker and Redis: mark it so.

    (A `pytestmark` in a conftest marks nothing.) `pytest -m "not integration"` then runs the
    pure tests alone.
    """
    here = Path(__file__).parent
    for item in items:
        if here in Path(item.path).parents:
            item.add_marker(pytest.mark.integration)


# Test topics keep their records whatever their timestamps: many tests stamp events on fixed
# dates (a record carries its event's time, R14), which a week's retention would delete at
# the broker's next retention check, possibly mid-test.
KEEP = -1

# Tokens are checked against the Kafka record's timestamp too, which is the wall clock when a
# test produces: a token sent through the broker must expire after now, not on a fixed date.
TOKEN_EXP = int(time.time()) + 24 * 3600
SECRETS = {
    "ws-a": "secret-a-0123456789abcdef0123456789",
    "ws-b": "secret-b-9876543210fedcba9876543210",
}


@pytest.fixture(scope="session")
def servers() -> tuple[str, str]:
    """(bootstrap, redis_url) of a reachable broker and Redis; starts them when not given."""
    bootstrap = os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092")
    redis_url = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
    if "REDIS_URL" not in os.environ:
        stack.start_redis(redis_url)
    if "KAFKA_BOOTSTRAP_SERVERS" not in os.environ:
        stack.start_kafka(bootstrap)
    if not stack.port_open(stack.kafka_endpoint(bootstrap)):
        pytest.fail(f"no Kafka broker at {bootstrap}", pytrace=False)
    if not stack.port_open(stack.redis_endpoint(redis_url)):
        pytest.fail(f"no Redis at {redis_url}", pytrace=False)
    return bootstrap, redis_url


@pytest.fixture
def secrets_file(tmp_path: Path) -> Path:
    path = tmp_path / "secrets.json"
    path.write_bytes(orjson.dumps(SECRETS))
    return path


@pytest.fixture
async def redis_client(servers: tuple[str, str]) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(servers[1])
    yield client
    await client.aclose()


@pytest.fixture
async def pipeline(
    servers: tuple[str, str], secrets_file: Path, tmp_path: Path
) -> AsyncIterator[Pipeline]:
    """A fresh pipeline: new topic prefix, consumer group and Redis namespace; no worker yet."""
    bootstrap, redis_url = servers
    run = uuid.uuid4().hex[:10]
    prefix = f"t{run}."
    await ensure_topics(bootstrap, topic_specs(prefix, 4, retention_ms=KEEP))
    pipe = Pipeline(bootstrap=bootstrap, redis_url=redis_url, prefix=prefix, app_id=f"idp-{run}",
                    namespace=f"t{run}", secrets_file=secrets_file, log_dir=tmp_path)  # fmt: skip
    await pipe.start()
    yield pipe
    await pipe.close()
    await remove_run(bootstrap, redis_url, prefix, f"t{run}")
