"""No identifier can forge the structure of a Redis key, and no stored record can stop a worker.

Through the real broker and Redis: identifiers shaped like key syntax (`}`, `{`, `:outbox:`,
`:evt:`, another workspace's tag, very long) are ordinary identifiers; records that cannot be
decoded are logged, counted and skipped, and the worker keeps running.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest
import redis.asyncio as aioredis

from pipeline.state.base import Keys
from tests.integration.conftest import SECRETS
from tests.support import events as ev
from tests.support.kafka import Pipeline

WS = "ws-a"
SECRET = SECRETS[WS]
NOW = datetime.now(UTC).replace(microsecond=0)

# Each shape once as a device, a user and an event_id / conversation_id.
FORGED = [
    "}",
    "{",
    "a}:outbox:1",
    ":outbox:",
    "a:evt:b",
    "x}:evt:y",
    "a}:{ws-b}:dev:victim",
    "{ws-b}",
    "%7D%3A",
    "*?[]\\",
    "l" * 256,  # the longest identifier R3 accepts
]


def at(seconds: int) -> str:
    return (NOW + timedelta(seconds=seconds)).isoformat().replace("+00:00", "Z")


async def namespace_keys(client: aioredis.Redis, namespace: str) -> list[str]:
    return [key.decode() async for key in client.scan_iter(match=f"{namespace}:*", count=1000)]


async def test_identifiers_shaped_like_keys_are_plain_identifiers(
    pipeline: Pipeline, redis_client: aioredis.Redis
) -> None:
    pipeline.start_worker()
    for index, forged in enumerate(FORGED):
        await pipeline.send("telemetry.page_view", ev.page_view(WS, forged, at(index)))
        chat = ev.chat_start(WS, f"chat-{index}", at(index), forged)
        await pipeline.send("telemetry.chat_start", {**chat, "event_id": forged})
        login = ev.login(WS, f"login-{index}", at(index), forged, SECRET)
        await pipeline.send("telemetry.login", login)
    await pipeline.send("telemetry.page_view", ev.page_view(WS, "l" * 257, at(0)), key="too-long")

    def done(out) -> bool:
        profiles = out.latest_profiles().values()
        visitors = {p["anonymous_ids"][0] for p in profiles if p["type"] != "user"}
        users = {p["user_id"] for p in profiles if p["type"] == "user"}
        return set(FORGED) <= visitors and set(FORGED) == users and out.of("identity.rejected")

    await pipeline.wait_for(done, timeout=60, what="a profile per forged identifier")
    profiles = pipeline.outputs.latest_profiles().values()
    leads = {p["anonymous_ids"][0]: p for p in profiles if p["type"] == "lead"}
    for index, forged in enumerate(FORGED):
        assert leads[f"chat-{index}"]["conversation_ids"] == [forged]
    (too_long,) = pipeline.outputs.values("identity.rejected")
    assert too_long["reason"] == "blocked_identifier"

    keys = Keys(pipeline.namespace)
    stored = await namespace_keys(redis_client, pipeline.namespace)
    # Besides records and outbox records, the namespace holds the changelog's markers.
    stored = [key for key in stored if not keys.is_changelog(key)]
    parts = [keys.parse(key) for key in stored]
    assert None not in parts, [k for k, p in zip(stored, parts, strict=True) if p is None]
    assert {p.workspace_id for p in parts} == {WS}  # nothing reached ws-b's tag
    # Every forged device kept its record once its batch was delivered (`:outbox:` included).
    devices = {p.ident for p in parts if p.kind == "dev"}
    assert set(FORGED) <= devices
    assert not await namespace_keys(redis_client, f"{pipeline.namespace}:{{ws-b}}")


async def test_a_poisoned_event_id_does_not_stop_the_next_worker(pipeline: Pipeline) -> None:
    # A page view and a chat on a1, then a chat with event_id "x}:outbox:1" stamped between
    # them: a new fact that changes no profile, so its marker stays for the dedup horizon.
    pipeline.start_worker()
    await pipeline.send("telemetry.page_view", ev.page_view(WS, "a1", at(0)))
    await pipeline.send("telemetry.chat_start", ev.chat_start(WS, "a1", at(20), "c-1"))
    await pipeline.wait_for(lambda out: any(p["type"] == "lead" for p in out.latest_profiles().values()),
                            what="the lead")  # fmt: skip
    poison = {**ev.chat_start(WS, "a1", at(10), "c-0"), "event_id": "x}:outbox:1"}
    await pipeline.send("telemetry.chat_start", poison)
    await pipeline.send("telemetry.page_view", ev.page_view(WS, "after-poison", at(30)), key="a1")
    await pipeline.wait_for(lambda out: any(p["anonymous_ids"] == ["after-poison"]
                                            for p in out.latest_profiles().values()),
                            what="the event after the poison")  # fmt: skip
    pipeline.stop_workers()

    restarted = pipeline.start_worker()  # drains the outbox at start: found structurally
    await pipeline.send("telemetry.page_view", ev.page_view(WS, "after-restart", at(40)))
    await pipeline.wait_for(lambda out: any(p["anonymous_ids"] == ["after-restart"]
                                            for p in out.latest_profiles().values()),
                            what="a profile from the restarted worker")  # fmt: skip
    assert restarted.poll() is None
    assert "Crashed" not in pipeline.worker_log(1)


@pytest.mark.parametrize("garbage", [b"not json", b"\xff\xfe", b'{"created": "x"}',
                                     b'{"created": 1, "emits": [["nope", null, null]]}'])  # fmt: skip
async def test_unreadable_outbox_and_state_records_are_skipped(
    pipeline: Pipeline, redis_client: aioredis.Redis, garbage: bytes
) -> None:
    keys = Keys(pipeline.namespace)
    await redis_client.hset(keys.outbox(WS, "foreign"), mapping={"v": 1, "d": garbage})
    await redis_client.hset(keys.of(WS, "dev", "broken"), mapping={"v": 1, "d": garbage})
    worker = pipeline.start_worker()
    await pipeline.send("telemetry.chat_start", ev.chat_start(WS, "broken", at(0), "c-1"))
    await pipeline.send("telemetry.page_view", ev.page_view(WS, "fine", at(1)), key="broken")
    await pipeline.wait_for(lambda out: any(p["anonymous_ids"] == ["fine"]
                                            for p in out.latest_profiles().values()),
                            what="the profile of a readable device")  # fmt: skip
    await pipeline.wait_for(lambda out: out.of("identity.rejected"), what="the rejection")
    (rejected,) = pipeline.outputs.values("identity.rejected")
    assert rejected["reason"] == "unreadable_state"
    assert rejected["input_event_id"].startswith("chat-")
    assert worker.poll() is None
    # The outbox sweep at start runs beside the first batches: await its line.
    for _ in range(300):
        if "unreadable outbox record" in pipeline.worker_log():
            break
        await asyncio.sleep(0.1)
    log = pipeline.worker_log()
    assert "unreadable outbox record" in log and "unreadable dev record" in log
    # Both records are left as they were, for an operator to look at.
    assert await redis_client.hget(keys.outbox(WS, "foreign"), "d") == garbage
    assert await redis_client.hget(keys.of(WS, "dev", "broken"), "d") == garbage
