"""`open_store`: the store for a REDIS_URL, standalone or Redis Cluster, detected at start.

Every caller opens its store here (the worker, `idp inspect`, `idp replay`, the tests), so a
URL naming any node of a cluster gets the cluster store and a standalone Redis keeps the
standalone store and its single-connection round trip, unchanged.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from pipeline.state.base import Record, Store
from pipeline.state.redis_store import CONNECT_TIMEOUT_S, RedisStore

logger = logging.getLogger(__name__)

DEFAULT_WAIT_TIMEOUT_MS = 1000


def is_cluster(url: str) -> bool:
    """Whether the Redis at `url` runs in cluster mode (INFO's `cluster_enabled`)."""
    client = redis.Redis.from_url(url, socket_timeout=CONNECT_TIMEOUT_S,
                                  socket_connect_timeout=CONNECT_TIMEOUT_S)  # fmt: skip
    try:
        return int(client.info("cluster").get("cluster_enabled", 0)) == 1
    finally:
        client.close()


def open_store(
    url: str,
    *,
    marker_ttl_s: int,
    wait_replicas: int = 0,
    wait_timeout_ms: int = DEFAULT_WAIT_TIMEOUT_MS,
) -> Store:
    """The store for `url`: `ClusterRedisStore` on a cluster node, `RedisStore` otherwise.

    `wait_replicas` applies on a cluster only (see `ClusterRedisStore`). A Redis that does not
    answer yet is asked again at the store's first call, so a worker started before its Redis
    waits for it as it always has.
    """
    options = {"marker_ttl_s": marker_ttl_s, "wait_replicas": wait_replicas,
               "wait_timeout_ms": wait_timeout_ms}  # fmt: skip
    try:
        cluster = is_cluster(url)
    except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
        logger.warning("Redis at %s does not answer yet (%s); detecting its mode later", url, exc)
        return _Undetected(url, options)
    return _build(url, cluster=cluster, options=options)


def _build(url: str, *, cluster: bool, options: dict) -> Store:
    if not cluster:
        return RedisStore.standalone(url, marker_ttl_s=options["marker_ttl_s"])
    from pipeline.state.cluster_store import ClusterRedisStore

    return ClusterRedisStore.cluster_from_url(url, **options)


class _Undetected:
    """A store whose Redis did not answer at start: it detects the mode at its first call."""

    def __init__(self, url: str, options: dict) -> None:
        self._url = url
        self._options = options
        self._store: Store | None = None

    async def _resolved(self) -> Store:
        if self._store is None:
            import asyncio

            cluster = await asyncio.to_thread(is_cluster, self._url)  # raises while Redis is away
            self._store = _build(self._url, cluster=cluster, options=self._options)
        return self._store

    @property
    def topology(self) -> int:
        """See `Store.topology`."""
        return 0 if self._store is None else self._store.topology

    async def read(self, keys: Sequence[str], *, discard: Sequence[str] = ()) -> list[Record]:
        """See `Store.read`."""
        return await (await self._resolved()).read(keys, discard=discard)

    async def commit(self, commits: Sequence) -> list[bool]:
        """See `Store.commit`."""
        return await (await self._resolved()).commit(commits)

    async def delete(self, keys: Sequence[str]) -> None:
        """See `Store.delete`."""
        await (await self._resolved()).delete(keys)

    async def scan(self, pattern: str) -> list[str]:
        """See `Store.scan`."""
        return await (await self._resolved()).scan(pattern)

    async def indexed(self, indexes: Sequence[str], *, until: float) -> list[str]:
        """See `Store.indexed`."""
        return await (await self._resolved()).indexed(indexes, until=until)

    async def mark(self, key: str, ttl_s: int, *, only_new: bool) -> bool:
        """See `Store.mark`."""
        return await (await self._resolved()).mark(key, ttl_s, only_new=only_new)

    async def advance(self, epoch: str, markers: Sequence[tuple[str, int, int]]) -> bool:
        """See `Store.advance`."""
        return await (await self._resolved()).advance(epoch, markers)

    async def apply(self, changes: Sequence) -> int:
        """See `Store.apply`."""
        return await (await self._resolved()).apply(changes)

    async def ping(self) -> bool:
        """Whether the server answers."""
        return bool(await (await self._resolved()).ping())  # type: ignore[attr-defined]

    async def close(self) -> None:
        """Close the store, if it was ever opened."""
        if self._store is not None:
            await self._store.close()
