"""State records and transition results of the identity core, as plain data."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

import orjson

from pipeline.core.facts import Chunk, Device, EmailEntry, ErasureMarker, TokenUses, User
from schemas import Erased, Merged, Profile, Rejected, Shutdown

OutputMessage = Merged | Shutdown | Profile | Rejected | Erased


def profile_to_bytes(profile: Profile) -> bytes:
    """Serialise a profile as its wire JSON (the same bytes the profiles topic carries)."""
    return orjson.dumps(profile.model_dump(mode="json"))


def profile_from_bytes(data: bytes) -> Profile:
    """Inverse of `profile_to_bytes`."""
    return Profile.model_validate_json(data)


@dataclass(frozen=True, slots=True)
class View:
    """The part of one workspace's state an event touches; None means "known absent".

    `contacts` holds the profiles last published, to emit only what changed. `chunks` holds
    chunk records: folded devices' (`facts.chunk_ident`) and users' retired devices'
    (`facts.retired_idents`, `facts.summary_idents`), loaded only when asked for.
    """

    workspace_id: str
    devices: dict[str, Device | None] = field(default_factory=dict)
    users: dict[str, User | None] = field(default_factory=dict)
    emails: dict[str, EmailEntry | None] = field(default_factory=dict)
    contacts: dict[str, Profile | None] = field(default_factory=dict)
    tokens: dict[str, TokenUses | None] = field(default_factory=dict)
    erasures: dict[str, ErasureMarker | None] = field(default_factory=dict)
    chunks: dict[str, Chunk | None] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class NeedMore:
    """The transition cannot decide without these records: load them and call again."""

    devices: tuple[str, ...] = ()
    contacts: tuple[str, ...] = ()
    users: tuple[str, ...] = ()
    emails: tuple[str, ...] = ()
    tokens: tuple[str, ...] = ()
    erasures: tuple[str, ...] = ()
    chunks: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Emit:
    """An output message for a topic of SPEC §3 (logical name, without prefix).

    A None value is a tombstone on the compacted profiles topic: a contact that a late event
    showed never existed (its history belongs to another contact).
    """

    topic: str
    key: str | bytes | None  # None: a rejection of a record that had no key
    value: OutputMessage | None


@dataclass(frozen=True, slots=True)
class Applied:
    """The event changed state."""

    kind: Literal["applied"] = "applied"


@dataclass(frozen=True, slots=True)
class Unchanged:
    """The event was valid but changed nothing (a known device browsing, or a replay)."""

    kind: Literal["unchanged"] = "unchanged"


@dataclass(frozen=True, slots=True)
class Refusal:
    """The event cannot be applied; it goes to `identity.rejected` with this reason."""

    reason: str
    detail: str
    kind: Literal["refused"] = "refused"


Outcome = Applied | Unchanged | Refusal


@dataclass(frozen=True, slots=True)
class Transition:
    """What one event does: records to write, messages to emit, and the outcome.

    A refused event may still record its fact (a logout for a user not logged in then is
    kept, so that a late login gives it the effect it would have had in order). A None device,
    user, e-mail or token record is deleted (an erasure, R16); a None contact is a tombstone.
    """

    outcome: Outcome
    devices: Mapping[str, Device | None] = field(default_factory=dict)
    users: dict[str, User | None] = field(default_factory=dict)
    emails: dict[str, EmailEntry | None] = field(default_factory=dict)
    contacts: dict[str, Profile | None] = field(default_factory=dict)
    tokens: dict[str, TokenUses | None] = field(default_factory=dict)
    erasures: dict[str, ErasureMarker] = field(default_factory=dict)
    chunks: dict[str, Chunk | None] = field(default_factory=dict)
    emits: tuple[Emit, ...] = ()
    # The records the decision depended on, as (table, key): the same view entries give the
    # same transition, which lets a caller reuse a decision made ahead of time.
    reads: frozenset[tuple[str, str]] = frozenset()

    @property
    def writes(self) -> bool:
        """Whether the transition changes any record."""
        return bool(
            self.devices or self.users or self.emails or self.contacts or self.tokens
            or self.erasures or self.chunks
        )  # fmt: skip
