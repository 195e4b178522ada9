"""The state changelog: every record the worker writes to Redis, also on a compacted topic.

Kafka is the system of record (SPEC §3, "Internal state and its durability"). A committed
batch's records go to `<prefix>state.changelog` with the batch's outputs, and the offsets of the
inputs that caused them are committed only once the broker has both. Each changelog record is
keyed by its Redis key without the namespace (`{ws}:dev:a1`), so compaction keeps the latest
of each; its value is a header (format, the record's version, when it expires) and the data; a
deleted record (an erasure's, R16) is a tombstone. Outbox records are not state and are not
logged. `Keys.changelog_marker` records, per changelog partition, the highest offset known to
be in Redis; a worker whose markers are missing or behind applies the tail of the changelog
before it decides anything (`pipeline.ops.restore`).
"""

from __future__ import annotations

import struct
from collections.abc import Iterator

from pipeline.state.base import Change, Commit, Keys

FORMAT = 1  # the first byte of every changelog value; another one is refused, never guessed
_HEADER = struct.Struct(">BQQ")  # format, version, expires_at_ms (0: never)


class UnknownFormat(ValueError):
    """A changelog value written in a format this release cannot read."""


def changes(commit: Commit, keys: Keys, *, now_ms: int, ttl_s: int) -> Iterator[Change]:
    """The changelog records of an applied commit (its outbox record left out).

    A written key takes the version the commit script gives it: the one checked, plus one.
    """
    outbox = keys.outbox_prefix()
    for key, data in commit.writes.items():
        if key.startswith(outbox):
            continue
        if key in commit.deleting:
            yield Change(key, 0, None)
            continue
        expires = now_ms + ttl_s * 1000 if key in commit.expiring else 0
        yield Change(key, commit.checks.get(key, 0) + 1, data, expires)


def encode(change: Change, namespace_prefix: str) -> tuple[bytes, bytes | None]:
    """(key, value) of the changelog record; `namespace_prefix` is `Keys.prefix()`."""
    key = change.key[len(namespace_prefix) :].encode()
    if change.data is None:
        return key, None
    return key, _HEADER.pack(FORMAT, change.version, change.expires_at_ms) + change.data


def decode(key: bytes, value: bytes | None, namespace_prefix: str) -> Change:
    """The change a changelog record holds, under the namespace of `namespace_prefix`."""
    redis_key = namespace_prefix + key.decode()
    if value is None:
        return Change(redis_key, 0, None)
    if len(value) < _HEADER.size or value[0] != FORMAT:
        found = value[0] if value else "none"
        raise UnknownFormat(f"changelog record {key!r} has format {found}; this release reads "
                            f"format {FORMAT}")  # fmt: skip
    _, version, expires = _HEADER.unpack_from(value)
    return Change(redis_key, version, value[_HEADER.size :], expires)
