"""The Redis Store: records are hashes {v: version, d: data}; commits are one Lua script each."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from importlib.resources import files

import hiredis
import redis.asyncio as aioredis
from redis.asyncio.connection import AbstractConnection
from redis.exceptions import DataError, NoScriptError, ResponseError

from pipeline.state.base import ABSENT, Change, Commit, Record, Store, outbox_index_of

REPLY_TIMEOUT_S = 10.0  # far above any script's run time; see `from_url`
CONNECT_TIMEOUT_S = 5.0
COMMIT_LUA = files("pipeline.state").joinpath("commit.lua").read_text()
READ_LUA = files("pipeline.state").joinpath("read.lua").read_text()
APPLY_LUA = files("pipeline.state").joinpath("apply.lua").read_text()
ADVANCE_LUA = files("pipeline.state").joinpath("advance.lua").read_text()
APPLY_KEYS = 500  # changelog records per script call on a standalone server


def _slot_tag(key: str) -> str:
    """The hash tag of a key (its workspace), which decides its Redis Cluster slot."""
    start = key.find("{")
    end = key.find("}", start + 1)
    return key[start + 1 : end] if start >= 0 and end > start else key


class _HiredisPacking:
    """Pack commands with hiredis, in C, as redis-py's synchronous connections already do.

    Its asyncio connections pack in Python, about 0.7 µs per argument here, and a batch's
    read or commit is one command with an argument per record. Arguments are str, bytes or
    numbers; a command name with a space ("SCRIPT LOAD") is split as redis-py does.
    """

    def pack_command(self, *args: object) -> list[bytes]:
        name = args[0]
        if isinstance(name, str) and " " in name:
            args = (*name.split(), *args[1:])
        try:
            return [hiredis.pack_command(args)]  # type: ignore[arg-type] # str, bytes, numbers
        except TypeError as exc:
            raise DataError(str(exc)) from exc


async def exchange(connection: AbstractConnection, commands: Sequence[tuple]) -> list:
    """Write the commands at once and read their replies, an error reply as its exception.

    A connection left mid-reply (an error, a cancellation) is disconnected, so its next use
    starts afresh.
    """
    try:
        await connection.send_packed_command(connection.pack_commands(commands), check_health=False)
        replies = []
        for _ in commands:
            try:
                replies.append(await connection.read_response())
            except ResponseError as exc:
                replies.append(exc)
    except BaseException:
        await connection.disconnect()
        raise
    return replies


def _by_slot(keys: Sequence[str]) -> dict[str, list[str]]:
    """Keys grouped by hash tag: a multi-key command must stay within one Cluster slot."""
    groups: dict[str, list[str]] = {}
    for key in keys:
        groups.setdefault(_slot_tag(key), []).append(key)
    return groups


def discard_commands(keys: Sequence[str]) -> list[tuple]:
    """UNLINK the keys (per slot), then ZREM the outbox records among them from their indexes.

    In that order, so a connection lost in between leaves an index entry whose record is gone
    (the sweep drops it), never a record no index lists.
    """
    commands: list[tuple] = [("UNLINK", *group) for group in _by_slot(keys).values()]
    indexes: dict[str, list[str]] = {}
    for key in keys:
        index = outbox_index_of(key)
        if index is not None:
            indexes.setdefault(index, []).append(key)
    commands += [("ZREM", index, *members) for index, members in indexes.items()]
    return commands


class RedisStore:
    """Versioned records in Redis; reads and commits are pipelined, one round trip each."""

    one_slot_per_call = False  # a script's keys may span slots (a standalone server)

    @property
    def topology(self) -> int:
        """See `Store.topology`: one server, whose slots never move."""
        return 0

    def __init__(self, client: aioredis.Redis, *, marker_ttl_s: int) -> None:
        self._client = client
        self._marker_ttl_s = marker_ttl_s
        self._shas: dict[str, str] = {}
        self._connection: AbstractConnection | None = None  # for reads and commits
        self._lock = asyncio.Lock()

    @classmethod
    def from_url(cls, url: str, *, marker_ttl_s: int, wait_replicas: int = 1) -> Store:
        """The store for `url`, standalone or Redis Cluster: `pipeline.state.factory.open_store`.

        Commits on a cluster wait for `wait_replicas` replicas (`IDP_REDIS_WAIT_REPLICAS`).
        """
        from pipeline.state.factory import open_store

        return open_store(url, marker_ttl_s=marker_ttl_s, wait_replicas=wait_replicas)

    @classmethod
    def standalone(cls, url: str, *, marker_ttl_s: int) -> RedisStore:
        """Connect lazily to the standalone Redis at `url`."""
        # A reply that never comes (a connection half-open across a Redis restart) must end
        # in an error the worker retries, not in a wait that never ends.
        client = aioredis.Redis.from_url(url, socket_timeout=REPLY_TIMEOUT_S,
                                         socket_connect_timeout=CONNECT_TIMEOUT_S)  # fmt: skip
        pool = client.connection_pool
        pool.connection_class = type(  # whichever class the URL chose (TCP, TLS, Unix socket)
            pool.connection_class.__name__, (_HiredisPacking, pool.connection_class), {}
        )
        return cls(client, marker_ttl_s=marker_ttl_s)

    async def read(self, keys: Sequence[str], *, discard: Sequence[str] = ()) -> list[Record]:
        """Read every key in one round trip: one script call per workspace, pipelined.

        One call with many keys costs far less client time than one HMGET per key; and each
        round trip costs the client about as much as reading a hundred keys, so `discard` is
        deleted (UNLINK) in the same round trip.
        """
        if not keys and not discard:
            return []
        groups: dict[str, list[int]] = {}
        prefix, indexes = "\0", []  # keys come in runs of one workspace: tag each run once
        for index, key in enumerate(keys):
            if not key.startswith(prefix):
                tag = _slot_tag(key)
                prefix = key[: key.find("}") + 1] if "}" in key else key + "\0"
                indexes = groups.setdefault(tag, [])
            indexes.append(index)
        calls = [[keys[i] for i in indexes] for indexes in groups.values()]
        replies = await self._run(READ_LUA, [(call, []) for call in calls], unlink=discard)
        records: list[Record] = [ABSENT] * len(keys)
        for indexes, flat in zip(groups.values(), replies, strict=True):
            for position, index in enumerate(indexes):
                version = flat[2 * position]
                if version is not None:
                    records[index] = Record(int(version), flat[2 * position + 1])
        return records

    async def commit(self, commits: Sequence[Commit]) -> list[bool]:
        """Run the compare-and-set script once per commit, all in one round trip."""
        if not commits:
            return []
        calls = []
        score = f"{time.time():.3f}"  # an outbox record's place in its index: when committed
        for commit in commits:
            keys = list(commit.checks.keys() | commit.writes.keys())
            args: list[bytes | str | int] = [self._marker_ttl_s]
            listed: list[tuple[str, str, str]] = []
            for key in keys:
                args.append(commit.checks.get(key, 0))
                if key not in commit.writes:
                    args += ["c", b""]
                else:
                    mode = "d" if key in commit.deleting else "w"
                    args += ["x" if key in commit.expiring else mode, commit.writes[key]]
                    index = outbox_index_of(key)
                    if index is not None:
                        listed.append((index, "r" if mode == "d" else "z", key))
            for index, mode, key in listed:  # the outbox index, in the same script
                keys.append(index)
                args += [score, mode, key]
            calls.append((keys, args))
        return [bool(result) for result in await self._run(COMMIT_LUA, calls)]

    async def advance(self, epoch: str, markers: Sequence[tuple[str, int, int]]) -> bool:
        """See `Store.advance`: one script call (the markers share the epoch's hash tag)."""
        args: list[int] = [n for _, floor, version in markers for n in (floor, version)]
        (result,) = await self._run(ADVANCE_LUA, [([epoch, *(k for k, _, _ in markers)], args)])
        return int(result) == 1

    async def apply(self, changes: Sequence[Change]) -> int:
        """Apply changelog records in one round trip: calls of `APPLY_KEYS` keys each.

        A standalone Redis runs a script over keys of any slot; a cluster's store calls it
        once per slot (`ClusterRedisStore.one_slot_per_call`).
        """
        groups: dict[str, list[Change]] = {}
        if self.one_slot_per_call:
            for change in changes:
                groups.setdefault(_slot_tag(change.key), []).append(change)
        else:
            for start in range(0, len(changes), APPLY_KEYS):
                groups[str(start)] = list(changes[start : start + APPLY_KEYS])
        calls = []
        for group in groups.values():
            args: list[bytes | str | int] = []
            for change in group:
                mode = "w" if change.data is not None else "d"
                args += [change.version, mode, change.data or b"", change.expires_at_ms]
            calls.append(([change.key for change in group], args))
        return sum(await self._run(APPLY_LUA, calls)) if calls else 0

    async def _run(
        self, script: str, calls: list[tuple[list[str], list]], *, unlink: Sequence[str] = ()
    ) -> list:
        """EVALSHA each call in one pipelined round trip (and UNLINK `unlink` after them).

        redis-py's registered scripts ask SCRIPT EXISTS before every pipeline, a second round
        trip; instead the script is loaded once and loaded again only if Redis lost it (a
        restart without persistence of scripts), which the commit script's atomicity allows:
        a NOSCRIPT reply means that call did nothing.
        """
        for attempt in range(2):
            sha = self._shas.get(script)
            if sha is None:
                sha = self._shas[script] = await self._client.script_load(script)
            commands: list[tuple] = [("EVALSHA", sha, len(keys), *keys, *args)
                                     for keys, args in calls]  # fmt: skip
            commands += discard_commands(unlink)
            replies = await self._round_trip(commands)
            errors = [reply for reply in replies if isinstance(reply, ResponseError)]
            if not errors:
                return replies[: len(calls)]
            if attempt or not all(isinstance(e, NoScriptError) for e in errors):
                raise errors[0]
            self._shas.pop(script, None)
        raise AssertionError("unreachable")

    async def _round_trip(self, commands: list[tuple]) -> list:
        """Write the commands at once and read their replies (an error reply is returned).

        Straight on one connection of the client's pool rather than through a pipeline object:
        redis-py's asyncio pipeline costs about 120 µs of client CPU per round trip here, its
        connection alone about 70 µs, and a busy worker makes several round trips per batch.
        A connection left mid-reply (an error, a cancellation) is closed, so the next call
        starts on a fresh one.
        """
        async with self._lock:
            connection = self._connection
            if connection is None:
                connection = await self._client.connection_pool.get_connection()
                self._connection = connection
            return await exchange(connection, commands)

    async def delete(self, keys: Sequence[str]) -> None:
        """UNLINK the keys (one command per workspace, for Redis Cluster), and unlist them."""
        if keys:
            await self._commands(discard_commands(keys))

    async def scan(self, pattern: str) -> list[str]:
        """SCAN for keys matching `pattern`."""
        return sorted(
            [key.decode() async for key in self._client.scan_iter(match=pattern, count=1000)]
        )

    async def indexed(self, indexes: Sequence[str], *, until: float) -> list[str]:
        """See `Store.indexed`: a ZRANGEBYSCORE per index, all in one round trip."""
        if not indexes:
            return []
        bound = f"{until:.3f}"
        replies = await self._commands([("ZRANGEBYSCORE", index, "-inf", bound)
                                        for index in indexes])  # fmt: skip
        return sorted({member.decode() for reply in replies for member in reply})

    async def mark(self, key: str, ttl_s: int, *, only_new: bool) -> bool:
        """See `Store.mark`: SET with EX (and NX)."""
        command = ("SET", key, b"1", "EX", ttl_s, *(("NX",) if only_new else ()))
        (reply,) = await self._commands([command])
        return reply is not None

    async def _commands(self, commands: list[tuple]) -> list:
        """Send plain commands (their first argument a key) in one round trip; their replies.

        An error reply is raised. On a cluster each goes to the master of its key's slot.
        """
        replies = await self._round_trip(commands)
        for reply in replies:
            if isinstance(reply, ResponseError):
                raise reply
        return replies

    async def ping(self) -> bool:
        """Whether the server answers."""
        return bool(await self._client.ping())

    async def close(self) -> None:
        """Close the connection pool."""
        if self._connection is not None:
            await self._client.connection_pool.release(self._connection)
            self._connection = None
        await self._client.aclose()
