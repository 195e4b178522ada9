"""The state format a namespace records (`pipeline.state.format`), on the real Redis.

State written by a release that recorded no format is format 1: a worker reads it as it is
and records the format. Formats 2 and 3 are read as they are too: format 2's folded devices,
without their users' settled parts, are read whole and folded again; format 3's users list every
device live, and those they no longer use retire; format 4's users keep their retired devices
in their records, which are split up when next written. State recorded in another format is refused
with a clear message, and nothing is written to the namespace.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import orjson
import pytest

from pipeline.core import ids
from pipeline.core.facts import Device, User
from pipeline.core.oracle import Oracle
from pipeline.core.rules import CoreConfig
from pipeline.state.base import Commit, Keys, Store
from pipeline.state.factory import open_store
from schemas.time import format_timestamp, from_epoch_ms
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
    assert recorded["format"] == 5 and recorded["written_by"].startswith("identity-pipeline ")
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
    assert orjson.loads(await format_record(store, keys) or b"null")["format"] == 5


async def test_state_in_format_1_is_read_and_recorded_as_format_4(
    pipeline: Pipeline, store: Store
) -> None:
    keys = Keys(pipeline.namespace)
    # What a format-1 release wrote: a user record without first sessions per device, under a
    # format-1 record.
    await put(store, keys.state_format(),
              orjson.dumps({"format": 1, "written_by": "identity-pipeline 0.9.0"}))  # fmt: skip
    await put(store, keys.of(WS, "user", "u1"),
              orjson.dumps({"d": ["d0"], "e": [], "n": None}))  # fmt: skip
    await put(store, keys.of(WS, "dev", "d0"), orjson.dumps({
        "s": [[int(datetime(2026, 11, 24, 9, tzinfo=UTC).timestamp() * 1000), "old-login", "login", "u1"]],
        "c": [], "a": None}))  # fmt: skip
    pipeline.start_worker()
    await pipeline.send("telemetry.login", ev.login(WS, "d1", "2026-11-24T10:02:00Z", "u1",
                                                    SECRETS[WS]))  # fmt: skip
    # u1's profile lists the device of the format-1 state and the new one: both were read.
    await pipeline.wait_for(
        lambda out: (user_profile(out, "u1") or {}).get("anonymous_ids") == ["d0", "d1"],
        what="u1 on both devices",
    )
    recorded = orjson.loads(await format_record(store, keys) or b"null")
    assert recorded["format"] == 5 and recorded["written_by"] != "identity-pipeline 0.9.0"


def _format_2_laptop(sessions: int) -> tuple[Oracle, list[int]]:
    """A laptop's history (log in, log out, 3 h apart) as a format-2 release folded it."""
    config = CoreConfig(secrets={WS: (SECRETS[WS].encode(),)})
    oracle, starts = Oracle(config), []
    for n in range(sessions):
        at = datetime(2026, 9, 1, tzinfo=UTC) + n * timedelta(hours=3)
        starts.append(int(at.timestamp() * 1000))
        for event in (
            ev.login(WS, "lap", format_timestamp(at), "u1", SECRETS[WS]),
            ev.logout(WS, "lap", format_timestamp(at + timedelta(minutes=30)), "u1"),
        ):
            oracle.apply(ev.model(event))  # fmt: skip
    # Format 2 keeps no settled parts, and its carries say so.
    user = oracle.users[WS, "u1"]
    assert user.past  # what format 3 writes, taken out below
    oracle.users[WS, "u1"] = replace(user, past={})
    device = oracle.devices[WS, "lap"]
    assert device.carry is not None
    oracle.devices[WS, "lap"] = replace(device, carry=replace(device.carry, parts=False))
    return oracle, starts


async def test_a_format_2_folded_device_is_read_whole_once_and_its_users_parts_written(
    pipeline: Pipeline, store: Store
) -> None:
    keys = Keys(pipeline.namespace)
    oracle, starts = _format_2_laptop(80)
    await put(store, keys.state_format(),
              orjson.dumps({"format": 2, "written_by": "identity-pipeline 0.10.0"}))  # fmt: skip
    stored = oracle.devices[WS, "lap"]
    assert stored.carry is not None and len(orjson.loads(stored.to_bytes())["k"]) == 8
    await put(store, keys.of(WS, "dev", "lap"), stored.to_bytes())
    await put(store, keys.of(WS, "user", "u1"), oracle.users[WS, "u1"].to_bytes())
    for (_, ident), chunk in oracle.chunks.items():
        await put(store, keys.of(WS, "chunk", ident), chunk.to_bytes())
    pipeline.start_worker()
    last = datetime(2026, 9, 1, tzinfo=UTC) + 80 * timedelta(hours=3)
    await pipeline.send("telemetry.login", ev.login(WS, "lap", format_timestamp(last), "u1",
                                                    SECRETS[WS]))  # fmt: skip
    # The profile counts the sessions behind the carry: created at the first login of all.
    first = from_epoch_ms(starts[0])
    await pipeline.wait_for(
        lambda out: (user_profile(out, "u1") or {}).get("updated_at") == format_timestamp(last),
        what="u1's profile with the new login",
    )
    assert user_profile(pipeline.outputs, "u1")["created_at"] == format_timestamp(first)
    # Read whole once, the device was folded again: its carry now says its users' parts are
    # kept, and u1's record holds hers, from the first login on.
    (device,) = await store.read([keys.of(WS, "dev", "lap")])
    (user,) = await store.read([keys.of(WS, "user", "u1")])
    assert device.data is not None and user.data is not None
    assert Device.from_bytes(device.data).carry.parts  # type: ignore[union-attr]
    part = User.from_bytes(user.data).past["lap"]
    assert part.first is not None and part.first[0] == starts[0]
    assert orjson.loads(await format_record(store, keys) or b"null")["format"] == 5


async def test_a_format_3_user_on_many_devices_has_those_she_no_longer_uses_retired(
    pipeline: Pipeline, store: Store
) -> None:
    keys = Keys(pipeline.namespace)
    # What format 3 wrote: a traveller on 30 devices (a login every 3 h), all listed live.
    config = CoreConfig(secrets={WS: (SECRETS[WS].encode(),)}, retire_margin_ms=None)
    oracle = Oracle(config)
    start = datetime(2026, 9, 1, tzinfo=UTC)
    for n in range(30):
        at = format_timestamp(start + n * timedelta(hours=3))
        oracle.apply(ev.model(ev.login(WS, f"b{n:02}", at, "u1", SECRETS[WS])))
    assert len(oracle.users[WS, "u1"].devices) == 30
    await put(store, keys.state_format(),
              orjson.dumps({"format": 3, "written_by": "identity-pipeline 0.11.0"}))  # fmt: skip
    for (_, anonymous_id), device in oracle.devices.items():
        await put(store, keys.of(WS, "dev", anonymous_id), device.to_bytes())
    await put(store, keys.of(WS, "user", "u1"), oracle.users[WS, "u1"].to_bytes())
    pipeline.start_worker()
    at = start + 30 * timedelta(hours=3)  # hour 90: devices quiet since before hour 66 retire
    await pipeline.send("telemetry.login", ev.login(WS, "b30", format_timestamp(at), "u1",
                                                    SECRETS[WS]))  # fmt: skip
    everywhere = [f"b{n:02}" for n in range(31)]
    await pipeline.wait_for(
        lambda out: (user_profile(out, "u1") or {}).get("anonymous_ids") == everywhere,
        what="u1 on all 31 devices",
    )
    (record,) = await store.read([keys.of(WS, "user", "u1")])
    assert record.data is not None
    user = User.from_bytes(record.data)
    # Her point is a day (the default margin) before hour 90: b00-b21 (hours 0-63) retire, at
    # once (a batch is 16 or more).
    # Her record keeps the summary's header; the ids are in her id chunk record (format 5).
    assert user.retired is not None and user.retired.ids_count == 22
    (chunk,) = await store.read([keys.of(WS, "chunk", "r0:u1")])
    assert chunk.data is not None
    assert sorted(orjson.loads(chunk.data)["i"]) == everywhere[:22]
    assert user.devices == tuple(everywhere[22:])
    assert orjson.loads(await format_record(store, keys) or b"null")["format"] == 5


async def test_a_format_4_users_retired_devices_are_split_out_of_her_record(
    pipeline: Pipeline, store: Store
) -> None:
    keys = Keys(pipeline.namespace)
    # What format 4 wrote: a traveller on 20 devices (a login every 3 h, the latest at hour
    # 57), those quiet since before hour 33 (b00-b10) retired in her record, ids and all.
    oracle = Oracle(CoreConfig(secrets={WS: (SECRETS[WS].encode(),)}, retire_batch=1))
    start = datetime(2026, 9, 1, tzinfo=UTC)
    for n in range(20):
        at = format_timestamp(start + n * timedelta(hours=3))
        oracle.apply(ev.model(ev.login(WS, f"b{n:02}", at, "u1", SECRETS[WS])))
    summary = oracle.retired(WS, "u1")
    assert summary is not None and summary.ids == tuple(f"b{n:02}" for n in range(11))
    row = [summary.point, list(summary.ids), sorted(summary.returned.items()),
           [list(a) for a in summary.accepted], summary.part.to_json(),
           [list(d) for d in summary.devices], summary.devices_total, list(summary.uncounted),
           int(summary.flagged)]  # fmt: skip
    record = orjson.loads(oracle.users[WS, "u1"].to_bytes())
    await put(store, keys.state_format(),
              orjson.dumps({"format": 4, "written_by": "identity-pipeline 0.12.0"}))  # fmt: skip
    for (_, anonymous_id), device in oracle.devices.items():
        legacy = replace(device, retired_by=())  # format 4 marks no device
        await put(store, keys.of(WS, "dev", anonymous_id), legacy.to_bytes())
    await put(store, keys.of(WS, "user", "u1"), orjson.dumps({**record, "r": row}))
    pipeline.start_worker()
    at = start + 21 * timedelta(hours=3)  # hour 63: devices quiet since before hour 39 retire
    await pipeline.send("telemetry.login", ev.login(WS, "b20", format_timestamp(at), "u1",
                                                    SECRETS[WS]))  # fmt: skip
    everywhere = [f"b{n:02}" for n in range(21)]
    await pipeline.wait_for(
        lambda out: (user_profile(out, "u1") or {}).get("anonymous_ids") == everywhere,
        what="u1 on all 21 devices",
    )
    (record_now,) = await store.read([keys.of(WS, "user", "u1")])
    assert record_now.data is not None
    # Her record keeps the header only: b00-b12 are in her id chunk, each device marked.
    assert len(orjson.loads(record_now.data)["r"]) == 6
    user = User.from_bytes(record_now.data)
    assert user.retired is not None and user.retired.ids_count == 13
    assert user.devices == tuple(everywhere[13:])
    (chunk,) = await store.read([keys.of(WS, "chunk", "r0:u1")])
    assert chunk.data is not None and orjson.loads(chunk.data)["i"] == everywhere[:13]
    marked = await store.read([keys.of(WS, "dev", d) for d in everywhere])
    flags = [Device.from_bytes(m.data).retired_for("u1") for m in marked if m.data]
    assert flags == [True] * 13 + [None] * 8
    assert orjson.loads(await format_record(store, keys) or b"null")["format"] == 5


async def run_worker(pipeline: Pipeline) -> subprocess.CompletedProcess:
    return await asyncio.to_thread(
        subprocess.run, [sys.executable, "-m", "pipeline.cli", "worker"], cwd=PROJECT_ROOT,
        env=pipeline.env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip


async def test_state_in_another_format_is_refused_and_left_alone(
    pipeline: Pipeline, store: Store
) -> None:
    keys = Keys(pipeline.namespace)
    later = orjson.dumps({"format": 6, "written_by": "identity-pipeline 9.0.0"})
    await put(store, keys.state_format(), later)
    await pipeline.send("telemetry.page_view", ev.page_view(WS, "d1", "2026-11-24T10:01:00Z"))
    result = await run_worker(pipeline)
    assert result.returncode == 2, result.stdout[-2000:] + result.stderr[-2000:]
    assert "holds state in format 6 (written by identity-pipeline 9.0.0)" in result.stderr
    assert "reads formats 1, 2, 3, 4 and 5 only" in result.stderr
    assert await format_record(store, keys) == later
    assert await store.scan(keys.everything()) == []


async def test_a_format_record_that_is_not_one_is_refused(pipeline: Pipeline, store: Store) -> None:
    keys = Keys(pipeline.namespace)
    await put(store, keys.state_format(), b"\x00garbage")
    result = await run_worker(pipeline)
    assert result.returncode == 2, result.stderr[-2000:]
    assert (
        "state format record" in result.stderr and "reads formats 1, 2, 3, 4 and 5" in result.stderr
    )
    assert await format_record(store, keys) == b"\x00garbage"
