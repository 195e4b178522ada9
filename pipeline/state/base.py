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


@dataclass(frozen=True, slots=True)
class Change:
    """A record as the state changelog carries it: `data` None is a deletion (a tombstone).

    `key` is the full Redis key; `expires_at_ms` (0: never) is when an expiring record goes.
    """

    key: str
    version: int
    data: bytes | None
    expires_at_ms: int = 0


@dataclass(slots=True)
class Commit:
    """One atomic change: `checks` are the versions read; `writes` replace data (version + 1).

    A written key without a check is expected to be absent (version 0): what a commit writes
    it has read, or knows to be new.

    `expiring` names written keys that expire after the store's dedup horizon (processed
    event markers); other records live until deleted. `deleting` names written keys that are
    deleted instead (an erasure's records, R16: their keys name the subject); a deleted key
    reads as absent, version 0.
    """

    checks: dict[str, int] = field(default_factory=dict)
    writes: dict[str, bytes] = field(default_factory=dict)
    expiring: set[str] = field(default_factory=set)
    deleting: set[str] = field(default_factory=set)


class Store(Protocol):
    """Versioned records; every key of one commit belongs to one workspace."""

    @property
    def topology(self) -> int:
        """How often slots moved to other masters so far (a Redis Cluster's failovers); 0 else.

        A promoted replica may lack its old master's last writes, which no marker in another
        slot shows: the worker applies the whole changelog when this moves (`GuardedStore`).
        """
        ...

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
        """Keys matching a glob pattern (walks the whole keyspace: a rare fallback)."""
        ...

    async def indexed(self, indexes: Sequence[str], *, until: float) -> list[str]:
        """The outbox records these outbox indexes list as committed at `until` or before.

        `until` is in epoch seconds; one round trip. A commit that writes an outbox record
        (`Keys.outbox`) lists it in its workspace's index (`Keys.outbox_index`), scored by the
        time of the commit, atomically with the record; `delete` and `read(discard=...)`
        remove it from the index with the record.
        """
        ...

    async def mark(self, key: str, ttl_s: int, *, only_new: bool) -> bool:
        """Write a flag `key` that expires after `ttl_s`; with `only_new`, only if absent.

        Whether it was written: with `only_new`, one caller among many wins until it expires.
        """
        ...

    async def advance(self, epoch: str, markers: Sequence[tuple[str, int, int]]) -> bool:
        """Move markers (key, floor, version) unless the epoch is gone or one is below its floor.

        False, and nothing written, then (see `pipeline/state/advance.lua`).
        """
        ...

    async def apply(self, changes: Sequence[Change]) -> int:
        """Apply changelog records in one round trip; return how many keys changed.

        Each is written unless its key holds that version or a newer one; a tombstone deletes.
        Idempotent: a changelog can be applied again from any offset.
        """
        ...

    async def close(self) -> None:
        """Release connections."""
        ...


KeyKind = Literal["dev", "user", "email", "contact", "evt", "jti", "erased", "chunk"]

# The characters that give a key its structure, escaped reversibly wherever a value from input
# (a workspace, device, user or e-mail id) becomes part of a key: `%` first, so `%3A` in an
# identifier stays `%253A` and can never be read back as `:`.
_ESCAPES = str.maketrans({"%": "%25", ":": "%3A", "{": "%7B", "}": "%7D"})
_UNESCAPES = (("%3A", ":"), ("%7B", "{"), ("%7D", "}"), ("%25", "%"))
_STRUCTURAL = frozenset(":{}")
_GLOB_SPECIAL = str.maketrans({c: "\\" + c for c in "*?[]\\"})


def escape(value: str) -> str:
    """`value` with no `%`, `:`, `{` or `}` left: it cannot change the structure of a key."""
    if "%" in value or ":" in value or "{" in value or "}" in value:
        return value.translate(_ESCAPES)
    return value


def unescape(value: str) -> str:
    """The inverse of `escape`."""
    if "%" not in value:
        return value
    for escaped, plain in _UNESCAPES:  # `%25` last: `%253A` is `%3A`, not `:`
        value = value.replace(escaped, plain)
    return value


def outbox_index_of(key: str) -> str | None:
    """The outbox index of an outbox record's key (`Keys.outbox`); None for any other key.

    Read from the key's structure alone, as the stores see keys without their namespace: a
    namespace holds no `:` once escaped, so `<ns>:outbox:{<ws>}:<id>` lists in
    `<ns>:outbox:{<ws>}`, and no record's key (`<ns>:{<ws>}:...`) or marker has that shape.
    """
    head = key.find(":outbox:{")
    if head < 0 or ":" in key[:head]:
        return None
    close = key.find("}:", head + 9)
    if close < 0 or ":" in key[close + 2 :] or _STRUCTURAL & set(key[head + 9 : close]):
        return None
    return key[: close + 1]


@dataclass(frozen=True, slots=True)
class KeyParts:
    """What a key of the namespace names; `ident` as the record's identifier (unescaped)."""

    workspace_id: str
    kind: str
    ident: str


@dataclass(frozen=True, slots=True)
class Keys:
    """Key layout: `<namespace>:{<workspace_id>}:<kind>:<id>`; `<namespace>:outbox:{<ws>}:<id>`.

    A workspace's outbox records are listed in its outbox index, `<namespace>:outbox:{<ws>}`.

    Every part that comes from input is escaped (`escape`), so the first `}` closes the
    workspace tag and the first `:` after it ends the kind, whatever an identifier holds; the
    outbox lives under a prefix of its own that no record's key can start with. The workspace
    sits in a Redis Cluster hash tag, so all keys of a workspace (its outbox included) share one
    slot and a commit (which never crosses workspaces, R13) runs as one script on a cluster too.
    """

    namespace: str

    @property
    def _ns(self) -> str:
        return escape(self.namespace)

    def of(self, workspace_id: str, kind: KeyKind, ident: str) -> str:
        """The key of one record."""
        return f"{self._ns}:{{{escape(workspace_id)}}}:{kind}:{escape(ident)}"

    def outbox(self, workspace_id: str, ident: str) -> str:
        """The key of one outbox record (undelivered outputs of a committed batch)."""
        return f"{self._ns}:outbox:{{{escape(workspace_id)}}}:{escape(ident)}"

    def prefix(self) -> str:
        """What every key of the namespace starts with (the changelog's keys leave it out)."""
        return self._ns + ":"

    def outbox_prefix(self) -> str:
        """What every outbox record's key (and every outbox index's) starts with."""
        return f"{self._ns}:outbox:"

    def outbox_index(self, workspace_id: str) -> str:
        """The sorted set listing a workspace's outbox records (`outbox_index_of`).

        `<ns>:outbox:{<ws>}`: in the workspace's slot, under the outbox prefix (so never a
        record, never on the changelog) and not matched by `outbox_pattern`.
        """
        return f"{self._ns}:outbox:{{{escape(workspace_id)}}}"

    def outbox_scan_marker(self) -> str:
        """The flag saying the namespace's outbox was looked for by SCAN lately (`Outbox`).

        `outbox-scan{<ns>}` has no `:`, so it is no key of any namespace: never a record, never
        on the changelog, never counted by `idp restore --from-empty`; it expires by itself.
        """
        return f"outbox-scan{{{self._ns}}}"

    def state_format(self) -> str:
        """The record naming the format of the namespace's state (`pipeline.state.format`).

        `state-format{<ns>}` has no `:`, like the outbox's scan flag: never a record, never on
        the changelog, not counted by `idp restore --from-empty`.
        """
        return f"state-format{{{self._ns}}}"

    def changelog_epoch(self) -> str:
        """The record that exists while Redis holds the namespace's state (`StateGuard`)."""
        return f"{self._ns}:changelog:{{{self._ns}}}:epoch"

    def changelog_marker(self, partition: int) -> str:
        """The marker of changelog `partition`: its version is the next offset to apply.

        Every record below it is in Redis (`pipeline.state.changelog`). No record's key has
        this shape.
        """
        return f"{self._ns}:changelog:{{{self._ns}}}:{partition}"

    def marker_partition(self, key: str) -> int | None:
        """The changelog partition of a marker's key (`changelog_marker`); None for another."""
        head = f"{self._ns}:changelog:{{{self._ns}}}:"
        tail = key[len(head) :] if key.startswith(head) else ""
        return int(tail) if tail.isdigit() else None

    def is_changelog(self, key: str) -> bool:
        """Whether `key` is the changelog's epoch or one of its markers (not a record's)."""
        return key.startswith(f"{self._ns}:changelog:")

    def parse(self, key: str) -> KeyParts | None:
        """What a record's or an outbox record's key names; None for a key of another shape."""
        ns = self._ns + ":"
        if not key.startswith(ns):
            return None
        rest = key[len(ns) :]
        kind = None
        if rest.startswith("outbox:"):
            kind, rest = "outbox", rest[len("outbox:") :]
            tag = rest[1:-1]
            if rest.startswith("{") and rest.endswith("}") and tag and not _STRUCTURAL & set(tag):
                return KeyParts(unescape(tag), "outbox_index", "")
        if not rest.startswith("{") or "}:" not in rest:
            return None
        tag, _, tail = rest[1:].partition("}:")
        if kind is None:
            kind, colon, tail = tail.partition(":")
            if not colon:
                return None
        if not tag or ":" in tag or "{" in tag or "}" in tail or "{" in tail or ":" in tail:
            return None
        return KeyParts(unescape(tag), kind, unescape(tail))

    def pattern(self, kind: KeyKind) -> str:
        """A glob matching every record of a kind, in every workspace."""
        return f"{self._ns.translate(_GLOB_SPECIAL)}:{{*}}:{kind}:*"

    def outbox_pattern(self) -> str:
        """A glob matching every outbox record of the namespace (and nothing else)."""
        return f"{self._ns.translate(_GLOB_SPECIAL)}:outbox:{{*}}:*"

    def everything(self) -> str:
        """A glob matching every key of the namespace."""
        return f"{self._ns.translate(_GLOB_SPECIAL)}:*"
