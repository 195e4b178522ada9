"""The Redis Store: records are hashes {v: version, d: data}; commits are one Lua script each."""

from __future__ import annotations

from collections.abc import Sequence
from importlib.resources import files

import redis.asyncio as aioredis

from pipeline.state.base import ABSENT, Commit, Record

COMMIT_LUA = files("pipeline.state").joinpath("commit.lua").read_text()
READ_LUA = files("pipeline.state").joinpath("read.lua").read_text()


def _slot_tag(key: str) -> str:
    """The hash tag of a key (its workspace), which decides its Redis Cluster slot."""
    start = key.find("{")
    end = key.find("}", start + 1)
    return key[start + 1 : end] if start >= 0 and end > start else key


class RedisStore:
    """Versioned records in Redis; reads and commits are pipelined, one round trip each."""

    def __init__(self, client: aioredis.Redis, *, marker_ttl_s: int) -> None:
        self._client = client
        self._marker_ttl_s = marker_ttl_s
        self._commit = client.register_script(COMMIT_LUA)
        self._read = client.register_script(READ_LUA)

    @classmethod
    def from_url(cls, url: str, *, marker_ttl_s: int) -> RedisStore:
        """Connect lazily to the Redis at `url`."""
        return cls(aioredis.Redis.from_url(url), marker_ttl_s=marker_ttl_s)

    async def read(self, keys: Sequence[str]) -> list[Record]:
        """Read every key in one round trip: one script call per workspace, pipelined.

        One call with many keys costs far less client time than one HMGET per key.
        """
        if not keys:
            return []
        groups: dict[str, list[int]] = {}
        for index, key in enumerate(keys):
            groups.setdefault(_slot_tag(key), []).append(index)
        pipe = self._client.pipeline(transaction=False)
        for indexes in groups.values():
            await self._read(keys=[keys[i] for i in indexes], client=pipe)
        records: list[Record] = [ABSENT] * len(keys)
        for indexes, flat in zip(groups.values(), await pipe.execute(), strict=True):
            for position, index in enumerate(indexes):
                version = flat[2 * position]
                if version is not None:
                    records[index] = Record(int(version), flat[2 * position + 1])
        return records

    async def commit(self, commits: Sequence[Commit]) -> list[bool]:
        """Run the compare-and-set script once per commit, all in one round trip."""
        if not commits:
            return []
        pipe = self._client.pipeline(transaction=False)
        for commit in commits:
            keys = list(commit.checks.keys() | commit.writes.keys())
            args: list[bytes | str | int] = [self._marker_ttl_s]
            for key in keys:
                args.append(commit.checks.get(key, 0))
                if key not in commit.writes:
                    args += ["c", b""]
                else:
                    args += ["x" if key in commit.expiring else "w", commit.writes[key]]
            await self._commit(keys=keys, args=args, client=pipe)
        return [bool(result) for result in await pipe.execute()]

    async def ping(self) -> bool:
        """Whether the server answers."""
        return bool(await self._client.ping())

    async def close(self) -> None:
        """Close the connection pool."""
        await self._client.aclose()
