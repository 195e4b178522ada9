"""`idp worker` never sits idle on missing topics (SPEC §4): it creates them, or waits for them."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiokafka.admin import AIOKafkaAdminClient

from pipeline.ops.admin import ensure_topics, remove_run
from pipeline.ops.topics import topic_specs
from tests.integration.conftest import KEEP
from tests.support import events as ev
from tests.support.kafka import Pipeline

WS = "ws-a"


@pytest.fixture
async def bare(servers: tuple[str, str], secrets_file: Path, tmp_path: Path
               ) -> AsyncIterator[Pipeline]:  # fmt: skip
    """A pipeline whose topics do not exist yet (a fresh prefix, nothing created)."""
    bootstrap, redis_url = servers
    run = uuid.uuid4().hex[:10]
    pipe = Pipeline(bootstrap=bootstrap, redis_url=redis_url, prefix=f"t{run}.",
                    app_id=f"idp-{run}", namespace=f"t{run}", secrets_file=secrets_file,
                    log_dir=tmp_path)  # fmt: skip
    assert await existing(bootstrap, pipe.prefix) == set()
    yield pipe
    await pipe.close()
    await remove_run(bootstrap, redis_url, pipe.prefix, pipe.namespace)


async def existing(bootstrap: str, prefix: str) -> set[str]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        return {t for t in await admin.list_topics() if t.startswith(prefix)}
    finally:
        await admin.close()


async def until(condition, *, timeout: float, what: str, log) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await condition():
            return
        await asyncio.sleep(0.2)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}\n{log()}")


async def test_a_worker_creates_the_missing_topics_and_processes(bare: Pipeline) -> None:
    bare.start_worker()
    wanted = {spec.name for spec in topic_specs(bare.prefix, 4)}

    async def created() -> bool:
        return await existing(bare.bootstrap, bare.prefix) == wanted

    await until(created, timeout=60, what="the worker to create its topics", log=bare.worker_log)
    assert f"created {len(wanted)} missing topics" in bare.worker_log()
    await bare.start()
    await bare.send("telemetry.page_view", ev.page_view(WS, "device-1", "2026-11-24T10:00:00Z"))
    await bare.wait_for(lambda out: len(out.of("identity.profiles")) == 1, timeout=60,
                        what="the event processed")  # fmt: skip


async def test_without_creation_a_worker_waits_then_subscribes(bare: Pipeline) -> None:
    bare.start_worker({"IDP_CREATE_TOPICS": "false"})
    line = f"waiting for {len(topic_specs(bare.prefix, 4, retention_ms=KEEP))} missing topics"

    async def waiting() -> bool:
        return bare.worker_log().count(line) >= 2

    # It says which topics it waits for, again every few seconds (not in a tight loop).
    await until(waiting, timeout=60, what="two 'waiting for' lines", log=bare.worker_log)
    log = bare.worker_log()
    assert f"{bare.prefix}telemetry.page_view" in log
    assert f"{bare.prefix}identity.profiles" in log
    assert log.count(line) <= 4, log
    assert await existing(bare.bootstrap, bare.prefix) == set()  # created nothing

    await ensure_topics(bare.bootstrap, topic_specs(bare.prefix, 4, retention_ms=KEEP))
    await bare.start()
    await bare.send("telemetry.page_view", ev.page_view(WS, "device-2", "2026-11-24T10:00:00Z"))
    await bare.wait_for(lambda out: len(out.of("identity.profiles")) == 1, timeout=60,
                        what="the event processed once the topics exist")  # fmt: skip
    assert "every topic exists" in bare.worker_log()
