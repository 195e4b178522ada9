"""An in-memory Store for pure unit tests; behaviour that depends on Redis is tested on Redis."""

from __future__ import annotations

import fnmatch
from collections.abc import Sequence

from pipeline.state.base import ABSENT, Change, Commit, Record


class MemoryStore:
    """Dict-backed records with the same compare-and-set semantics as the Redis store."""

    def __init__(self) -> None:
        self.records: dict[str, Record] = {}

    async def read(self, keys: Sequence[str], *, discard: Sequence[str] = ()) -> list[Record]:
        """The current record of each key; `discard` is deleted."""
        for key in discard:
            self.records.pop(key, None)
        return [self.records.get(key, ABSENT) for key in keys]

    async def commit(self, commits: Sequence[Commit]) -> list[bool]:
        """Apply each commit whose checks hold."""
        results = []
        for commit in commits:
            ok = all(self.records.get(k, ABSENT).version == v for k, v in commit.checks.items())
            if ok:
                for key, data in commit.writes.items():
                    if key in commit.deleting:
                        self.records.pop(key, None)
                        continue
                    version = self.records.get(key, ABSENT).version
                    self.records[key] = Record(version + 1, data)
            results.append(ok)
        return results

    async def delete(self, keys: Sequence[str]) -> None:
        """Remove records."""
        for key in keys:
            self.records.pop(key, None)

    async def scan(self, pattern: str) -> list[str]:
        """Keys matching a glob pattern."""
        return sorted(key for key in self.records if fnmatch.fnmatchcase(key, pattern))

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
