"""An in-memory Store for pure unit tests; behaviour that depends on Redis is tested on Redis."""

from __future__ import annotations

import fnmatch
import time
from collections.abc import Sequence

from pipeline.state.base import ABSENT, Change, Commit, Record, outbox_index_of


class MemoryStore:
    """Dict-backed records with the same compare-and-set semantics as the Redis store.

    `records` holds the records; outbox indexes (index -> {outbox record: score}) and flags
    (key -> when it expires) are kept apart, as Redis keeps them in keys of other types.
    """

    topology = 0  # see `Store.topology`

    def __init__(self) -> None:
        self.records: dict[str, Record] = {}
        self.indexes: dict[str, dict[str, float]] = {}
        self.flags: dict[str, float] = {}

    async def read(self, keys: Sequence[str], *, discard: Sequence[str] = ()) -> list[Record]:
        """The current record of each key; `discard` is deleted."""
        await self.delete(discard)
        return [self.records.get(key, ABSENT) for key in keys]

    async def commit(self, commits: Sequence[Commit]) -> list[bool]:
        """Apply each commit whose checks hold."""
        results = []
        now = time.time()
        for commit in commits:
            # As the Redis script: a record written unchecked must be absent.
            keys = commit.checks.keys() | commit.writes.keys()
            expected = {k: commit.checks.get(k, 0) for k in keys}
            ok = all(self.records.get(k, ABSENT).version == v for k, v in expected.items())
            if ok:
                for key, data in commit.writes.items():
                    if key in commit.deleting:
                        self.records.pop(key, None)
                        self._unlist(key)
                        continue
                    version = self.records.get(key, ABSENT).version
                    self.records[key] = Record(version + 1, data)
                    index = outbox_index_of(key)
                    if index is not None:
                        self.indexes.setdefault(index, {})[key] = now
            results.append(ok)
        return results

    async def delete(self, keys: Sequence[str]) -> None:
        """Remove records, and outbox records from their indexes."""
        for key in keys:
            self.records.pop(key, None)
            self.flags.pop(key, None)
            self.indexes.pop(key, None)
            self._unlist(key)

    def _unlist(self, key: str) -> None:
        index = outbox_index_of(key)
        if index is not None and index in self.indexes:
            self.indexes[index].pop(key, None)
            if not self.indexes[index]:
                del self.indexes[index]  # as Redis drops an empty sorted set

    async def scan(self, pattern: str) -> list[str]:
        """Keys matching a glob pattern."""
        self._expire()
        held = [*self.records, *self.indexes, *self.flags]
        return sorted(key for key in held if fnmatch.fnmatchcase(key, pattern))

    async def indexed(self, indexes: Sequence[str], *, until: float) -> list[str]:
        """See `Store.indexed`."""
        return sorted(
            key
            for index in indexes
            for key, score in self.indexes.get(index, {}).items()
            if score <= until
        )

    async def mark(self, key: str, ttl_s: int, *, only_new: bool) -> bool:
        """See `Store.mark`."""
        self._expire()
        if only_new and key in self.flags:
            return False
        self.flags[key] = time.time() + ttl_s
        return True

    def _expire(self) -> None:
        now = time.time()
        for key in [k for k, at in self.flags.items() if at <= now]:
            del self.flags[key]

    async def advance(self, epoch: str, markers: Sequence[tuple[str, int, int]]) -> bool:
        """Move markers unless the epoch is gone or one is below its floor."""
        current = {key: self.records.get(key, ABSENT).version for key, _, _ in markers}
        if epoch not in self.records or any(current[k] < floor for k, floor, _ in markers):
            return False
        for key, _, version in markers:
            if current[key] < version:
                self.records[key] = Record(version, b"")
        return True

    async def apply(self, changes: Sequence[Change]) -> int:
        """Write each change unless its key holds that version or a newer one (expiry ignored)."""
        changed = 0
        for change in changes:
            if change.data is None:
                changed += self.records.pop(change.key, None) is not None
            elif self.records.get(change.key, ABSENT).version < change.version:
                self.records[change.key] = Record(change.version, change.data)
                changed += 1
        return changed

    async def close(self) -> None:
        """Nothing to release."""
