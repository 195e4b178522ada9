"""The storage interface: versioned records read in bulk and written by compare-and-set.

A transition reads some records, decides, and commits: the commit applies only if every record
it read still has the version it had when read. That makes each event's read-decide-write
atomic without holding a lock across the decision, so workers on different partitions can
never interleave two changes to the same contact; the loser re-reads and decides again.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol


# Not frozen: one is built per record read, and a frozen dataclass takes four times as long
# to build. Never mutated all the same.
@dataclass(slots=True)
class Record:
    """A stored value and its version; version 0 and data None mean "absent"."""

    version: int = 0
    data: bytes | None = None


ABSENT = Record()


@dataclass(slots=True)
class Commit:
    """One atomic change: `checks` are the versions read; `writes` replace data (version + 1).

    `expiring` names written keys that expire after the store's dedup horizon (processed
    event markers); other records live until deleted.
    """

    checks: dict[str, int] = field(default_factory=dict)
    writes: dict[str, bytes] = field(default_factory=dict)
    expiring: set[str] = field(default_factory=set)


class Store(Protocol):
    """Versioned records; every key of one commit belongs to one workspace."""

    async def read(self, keys: Sequence[str], *, discard: Sequence[str] = ()) -> list[Record]:
        """The current record of each key, in one round trip; `discard` is deleted meanwhile.

        `discard` must not overlap `keys` (delivered outbox records ride along with a read).
        """
        ...

    async def commit(self, commits: Sequence[Commit]) -> list[bool]:
        """Apply each commit atomically if its checks hold; one round trip for all."""
        ...

    async def delete(self, keys: Sequence[str]) -> None:
        """Remove records (delivered outbox entries)."""
        ...

    async def scan(self, pattern: str) -> list[str]:
        """Keys matching a glob pattern (to find outbox entries left by a crash)."""
        ...

    async def close(self) -> None:
        """Release connections."""
        ...


KeyKind = Literal["dev", "user", "email", "contact", "evt", "outbox"]


@dataclass(frozen=True, slots=True)
class Keys:
    """Key layout: `<namespace>:{<workspace_id>}:<kind>:<id>`.

    The workspace sits in a Redis Cluster hash tag, so all keys of a workspace share one slot
    and a commit (which never crosses workspaces, R13) runs as one script on a cluster too.
    """

    namespace: str

    def of(self, workspace_id: str, kind: KeyKind, ident: str) -> str:
        """The key of one record."""
        return f"{self.namespace}:{{{workspace_id}}}:{kind}:{ident}"

    def pattern(self, kind: KeyKind) -> str:
        """A glob matching every record of a kind, in every workspace."""
        return f"{self.namespace}:{{*}}:{kind}:*"
