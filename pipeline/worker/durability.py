"""The worker never decides on state Redis lost: the changelog's markers, checked every batch.

Every committed batch's records go to the state changelog with its outputs
(`pipeline.state.changelog`). Once the broker has them, the worker moves the changelog
partitions' markers in Redis past their offsets (`delivered`, then `confirmed` once Redis has
the markers). Every batch reads the markers in the same round trip as its state, after it: a
marker lower than one this worker wrote or read means Redis lost writes since (a restart
without its last second, FLUSHALL, a lost disk), and the batch is not decided. The worker then
applies the changelog's tail to Redis (`IDP_AUTO_RESTORE`, on by default) or, with it off,
refuses to process until an operator has run `idp restore`, logging why and answering 503 on
`/readyz`; then it decides the batch again. At start it does the same when a marker is
missing or behind the changelog's end.

A read that comes before a loss, and a commit after it, cannot apply a decision made on lost
state: the commit's compare-and-set fails for every record that existed, and the batch is
read again. A decision that read only absent records was right either way. A batch delivered
across a loss waits for the catch-up before its markers move, and applies its own records
again if a catch-up ended after it was committed (`pipeline.worker.emitter`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable, Sequence

from pipeline.ops.restore import catch_up, changelog_ends, markers
from pipeline.state.base import Change, Commit, Keys, Record, Store

logger = logging.getLogger(__name__)

REFUSED_RETRY_S = 5.0  # how often a worker refusing to process looks again (auto-restore off)
EPOCH_BASE = 1 << 43  # an epoch's version is this minus the epoch ms it was written at


def new_epoch() -> int:
    """The version of an epoch record written now: lower than any written before it.

    Writing keeps a higher version (`Store.apply`), so of several workers writing the epoch
    after one loss the first one's stays; and a version below the one a worker knew means the
    epoch was written again since, after a loss.
    """
    return EPOCH_BASE - int(time.time() * 1000)


class StateLost(RuntimeError):
    """Redis holds less than the changelog says it had: the batch must not be decided."""


class StateGuard:
    """The changelog's markers as this worker knows them, and catching Redis up with them."""

    def __init__(
        self, store: Store, keys: Keys, bootstrap: str, topic: str, *, auto_restore: bool
    ) -> None:
        self.store = store
        self.keys = keys
        self.bootstrap = bootstrap
        self.topic = topic
        self.auto_restore = auto_restore
        self.partitions: list[int] = []
        self.known: dict[int, int] = {}  # partition -> the highest marker written or read
        self.refusing: str | None = None  # why the worker does not process (for /readyz)
        self.total_loss = False  # the epoch was found gone: apply the whole changelog
        self.restores = 0  # catch-ups done; a delivery compares it with its own (`Emitter`)
        self._recovering = asyncio.Lock()  # one catch-up at a time (the agent, deliveries)
        self.epoch = 0  # the epoch record's version as last read or written (0: not yet)
        self.topology: int | None = None  # the store's `topology` at the last read

    def marker_keys(self) -> list[str]:
        """The keys a batch reads after its state: the epoch, then the markers."""
        if not self.partitions:
            return []
        markers = [self.keys.changelog_marker(p) for p in self.partitions]
        return [self.keys.changelog_epoch(), *markers]

    def check(self, versions: Iterable[int], floor: dict[int, int] | None = None) -> None:
        """Raise `StateLost` if the epoch is gone or a marker is below what this worker knew.

        `floor`: what it knew when the read was sent (a marker it confirmed while the read was
        on its way may be newer than what the read found, and that is no loss).
        """
        known = self.known if floor is None else floor
        epoch, *rest = versions
        if not epoch:
            self.total_loss = True
            raise StateLost("Redis lost its state: the changelog's epoch record is gone")
        read = dict(zip(self.partitions, rest, strict=True))
        lost = {p: (v, known[p]) for p, v in read.items() if v < known.get(p, 0)}
        if lost:
            raise StateLost(
                "Redis lost writes: changelog markers went back "
                + ", ".join(
                    f"partition {p} {had} -> {now}" for p, (now, had) in sorted(lost.items())
                )
            )
        for partition, version in read.items():
            self.known[partition] = max(version, self.known.get(partition, 0))
        if self.epoch and epoch != self.epoch:
            # Another worker caught Redis up after a loss this one did not see: its batches in
            # flight apply their records again before their markers move (`Emitter`).
            logger.warning(
                "Redis was caught up with the state changelog by another worker "
                "(a new epoch): batches in flight apply their records again"
            )
            self.restores += 1
        self.epoch = epoch

    def moved(self, topology: int) -> None:
        """Raise `StateLost` if slots moved to other masters since the last read (a failover).

        The replica promoted may lack its old master's last writes, and the markers, in the
        namespace's slot, on another master, do not show it: the whole changelog is applied.
        """
        if self.topology is None or topology == self.topology:
            self.topology = topology
            return
        self.topology = topology
        self.total_loss = True
        reason = ("Redis Cluster slots moved to other masters (a failover): a promoted replica "
                  "may lack its last writes")  # fmt: skip
        logger.error("%s; the whole state changelog is applied before anything is decided", reason)
        raise StateLost(reason)

    async def advance(self, markers: list[Change]) -> bool:
        """Write the markers unless Redis lost state since this worker read or wrote them.

        The epoch is checked as a marker too, its floor the version this worker knows: a lower
        one was written after a loss (`new_epoch`), by whichever worker caught Redis up.
        """
        floors = [(c.key, self.known.get(self.keys.marker_partition(c.key) or 0, 0), c.version)
                  for c in markers]  # fmt: skip
        epoch = self.keys.changelog_epoch()
        if not await self.store.advance(epoch, [(epoch, self.epoch, self.epoch), *floors]):
            return False  # the next read finds what was lost
        self.confirmed(markers)
        return True

    def delivered(self, offsets: Iterable[tuple[int, int]]) -> list[Change]:
        """The markers to write for changelog records the broker has: (partition, offset)."""
        highest: dict[int, int] = {}
        for partition, offset in offsets:
            highest[partition] = max(offset + 1, highest.get(partition, 0))
        return [Change(self.keys.changelog_marker(p), v, b"") for p, v in highest.items()]

    def confirmed(self, written: Iterable[Change]) -> None:
        """Redis has these markers now: a later read below them is a loss."""
        for change in written:
            partition = self.keys.marker_partition(change.key)
            assert partition is not None, change.key  # made by `delivered`
            self.known[partition] = max(change.version, self.known.get(partition, 0))

    async def start(self) -> None:
        """Before the first batch: catch Redis up with the changelog (or refuse until it is)."""
        ends = await changelog_ends(self.bootstrap, self.topic)
        self.partitions = sorted(ends)
        applied = await markers(self.store, self.keys, self.partitions)
        behind = {p: (applied[p], end) for p, end in ends.items() if applied[p] < end}
        if behind:
            logger.warning("Redis namespace %s is behind the state changelog %s (%s)",
                           self.keys.namespace, self.topic, _describe(behind))  # fmt: skip
            await self.recover()
        else:
            self.known = applied
            await self._open_epoch()

    async def _open_epoch(self) -> None:
        """Write the epoch record (if absent): Redis holds the namespace's state from now on."""
        epoch = self.keys.changelog_epoch()
        await self.store.apply([Change(epoch, new_epoch(), b"")])
        self.epoch = (await self.store.read([epoch]))[0].version  # another worker's, if first

    async def recover(self, since: int | None = None) -> None:
        """Apply the changelog's tail (auto-restore), or wait until someone has; then go on.

        The agent and the deliveries in flight may find one loss together: a caller that
        waited while another caught up (`restores` moved past `since`, by default its value
        at the call) returns at once.
        """
        seen = self.restores if since is None else since
        async with self._recovering:
            if self.restores == seen:
                await self._recover()

    async def _recover(self) -> None:
        while True:
            if self.auto_restore:
                caught = await catch_up(self.store, self.keys, self.bootstrap, self.topic,
                                        from_beginning=self.total_loss)  # fmt: skip
                self.total_loss = False
                await self._open_epoch()
                self.restores += 1
                logger.warning("caught Redis up with the state changelog: %d records of %d "
                               "partitions applied in %.1fs, %d keys changed", caught.read,
                               caught.partitions, caught.seconds, caught.changed)  # fmt: skip
                self.known = await markers(self.store, self.keys, self.partitions)
                self.refusing = None
                return
            ends = await changelog_ends(self.bootstrap, self.topic)
            applied = await markers(self.store, self.keys, self.partitions)
            behind = {p: (applied[p], end) for p, end in ends.items() if applied[p] < end}
            if not behind:  # restored meanwhile (`idp restore`)
                self.known = applied
                self.total_loss = False
                await self._open_epoch()
                self.restores += 1
                self.refusing = None
                logger.warning("Redis caught up with the state changelog: processing resumes")
                return
            reason = (f"Redis namespace {self.keys.namespace} is behind the state changelog "
                      f"{self.topic} ({_describe(behind)}) and IDP_AUTO_RESTORE is off: run "
                      f"idp restore")  # fmt: skip
            if reason != self.refusing:
                logger.error("not processing: %s", reason)
            self.refusing = reason
            await asyncio.sleep(REFUSED_RETRY_S)


def _describe(behind: dict[int, tuple[int, int]]) -> str:
    shown = sorted(behind.items())[:4]
    text = ", ".join(f"partition {p} at {at} of {end}" for p, (at, end) in shown)
    return text + (f" and {len(behind) - 4} more" if len(behind) > 4 else "")


class GuardedStore:
    """A store whose every read also reads the changelog's markers, after the state.

    It raises `StateLost` when one went back, before any decision is made on what it read.
    """

    def __init__(self, inner: Store, guard: StateGuard) -> None:
        self.inner = inner
        self.guard = guard

    async def read(self, keys: Sequence[str], *, discard: Sequence[str] = ()) -> list[Record]:
        """The records of `keys`, read in the same round trip as the markers, before them."""
        markers = self.guard.marker_keys()
        if not markers:
            return await self.inner.read(keys, discard=discard)
        floor = dict(self.guard.known)
        records = await self.inner.read([*keys, *markers], discard=discard)
        self.guard.moved(self.inner.topology)
        self.guard.check((record.version for record in records[len(keys) :]), floor)
        return records[: len(keys)]

    @property
    def topology(self) -> int:
        """See `Store.topology`."""
        return self.inner.topology

    async def commit(self, commits: Sequence[Commit]) -> list[bool]:
        """See `Store.commit`."""
        return await self.inner.commit(commits)

    async def delete(self, keys: Sequence[str]) -> None:
        """See `Store.delete`."""
        await self.inner.delete(keys)

    async def scan(self, pattern: str) -> list[str]:
        """See `Store.scan`."""
        return await self.inner.scan(pattern)

    async def indexed(self, indexes: Sequence[str], *, until: float) -> list[str]:
        """See `Store.indexed`."""
        return await self.inner.indexed(indexes, until=until)

    async def mark(self, key: str, ttl_s: int, *, only_new: bool) -> bool:
        """See `Store.mark`."""
        return await self.inner.mark(key, ttl_s, only_new=only_new)

    async def advance(self, epoch: str, markers: Sequence[tuple[str, int, int]]) -> bool:
        """See `Store.advance`."""
        return await self.inner.advance(epoch, markers)

    async def apply(self, changes: Sequence[Change]) -> int:
        """See `Store.apply`."""
        return await self.inner.apply(changes)

    async def close(self) -> None:
        """See `Store.close`."""
        await self.inner.close()
