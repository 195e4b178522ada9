"""The Redis Store: records are hashes {v: version, d: data}; commits are one Lua script each."""

from __future__ import annotations

from collections.abc import Sequence
from importlib.resources import files

import redis.asyncio as aioredis

from pipeline.state.base import ABSENT, Commit, Record

COMMIT_LUA = files("pipeline.state").joinpath("commit.lua").read_text()


class RedisStore:
    """Versioned records in Redis; reads and commits are pipelined, one round trip each."""

    def __init__(self, client: aioredis.Redis, *, marker_ttl_s: int) -> None:
        self._client = client
        self._marker_ttl_s = marker_ttl_s
        self._commit = client.register_script(COMMIT_LUA)

    @classmethod
    def from_url(cls, url: str, *, marker_ttl_s: int) -> RedisStore:
        """Connect lazily to the Redis at `url`."""
        return cls(aioredis.Redis.from_url(url), marker_ttl_s=marker_ttl_s)

    async def read(self, keys: Sequence[str]) -> list[Record]:
        """HMGET each key in one pipelined round trip."""
        if not keys:
            return []
        pipe = self._client.pipeline(transaction=False)
        for key in keys:
            pipe.hmget(key, "v", "d")
        rows = await pipe.execute()
        return [ABSENT if v is None else Record(int(v), d) for v, d in rows]

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
