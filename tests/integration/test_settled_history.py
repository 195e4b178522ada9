"""A folded device (R15) through the real worker and Redis: chunk records, and a late event.

A shared computer's 60 sessions (120 session facts) fold, 32 facts a chunk: its record keeps
the latest and a carry, the rest is in chunk records. The profiles are the oracle's; a logout arriving
late, stamped inside an early session, is decided on the whole device, as the oracle decides it.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import AsyncIterator

import orjson
import pytest

from pipeline.core import ids
from pipeline.core.facts import Device
from pipeline.core.oracle import Oracle
from pipeline.core.rules import CoreConfig
from pipeline.state.base import Keys, Store
from pipeline.state.factory import open_store
from tests.integration.conftest import SECRETS
from tests.support import events as ev
from tests.support.kafka import PROJECT_ROOT, Pipeline

WS = "ws-a"
LOGIN, CHAT, LOGOUT = "telemetry.login", "telemetry.chat_start", "telemetry.logout"


@pytest.fixture
async def store(servers: tuple[str, str]) -> AsyncIterator[Store]:
    opened = open_store(servers[1], marker_ttl_s=3600)
    yield opened
    await opened.close()


def stamp(n: int, minute: int) -> str:
    return f"2026-11-{1 + n // 12:02d}T{2 * (n % 12):02d}:{minute:02d}:00Z"


def library(sessions: int) -> list[tuple[str, dict]]:
    """Reader n logs in, chats ten minutes later and logs out at half past."""
    events = []
    for n in range(sessions):
        reader = f"reader-{n}"
        events += [(LOGIN, ev.login(WS, "lib", stamp(n, 0), reader, SECRETS[WS])),
                   (CHAT, ev.chat_start(WS, "lib", stamp(n, 10), f"conv-{n}")),
                   (LOGOUT, ev.logout(WS, "lib", stamp(n, 30), reader))]  # fmt: skip
    return events


def oracle_profiles(events: list[tuple[str, dict]]) -> dict[str, dict]:
    oracle = Oracle(CoreConfig(secrets={ws: (s.encode(),) for ws, s in SECRETS.items()}))
    for _, event in events:
        oracle.apply(ev.model(event), record_ms=None)
    return {cid: orjson.loads(orjson.dumps(p.model_dump(mode="json")))
            for cid, p in oracle.profiles(WS).items()}  # fmt: skip


async def test_a_long_shared_device_folds_and_a_late_logout_reaches_behind_its_carry(
    pipeline: Pipeline, store: Store
) -> None:
    keys = Keys(pipeline.namespace)
    pipeline.start_worker()
    events = library(60)
    for topic, event in events:
        await pipeline.send(topic, event)
    expected = oracle_profiles(events)
    await pipeline.wait_for(lambda out: out.latest_profiles() == expected, timeout=90,
                            what="the oracle's profiles of 60 sessions")  # fmt: skip
    (record,) = await store.read([keys.of(WS, "dev", "lib")])
    assert record.data is not None
    device = Device.from_bytes(record.data)
    # 120 session facts, cut every 32 while 32 or more stay: two chunks, 56 facts kept.
    assert device.carry is not None and device.carry.chunks == 2 and len(device.sessions) == 56
    chunks = await store.read([keys.of(WS, "chunk", f"{i}:lib") for i in range(2)])
    assert all(chunk.data is not None for chunk in chunks)

    # Reader 3 logs out at 06:05, before her chat of 06:10: the chat is the next visitor's.
    late = ev.logout(WS, "lib", stamp(3, 5), "reader-3")
    await pipeline.send(LOGOUT, late)
    expected = oracle_profiles([*events, (LOGOUT, late)])
    reader = ids.user_contact_id(WS, "reader-3")
    assert expected[reader]["conversation_ids"] == []
    await pipeline.wait_for(lambda out: out.latest_profiles() == expected, timeout=60,
                            what="the late logout's profiles")  # fmt: skip

    # `idp inspect` reads the chunks: reader 3's session, folded away, is in its history.
    result = subprocess.run([sys.executable, "-m", "pipeline.cli", "inspect", WS, "reader-3"],
                            cwd=PROJECT_ROOT, env=pipeline.env, capture_output=True, text=True,
                            timeout=60)  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    assert "2026-11-01T06:00:00.000Z  linked on device lib by event" in result.stdout
    assert f"session on lib ended (logout, event {late['event_id']})" in result.stdout
