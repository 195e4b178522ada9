"""`idp replay` reads the live inputs again into separate state and topics: same identities."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator

import orjson
import pytest
import redis.asyncio as aioredis

from pipeline.ops.admin import remove_keys
from schemas.topics import OUTPUT_TOPICS
from tests.integration.test_faults import scenario, settle
from tests.support.kafka import PROJECT_ROOT, Pipeline, read_topics

WS = "ws-a"


@pytest.fixture
async def name(servers: tuple[str, str]) -> AsyncIterator[str]:
    """A replay's name; its namespace (`replay-<name>`) is removed afterwards."""
    name = uuid.uuid4().hex[:8]
    yield name
    await remove_keys(servers[1], f"replay-{name}")


async def test_replay_reproduces_the_live_profiles_and_merges(
    pipeline: Pipeline, redis_client: aioredis.Redis, name: str
) -> None:
    messages, profiles, merges, logouts = scenario(seed=600)
    junk = [
        ("telemetry.page_view", b'{"broken', b"junk"),
        ("telemetry.login", orjson.dumps({"x": 1}), b"junk"),
    ]
    pipeline.start_worker()
    await pipeline.send_many(messages + junk)
    await settle(pipeline, profiles, merges, logouts, "live")
    live_rejections = len(pipeline.outputs.of("identity.rejected"))
    live_keys = await state_keys(redis_client, pipeline.namespace)

    to_prefix = f"{pipeline.prefix}replay."
    run = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "pipeline.cli", "replay", name, "--to-prefix", to_prefix, "--timeout", "120"],
        cwd=PROJECT_ROOT, env=pipeline.env, capture_output=True, text=True, timeout=240,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout + run.stderr
    assert "caught up" in run.stdout

    replayed = await read_topics(
        pipeline.bootstrap, [to_prefix + t for t in OUTPUT_TOPICS], to_prefix
    )
    assert replayed.latest_profiles() == pipeline.outputs.latest_profiles() == profiles
    replay_merges = {
        (p["contact_id"], p["merged_into"])
        for p in replayed.latest_profiles().values()
        if p["merged_into"]
    }
    assert replay_merges == {
        (cid, p["merged_into"]) for cid, p in profiles.items() if p["merged_into"]
    }
    replayed_ids = {m["event_id"] for m in replayed.values("identity.merged")}
    assert merges <= replayed_ids  # the fault-free run's merge announcements, same event_ids
    assert len(replayed.of("identity.rejected")) == live_rejections == len(junk)
    # The live state was not touched: same keys, and the replay's state is elsewhere.
    assert await state_keys(redis_client, pipeline.namespace) == live_keys
    assert await redis_client.keys(f"replay-{name}:*")


async def test_replay_from_a_time_starts_there(pipeline: Pipeline, name: str) -> None:
    import time

    from pipeline.core import ids
    from schemas.time import format_timestamp, from_epoch_ms
    from tests.support import events as ev

    def now() -> str:  # the records of this test are written now, as their events happen
        return format_timestamp(from_epoch_ms(int(time.time() * 1000)))

    pipeline.start_worker()
    early = [ev.page_view(WS, f"early-{i}", now()) for i in range(5)]
    for event in early:
        await pipeline.send("telemetry.page_view", event)
    cut = int(time.time() * 1000) + 1  # every record produced so far is stamped before this
    while time.time() * 1000 <= cut:
        await asyncio.sleep(0.005)
    late = [ev.page_view(WS, f"late-{i}", now()) for i in range(5)]
    for event in late:
        await pipeline.send("telemetry.page_view", event)
    await pipeline.wait_for(lambda out: len(out.latest_profiles()) == 10, what="ten visitors live")

    to_prefix = f"{pipeline.prefix}since."
    since = format_timestamp(from_epoch_ms(cut))
    run = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "pipeline.cli", "replay", name, "--to-prefix", to_prefix, "--from", since],
        cwd=PROJECT_ROOT, env=pipeline.env, capture_output=True, text=True, timeout=240,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout + run.stderr
    replayed = await read_topics(
        pipeline.bootstrap, [to_prefix + t for t in OUTPUT_TOPICS], to_prefix
    )
    expected = {ids.visitor_contact_id(WS, f"late-{i}", "origin") for i in range(5)}
    assert set(replayed.latest_profiles()) == expected


async def state_keys(client: aioredis.Redis, namespace: str) -> set[bytes]:
    """The records of a namespace, without its outbox (delivered batches leave it in time)."""
    return {key for key in await client.keys(f"{namespace}:*") if b":outbox:" not in key}
