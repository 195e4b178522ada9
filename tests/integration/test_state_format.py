"""The state format a namespace records (`pipeline.state.format`), on the real Redis.

State written by a release that recorded no format is format 1: a worker reads it as it is
and records the format. State recorded in another format is refused with a clear message, and
nothing is written to the namespace.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import AsyncIterator

import orjson
import pytest

from pipeline.core import ids
from pipeline.state.base import Commit, Keys, Store
from pipeline.state.factory import open_store
from tests.integration.conftest import SECRETS
from tests.support import events as ev
from tests.support.kafka import PROJECT_ROOT, Pipeline

WS = "ws-a"


@pytest.fixture
async def store(servers: tuple[str, str]) -> AsyncIterator[Store]:
    opened = open_store(servers[1], marker_ttl_s=3600)
    yield opened
    await opened.close()


async def format_record(store: Store, keys: Keys) -> bytes | None:
    (record,) = await store.read([keys.state_format()])
    return record.data


async def put(store: Store, key: str, data: bytes | None) -> None:
    (record,) = await store.read([key])
    if data is None:
        await store.delete([key])
    else:
        assert await store.commit([Commit(checks={key: record.version}, writes={key: data})])


def user_profile(out, user_id: str) -> dict | None:
    return out.latest_profiles().get(ids.user_contact_id(WS, user_id))


async def test_state_without_a_format_record_is_read_and_the_format_recorded(
    pipeline: Pipeline, store: Store
) -> None:
    keys = Keys(pipeline.namespace)
    first = pipeline.start_worker()
    await pipeline.send("telemetry.chat_start",
                        ev.chat_start(WS, "d1", "2026-11-24T10:01:00Z", "conv-1"))  # fmt: skip
    lead = ids.visitor_contact_id(WS, "d1", ids.ORIGIN)
    await pipeline.wait_for(lambda out: lead in out.latest_profiles(), what="the lead")
    recorded = orjson.loads(await format_record(store, keys) or b"null")
    assert recorded["format"] == 1 and recorded["written_by"].startswith("identity-pipeline ")
    pipeline.stop_workers()
    assert first.returncode == 0

    # The namespace as a release that recorded no format left it.
    await put(store, keys.state_format(), None)
    assert await format_record(store, keys) is None
    pipeline.start_worker()
    login = ev.login(WS, "d1", "2026-11-24T10:02:00Z", "u1", SECRETS[WS])
    await pipeline.send("telemetry.login", login)
    # The lead of the state written before is merged into the user: that state was read.
    await pipeline.wait_for(
        lambda out: (user_profile(out, "u1") or {}).get("merged_contact_ids") == [lead],
        what="the lead merged into u1",
    )
    assert user_profile(pipeline.outputs, "u1")["conversation_ids"] == ["conv-1"]
    assert orjson.loads(await format_record(store, keys) or b"null")["format"] == 1


async def run_worker(pipeline: Pipeline) -> subprocess.CompletedProcess:
    return await asyncio.to_thread(
        subprocess.run, [sys.executable, "-m", "pipeline.cli", "worker"], cwd=PROJECT_ROOT,
        env=pipeline.env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip


async def test_state_in_another_format_is_refused_and_left_alone(
    pipeline: Pipeline, store: Store
) -> None:
    keys = Keys(pipeline.namespace)
    later = orjson.dumps({"format": 2, "written_by": "identity-pipeline 9.0.0"})
    await put(store, keys.state_format(), later)
    await pipeline.send("telemetry.page_view", ev.page_view(WS, "d1", "2026-11-24T10:01:00Z"))
    result = await run_worker(pipeline)
    assert result.returncode == 2, result.stdout[-2000:] + result.stderr[-2000:]
    assert "holds state in format 2 (written by identity-pipeline 9.0.0)" in result.stderr
    assert "reads format 1 only" in result.stderr
    assert await format_record(store, keys) == later
    assert await store.scan(keys.everything()) == []


async def test_a_format_record_that_is_not_one_is_refused(pipeline: Pipeline, store: Store) -> None:
    keys = Keys(pipeline.namespace)
    await put(store, keys.state_format(), b"\x00garbage")
    result = await run_worker(pipeline)
    assert result.returncode == 2, result.stderr[-2000:]
    assert "state format record" in result.stderr and "reads format 1" in result.stderr
    assert await format_record(store, keys) == b"\x00garbage"
