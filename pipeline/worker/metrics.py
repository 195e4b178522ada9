"""The worker's metrics, exported for Prometheus (`/metrics` on `IDP_HTTP_PORT`).

Every input ends in exactly one of applied, unchanged or rejected, so at any quiet moment
`events_in = applied + unchanged + rejected` (the accounting identity the soak test checks).
Everything here is incremented where it happens, once per batch or per round trip, never per
event beyond a counter increment; consumer lag is sampled on a timer (`sample_lag`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    start_http_server,
)

from pipeline.state.base import Change, Commit, Record, Store

EVENTS_IN = Counter("idp_events_in", "Input records read", ["topic"])
APPLIED = Counter("idp_events_applied", "Valid events that changed the identity state")
UNCHANGED = Counter("idp_events_unchanged", "Valid events that changed nothing (known, or replays)")
# Rejections by reason (too_late, token_reused, erased, ...; README, *Bad input*): a reason's
# series appears when it first happens.
REJECTED = Counter("idp_events_rejected", "Inputs recorded on identity.rejected", ["reason"])
OUTPUTS = Counter("idp_outputs", "Records published", ["topic"])
BATCH_EVENTS = Histogram("idp_batch_events", "Input records per processed batch",
                         buckets=(1, 10, 50, 100, 200, 300, 400, 500, 1000))  # fmt: skip
UNREADABLE_RECORDS = Counter(
    "idp_unreadable_state_records", "Stored or outbox records that could not be decoded", ["kind"]
)
CONFLICTS = Counter("idp_commit_conflicts", "Workspace commits that lost a race and were redone")
# An input batch the worker cannot read holds its partition at that offset (`worker.fetching`).
UNREADABLE_BATCHES = Counter("idp_unreadable_batches",
                             "Input record batches found unreadable (each batch counted once)",
                             ["topic", "partition"])  # fmt: skip
HELD_AT = Gauge("idp_partition_held_at_offset",
                "Offset of the unreadable batch an input partition is held at (absent: not held)",
                ["topic", "partition"])  # fmt: skip
CONSUMER_LAG = Gauge("idp_consumer_lag",
                     "Records of an assigned input partition after its committed offset "
                     "(highwater - committed, or - position before the first commit)",
                     ["topic", "partition"])  # fmt: skip
ASSIGNED = Gauge("idp_assigned_partitions", "Input partitions assigned to this worker")
STALLED = Gauge("idp_partitions_stalled",
                "Assigned input partitions behind their end whose offset has not moved for "
                "a minute (`worker.stalls`)")  # fmt: skip
STALLS = Counter("idp_partition_stalls", "Stalls of input partitions found (each one a minute "
                 "long; the partition is fetched again)")  # fmt: skip
OUTBOX_FOUND = Gauge(
    "idp_outbox_records_found",
    "Outbox records the last sweep found (undelivered outputs of committed batches)",
)
OUTBOX_LOOKUP_SECONDS = Histogram(
    "idp_outbox_lookup_seconds",
    "How long a sweep took to find outbox records: through the indexes, or by the rare SCAN",
    ["how"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.05, 0.25, 1.0, 5.0, 30.0, 120.0, 600.0),
)
OUTBOX_UNLISTED = Counter(
    "idp_outbox_unlisted_records",
    "Outbox records the rare SCAN found in no index of the configured workspaces",
)
OUTBOX_IN_FLIGHT = Gauge(
    "idp_outbox_in_flight", "Batches whose outputs are sent and not yet acknowledged by the broker"
)
REDIS_SECONDS = Histogram("idp_redis_round_trip_seconds",
                          "Round trips of the worker's store to Redis, by operation", ["op"],
                          buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
                                   0.5, 1.0, 2.5))  # fmt: skip


def serve(port: int) -> None:
    """Expose /metrics on 127.0.0.1:`port` with prometheus_client's own server (0: do not).

    `IDP_METRICS_PORT`, kept beside `/metrics` on `IDP_HTTP_PORT` for existing scrapers.
    """
    if port:
        start_http_server(port, addr="127.0.0.1")


def exposition() -> tuple[bytes, str]:
    """The Prometheus text of the process's registry, and its content type."""
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST


def sample_lag(
    assigned: Iterable[Any],
    highwater: Callable[[Any], int | None],
    committed: Callable[[Any], int | None],
    exported: set[tuple[str, str]],
) -> None:
    """Set the lag of each assigned partition; drop the partitions no longer assigned.

    `exported` holds the (topic, partition) label pairs set last time and is updated.
    """
    now: set[tuple[str, str]] = set()
    for tp in assigned:
        end = highwater(tp)
        done = committed(tp)
        if end is None or done is None:
            continue
        labels = (tp.topic, str(tp.partition))
        CONSUMER_LAG.labels(*labels).set(max(end - done, 0))
        now.add(labels)
    for labels in exported - now:
        CONSUMER_LAG.remove(*labels)
    exported.clear()
    exported.update(now)


class TimedStore:
    """A store whose read and commit round trips are timed (`idp_redis_round_trip_seconds`).

    Wraps whichever store `open_store` chose; everything else is the wrapped store's own.
    """

    def __init__(self, store: Store) -> None:
        self._store = store
        self._read = REDIS_SECONDS.labels("read")
        self._commit = REDIS_SECONDS.labels("commit")

    @property
    def topology(self) -> int:
        """See `Store.topology`."""
        return self._store.topology

    async def read(self, keys: Sequence[str], *, discard: Sequence[str] = ()) -> list[Record]:
        """See `Store.read`."""
        started = time.perf_counter()
        try:
            return await self._store.read(keys, discard=discard)
        finally:
            self._read.observe(time.perf_counter() - started)

    async def commit(self, commits: Sequence[Commit]) -> list[bool]:
        """See `Store.commit`."""
        started = time.perf_counter()
        try:
            return await self._store.commit(commits)
        finally:
            self._commit.observe(time.perf_counter() - started)

    async def delete(self, keys: Sequence[str]) -> None:
        """See `Store.delete`."""
        await self._store.delete(keys)

    async def scan(self, pattern: str) -> list[str]:
        """See `Store.scan`."""
        return await self._store.scan(pattern)

    async def indexed(self, indexes: Sequence[str], *, until: float) -> list[str]:
        """See `Store.indexed`."""
        return await self._store.indexed(indexes, until=until)

    async def mark(self, key: str, ttl_s: int, *, only_new: bool) -> bool:
        """See `Store.mark`."""
        return await self._store.mark(key, ttl_s, only_new=only_new)

    async def advance(self, epoch: str, markers: Sequence[tuple[str, int, int]]) -> bool:
        """See `Store.advance`."""
        return await self._store.advance(epoch, markers)

    async def apply(self, changes: Sequence[Change]) -> int:
        """See `Store.apply`."""
        return await self._store.apply(changes)

    async def ping(self) -> bool:
        """Whether Redis answers."""
        return bool(await self._store.ping())  # type: ignore[attr-defined]

    async def close(self) -> None:
        """See `Store.close`."""
        await self._store.close()

    def __getattr__(self, name: str) -> Any:  # the wrapped store's own
        return getattr(self._store, name)
