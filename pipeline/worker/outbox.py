"""The outbox: outputs of committed batches kept in Redis until the broker has them.

A batch's state and its outputs are committed together (the outputs as an outbox record,
`Keys.outbox`). If the worker dies before they are delivered, the state is already applied, so
a replay of the inputs would emit nothing: the outbox is what a worker sends again. Events
(merges, shutdowns, rejections) are sent as they were; a profile is sent as it is *now* in
Redis, never an older version, so a late re-send cannot overwrite a newer profile on the
compacted topic.

Finding them costs what is undelivered, not what Redis holds: every commit that writes an
outbox record lists it, in the same script, in its workspace's outbox index (a sorted set scored
by the time of the commit, `Keys.outbox_index`), and deleting the record unlists it. A sweep
reads the indexes of the configured workspaces in one round trip. Records no such index lists
(an earlier release's, which kept no index, or those of a workspace no longer configured) are
found by a SCAN of the whole keyspace, made at most once per `RESCAN_S` per namespace: by the
first sweep of any worker once the flag `Keys.outbox_scan_marker` is gone (the first sweep
after an upgrade among them).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from pipeline.state.base import Change, Keys, Store
from pipeline.state.changelog import encode
from pipeline.worker import metrics
from pipeline.worker.durability import StateLost
from pipeline.worker.processor import outbox_records, outbox_state
from schemas.topics import PROFILES, STATE_CHANGELOG

logger = logging.getLogger(__name__)

REDIS_DOWN = (RedisConnectionError, RedisTimeoutError, OSError)

# Send one output (logical topic, key, value) and return what resolves once the broker has it.
Send = Callable[[str, bytes | None, bytes | None], Awaitable[Awaitable[object]]]

RESCAN_S = 86400  # at most this often per namespace a sweep also SCANs for unlisted records
SCAN_LEASE_S = 900  # a sweep's claim to that SCAN, until it is done (a worker may die in it)


class Outbox:
    """Finds, sends again and deletes the outbox records of a state namespace."""

    def __init__(
        self,
        store: Store,
        keys: Keys,
        send: Send,
        *,
        changelog_ttl_s: int | None = None,
        workspaces: Sequence[str] = (),
        rescan_s: int = RESCAN_S,
        recover: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self.store = store  # with a changelog, a `GuardedStore`: reads of lost state raise
        self.recover = recover  # catches Redis up with the changelog after such a read
        self.keys = keys
        self.send = send
        self.changelog_ttl_s = changelog_ttl_s  # see `Processor`: None, no changelog
        self.workspaces = sorted(workspaces)  # whose outbox indexes a sweep reads
        self.rescan_s = rescan_s

    async def sweep(self, min_age_s: float) -> int:
        """Send the records older than `min_age_s` (a dead worker's); never raises for Redis.

        Younger ones may belong to a live worker's batch in flight.
        """
        while True:
            try:
                return await self.drain(min_age_s)
            except REDIS_DOWN as exc:
                logger.warning("outbox sweep skipped: Redis unavailable (%s)", exc)
                return 0
            except StateLost as exc:
                # Profiles read absent from a Redis that lost them would go out as tombstones.
                if self.recover is None:
                    raise
                logger.error("%s; catching up with the state changelog before the sweep", exc)
                await self.recover()

    async def redeliver(self, entries: Sequence[str], *, first_delay_s: float = 0.5) -> None:
        """Send these records again until the broker and Redis take them (a refused delivery).

        Until then the batch's held events keep its offsets uncommitted; a worker stopped
        meanwhile leaves the records to the next one's sweep at start.
        """
        delay = first_delay_s
        while True:
            await asyncio.sleep(delay)
            try:
                await self.drain(0.0, entries=entries)
                return
            except StateLost as exc:
                logger.error("%s; catching up with the state changelog before re-sending", exc)
                if self.recover is not None:
                    await self.recover()
                    delay = first_delay_s
            except Exception as exc:  # the broker or Redis is still away
                logger.warning("outbox re-send failed (%s); retrying in %.1fs", exc, delay)
                delay = min(delay * 2, 5.0)

    async def find(self, min_age_s: float) -> list[str]:
        """The outbox records a sweep looks at: those the indexes list as older than `min_age_s`.

        One round trip whatever the keyspace holds. Besides, when no sweep of the namespace
        has SCANned in the last `rescan_s` (the flag `Keys.outbox_scan_marker` is gone), this
        one also SCANs for every outbox record: those no index lists are found there.
        """
        started = time.perf_counter()
        indexes = [self.keys.outbox_index(ws) for ws in self.workspaces]
        found = set(await self.store.indexed(indexes, until=time.time() - min_age_s))
        metrics.OUTBOX_LOOKUP_SECONDS.labels("index").observe(time.perf_counter() - started)
        marker = self.keys.outbox_scan_marker()
        if await self.store.mark(marker, SCAN_LEASE_S, only_new=True):
            started = time.perf_counter()
            scanned = await self.store.scan(self.keys.outbox_pattern())  # the whole keyspace
            listed = set(await self.store.indexed(indexes, until=float("inf")))
            await self.store.mark(marker, self.rescan_s, only_new=False)
            metrics.OUTBOX_LOOKUP_SECONDS.labels("scan").observe(time.perf_counter() - started)
            unlisted = set(scanned) - listed
            metrics.OUTBOX_UNLISTED.inc(len(unlisted))
            logger.info("outbox SCAN (at most every %ds): %d records, %d of them in no index of "
                        "the configured workspaces", self.rescan_s, len(scanned),
                        len(unlisted))  # fmt: skip
            found |= unlisted
        return sorted(found)

    async def drain(self, min_age_s: float, *, entries: Sequence[str] | None = None) -> int:
        """Send and delete outbox records (those `find` finds, unless given); return outputs sent.

        An entry that is not an outbox record of this namespace, or that cannot be decoded, is
        logged, counted (`idp_unreadable_state_records{kind="outbox"}`) and left as it is. An
        index entry whose record is gone (deleted by a connection lost before its index was
        told) is dropped.
        """
        if entries is None:
            entries = await self.find(min_age_s)
            metrics.OUTBOX_FOUND.set(len(entries))
        entries = list(entries)
        sent = 0
        gone = []
        for entry, record in zip(entries, await self.store.read(entries), strict=True):
            if record.data is None:
                gone.append(entry)
                continue
            parts = self.keys.parse(entry)
            try:
                if parts is None or parts.kind != "outbox":
                    raise ValueError("not an outbox key of this namespace")
                created, records = outbox_records(record.data)
                state = outbox_state(record.data)
            except Exception as exc:  # foreign or damaged bytes: never fatal
                logger.error("skipping an unreadable outbox record %s (%s: %s)", entry,
                             type(exc).__name__, exc)  # fmt: skip
                metrics.UNREADABLE_RECORDS.labels("outbox").inc()
                continue
            if time.time() - created < min_age_s:
                continue
            contacts = sorted({k.decode() for t, k, _ in records if t == PROFILES and k})
            futures = [await self.send(t, k, v) for t, k, v in records if t != PROFILES]
            futures += await self.send_current(parts.workspace_id, contacts)
            futures += await self.send_changelog(state)
            await asyncio.gather(*futures)
            await self.store.delete([entry])
            sent += len(records)
        if gone:
            await self.store.delete(gone)
        if sent:
            logger.warning("re-sent %d undelivered outputs from the outbox", sent)
        return sent

    async def send_changelog(self, state: Sequence[str]) -> list[Awaitable[object]]:
        """Send the changelog records of these keys as they are now (absent: a tombstone).

        Never an older version than Redis holds, as with profiles; a processed-event marker
        is logged to expire a dedup horizon from now.
        """
        if self.changelog_ttl_s is None or not state:
            return []
        now_ms, prefix = int(time.time() * 1000), self.keys.prefix()
        futures = []
        for key, record in zip(state, await self.store.read(state), strict=True):
            parts = self.keys.parse(key)
            expires = now_ms + self.changelog_ttl_s * 1000 if parts and parts.kind == "evt" else 0
            change = Change(key, record.version, record.data if record.version else None, expires)
            futures.append(await self.send(STATE_CHANGELOG, *encode(change, prefix)))
        return futures

    async def send_current(
        self, workspace_id: str, contacts: Sequence[str], *, sent: Sequence[int] | None = None
    ) -> list[Awaitable[object]]:
        """Send the profiles as they are now, until none changed while being sent.

        `sent`: the versions already on their way (a batch's own); those still current are not
        sent again. Returns the futures of the last round, already delivered.
        """
        keys = [self.keys.of(workspace_id, "contact", c) for c in contacts]
        versions: list[int] | None = None if sent is None else list(sent)
        futures: list[Awaitable[object]] = []
        while keys:
            current = await self.store.read(keys)
            now = [r.version for r in current]
            if now == versions:
                break
            before: list[int | None] = [None] * len(keys) if versions is None else list(versions)
            futures = [
                await self.send(PROFILES, c.encode(), r.data or None)
                for c, r, was in zip(contacts, current, before, strict=True)
                if r.version != was
            ]
            await asyncio.gather(*futures)
            versions = now
        return futures
