"""One contract for both stores: the in-memory one (pure tests) and Redis (the real one)."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator

import pytest

from pipeline.state.base import Change, Commit, Keys, Record, Store
from pipeline.state.changelog import changes, decode, encode
from pipeline.state.memory import MemoryStore
from pipeline.state.redis_store import RedisStore


@pytest.fixture(params=["memory", "redis"])
async def store(request: pytest.FixtureRequest, servers: tuple[str, str]) -> AsyncIterator[Store]:
    if request.param == "memory":
        yield MemoryStore()
        return
    redis_store = RedisStore.from_url(servers[1], marker_ttl_s=3600)
    yield redis_store
    await redis_store.close()


@pytest.fixture
def key() -> str:
    return f"contract:{{ws-{uuid.uuid4().hex}}}:dev:"


async def test_absent_records_read_as_version_zero(store: Store, key: str) -> None:
    assert await store.read([key + "a", key + "b"]) == [Record(0, None), Record(0, None)]


async def test_a_commit_writes_and_bumps_versions(store: Store, key: str) -> None:
    ok = await store.commit([Commit(checks={key + "a": 0}, writes={key + "a": b"one"})])
    assert ok == [True]
    assert await store.read([key + "a"]) == [Record(1, b"one")]
    ok = await store.commit([Commit(checks={key + "a": 1}, writes={key + "a": b"two"})])
    assert ok == [True]
    assert await store.read([key + "a"]) == [Record(2, b"two")]


async def test_a_stale_read_loses_and_changes_nothing(store: Store, key: str) -> None:
    await store.commit([Commit(checks={key + "a": 0}, writes={key + "a": b"one"})])
    stale = Commit(checks={key + "a": 0, key + "b": 0}, writes={key + "a": b"x", key + "b": b"y"})
    assert await store.commit([stale]) == [False]
    assert await store.read([key + "a", key + "b"]) == [Record(1, b"one"), Record(0, None)]


async def test_a_checked_but_unwritten_record_guards_the_commit(store: Store, key: str) -> None:
    await store.commit([Commit(checks={key + "a": 0}, writes={key + "a": b"one"})])
    guarded = Commit(checks={key + "a": 0}, writes={key + "b": b"depends on a"})
    assert await store.commit([guarded]) == [False]
    assert await store.read([key + "b"]) == [Record(0, None)]


async def test_a_record_written_unchecked_must_be_absent(store: Store, key: str) -> None:
    # A write without a check expects no record: the writer never read one.
    assert await store.commit([Commit(writes={key + "a": b"one"})]) == [True]
    assert await store.commit([Commit(writes={key + "a": b"blind"})]) == [False]
    assert await store.read([key + "a"]) == [Record(1, b"one")]


async def test_commits_of_one_batch_are_independent(store: Store, key: str) -> None:
    results = await store.commit([
        Commit(checks={key + "a": 5}, writes={key + "a": b"loses"}),
        Commit(checks={key + "b": 0}, writes={key + "b": b"wins"}),
    ])  # fmt: skip
    assert results == [False, True]
    assert await store.read([key + "a", key + "b"]) == [Record(0, None), Record(1, b"wins")]


async def test_redis_markers_expire(servers: tuple[str, str], key: str) -> None:
    import redis.asyncio as aioredis

    store = RedisStore.from_url(servers[1], marker_ttl_s=120)
    commit = Commit(checks={key + "m": 0}, writes={key + "m": b"d", key + "r": b"r"})
    commit.expiring.add(key + "m")
    assert await store.commit([commit]) == [True]
    client = aioredis.Redis.from_url(servers[1])
    assert 0 < await client.ttl(key + "m") <= 120
    assert await client.ttl(key + "r") == -1  # records do not expire
    await client.aclose()
    await store.close()


async def test_redis_store_reloads_its_scripts_after_redis_lost_them(
    servers: tuple[str, str], key: str
) -> None:
    import redis.asyncio as aioredis

    store = RedisStore.from_url(servers[1], marker_ttl_s=60)
    assert await store.commit([Commit(checks={key + "a": 0}, writes={key + "a": b"one"})]) == [True]
    client = aioredis.Redis.from_url(servers[1])
    await client.script_flush()  # as after a restart: the loaded scripts are gone
    await client.aclose()
    assert await store.read([key + "a"]) == [Record(1, b"one")]
    assert await store.commit([Commit(checks={key + "a": 1}, writes={key + "a": b"two"})]) == [True]
    assert await store.read([key + "a"]) == [Record(2, b"two")]
    await store.close()


async def test_delete_and_scan(store: Store, key: str) -> None:
    await store.commit(
        [Commit(checks={key + "a": 0, key + "b": 0}, writes={key + "a": b"1", key + "b": b"2"})]
    )
    prefix = key.split("{")[0]
    found = await store.scan(prefix + "{*}:dev:*")
    assert {key + "a", key + "b"} <= set(found)
    await store.delete([key + "a"])
    assert await store.read([key + "a", key + "b"]) == [Record(0, None), Record(1, b"2")]


async def test_a_read_deletes_what_it_is_told_to_discard(store: Store, key: str) -> None:
    other = key.replace("{ws-", "{other-ws-")  # another workspace: another Cluster slot
    await store.commit([Commit(checks={key + "a": 0, key + "b": 0},
                               writes={key + "a": b"1", key + "b": b"2"})])  # fmt: skip
    await store.commit([Commit(checks={other + "c": 0}, writes={other + "c": b"3"})])
    assert await store.read([key + "b"], discard=[key + "a", other + "c"]) == [Record(1, b"2")]
    assert await store.read([key + "a", other + "c"]) == [Record(0, None), Record(0, None)]
    assert await store.read([], discard=[key + "b"]) == []
    assert await store.read([key + "b"]) == [Record(0, None)]


async def test_redis_store_reconnects_after_its_connection_is_killed(
    servers: tuple[str, str], key: str
) -> None:
    import redis.asyncio as aioredis
    from redis.exceptions import ConnectionError as RedisConnectionError

    store = RedisStore.from_url(servers[1], marker_ttl_s=3600)
    admin = aioredis.Redis.from_url(servers[1])
    try:
        await store.commit([Commit(checks={key + "a": 0}, writes={key + "a": b"one"})])
        (own_id,) = await store._round_trip([("CLIENT", "ID")])  # the one to kill
        await admin.client_kill_filter(_id=own_id)
        try:  # the call on the killed connection may fail; it must not leave the store stuck
            await store.read([key + "a"])
        except (RedisConnectionError, OSError):
            pass
        assert await store.read([key + "a"]) == [Record(1, b"one")]
    finally:
        await admin.aclose()
        await store.close()


async def test_redis_store_raises_an_error_reply(servers: tuple[str, str], key: str) -> None:
    from redis.exceptions import ResponseError

    store = RedisStore.from_url(servers[1], marker_ttl_s=3600)
    try:
        await store._client.set(key + "s", b"not a hash")  # a broken record
        with pytest.raises(ResponseError, match="WRONGTYPE"):
            await store.read([key + "s", key + "a"])
        assert await store.read([key + "a"]) == [Record(0, None)]  # and it goes on
    finally:
        await store.close()


# ------------------------------------------------------------------------------ outbox indexes


def outbox_keys() -> tuple[Keys, str]:
    """A namespace of its own and a workspace whose keys need escaping."""
    return Keys(f"contract-{uuid.uuid4().hex[:8]}"), "ws:{odd}"


async def test_a_commit_lists_its_outbox_record_in_the_workspace_index(store: Store) -> None:
    keys, ws = outbox_keys()
    dev, box = keys.of(ws, "dev", "a1"), keys.outbox(ws, "b1")
    index = keys.outbox_index(ws)
    before = time.time()
    assert await store.commit([Commit(checks={dev: 0, box: 0}, writes={dev: b"d", box: b"o"})])
    after = time.time()
    assert await store.indexed([index], until=after + 1) == [box]
    # Scored by the time of the commit: not listed as committed before it.
    assert await store.indexed([index], until=before - 1) == []
    # Another workspace's index lists nothing of it; a record that is no outbox record is
    # listed nowhere.
    assert await store.indexed([keys.outbox_index("other")], until=after + 1) == []
    assert await store.read([dev, box]) == [Record(1, b"d"), Record(1, b"o")]  # as before
    await store.delete([dev, box])


async def test_a_commit_that_loses_lists_nothing(store: Store) -> None:
    keys, ws = outbox_keys()
    dev, box = keys.of(ws, "dev", "a1"), keys.outbox(ws, "b1")
    stale = Commit(checks={dev: 3, box: 0}, writes={dev: b"d", box: b"o"})
    assert await store.commit([stale]) == [False]
    assert await store.indexed([keys.outbox_index(ws)], until=time.time() + 1) == []
    assert await store.read([box]) == [Record(0, None)]


async def test_the_index_lists_only_the_undelivered_records(store: Store) -> None:
    keys, ws = outbox_keys()
    index, other = keys.outbox_index(ws), keys.outbox_index("ws-2")
    boxes = [keys.outbox(ws, f"b{n}") for n in range(3)] + [keys.outbox("ws-2", "b3")]
    for box in boxes:  # one commit each, as batches write them
        assert await store.commit([Commit(checks={box: 0}, writes={box: b"o"})]) == [True]
    later = time.time() + 1
    assert await store.indexed([index, other], until=later) == sorted(boxes)
    await store.delete([boxes[0]])  # delivered, deleted at once
    assert await store.read([keys.of(ws, "dev", "a1")], discard=[boxes[1], boxes[3]]) == [
        Record(0, None)
    ]  # delivered, deleted with the next read
    assert await store.indexed([index, other], until=later) == [boxes[2]]
    await store.delete([boxes[2]])
    assert await store.indexed([index, other], until=later) == []
    # An emptied index is no key at all (a namespace holds nothing once its outbox is sent).
    assert await store.scan(keys.everything()) == []


async def test_a_flag_is_written_once_until_it_expires(store: Store) -> None:
    keys = Keys(f"contract-{uuid.uuid4().hex[:8]}")
    flag = keys.outbox_scan_marker()
    assert await store.mark(flag, 60, only_new=True)
    assert not await store.mark(flag, 60, only_new=True)  # another sweep: not this one's turn
    assert await store.mark(flag, 3600, only_new=False)  # renewed, for longer
    assert not await store.mark(flag, 60, only_new=True)
    await store.delete([flag])
    assert await store.mark(flag, 60, only_new=True)
    await store.delete([flag])


async def test_redis_flags_and_empty_indexes_expire_or_go(servers: tuple[str, str]) -> None:
    import redis.asyncio as aioredis

    keys, ws = outbox_keys()
    store = RedisStore.from_url(servers[1], marker_ttl_s=3600)
    client = aioredis.Redis.from_url(servers[1])
    try:
        flag = keys.outbox_scan_marker()
        assert await store.mark(flag, 120, only_new=True)
        assert 0 < await client.ttl(flag) <= 120
        assert await store.mark(flag, 86400, only_new=False)
        assert 120 < await client.ttl(flag) <= 86400
        box = keys.outbox(ws, "b1")
        assert await store.commit([Commit(checks={box: 0}, writes={box: b"o"})]) == [True]
        index = keys.outbox_index(ws)
        assert await client.type(index) == b"zset" and await client.ttl(index) == -1
        assert await client.zrange(index, 0, -1) == [box.encode()]
        await store.delete([box])
        assert not await client.exists(index)
    finally:
        await client.delete(keys.outbox_scan_marker())
        await client.aclose()
        await store.close()


# --------------------------------------------------------------------------- changelog records


async def test_apply_writes_a_newer_version_and_keeps_a_newer_one_held(
    store: Store, key: str
) -> None:
    assert await store.apply([Change(key + "a", 3, b"three"), Change(key + "b", 1, b"one")]) == 2
    assert await store.read([key + "a", key + "b"]) == [Record(3, b"three"), Record(1, b"one")]
    # An older version, or the same one again, changes nothing: a tail can be applied twice.
    assert await store.apply([Change(key + "a", 2, b"two"), Change(key + "b", 1, b"one")]) == 0
    assert await store.apply([Change(key + "a", 4, b"four")]) == 1
    assert await store.read([key + "a"]) == [Record(4, b"four")]


async def test_apply_deletes_for_a_tombstone(store: Store, key: str) -> None:
    await store.apply([Change(key + "a", 2, b"two")])
    assert await store.apply([Change(key + "a", 0, None), Change(key + "gone", 0, None)]) == 1
    assert await store.read([key + "a"]) == [Record(0, None)]
    # A record written again after its deletion starts at version 1, as a commit would.
    assert await store.apply([Change(key + "a", 1, b"again")]) == 1
    assert await store.read([key + "a"]) == [Record(1, b"again")]


async def test_a_commits_changelog_rebuilds_it_in_an_empty_store(store: Store, key: str) -> None:
    keys = Keys(f"rebuild-{uuid.uuid4().hex[:8]}")
    dev, evt = keys.of("ws", "dev", "a1"), keys.of("ws", "evt", "e1")
    box = keys.outbox("ws", "b1")
    first = Commit(checks={dev: 0, evt: 0}, writes={dev: b"d1", evt: b"", box: b"o"},
                   expiring={evt})  # fmt: skip
    second = Commit(checks={dev: 1}, writes={dev: b"d2"})
    assert await store.commit([first]) == [True] and await store.commit([second]) == [True]
    logged = [encode(c, keys.prefix()) for commit in (first, second)
              for c in changes(commit, keys, now_ms=1_000, ttl_s=3600)]  # fmt: skip
    assert [k for k, _ in logged] == [b"{ws}:dev:a1", b"{ws}:evt:e1", b"{ws}:dev:a1"]  # no outbox
    # The outbox record is listed in its index, which is no record and not logged either.
    assert await store.indexed([keys.outbox_index("ws")], until=time.time() + 1) == [box]
    other = Keys(keys.namespace + "-restored")
    rebuilt = [decode(k, v, other.prefix()) for k, v in logged]
    assert rebuilt[1].expires_at_ms == 1_000 + 3600 * 1000
    target = MemoryStore()
    await target.apply(rebuilt)
    assert target.records == {other.of("ws", "dev", "a1"): Record(2, b"d2"),
                              other.of("ws", "evt", "e1"): Record(1, b"")}  # fmt: skip
    await store.delete([dev, evt, box])


async def test_an_applied_marker_expires_when_its_record_says(servers: tuple[str, str]) -> None:
    import time

    import redis.asyncio as aioredis

    key = f"contract:{{ws-{uuid.uuid4().hex}}}:evt:e1"
    store = RedisStore.from_url(servers[1], marker_ttl_s=3600)
    client = aioredis.Redis.from_url(servers[1])
    try:
        expires = int(time.time() * 1000) + 600_000
        assert await store.apply([Change(key, 1, b"", expires)]) == 1
        assert 590_000 < await client.pttl(key) <= 600_000
    finally:
        await client.delete(key)
        await client.aclose()
        await store.close()
