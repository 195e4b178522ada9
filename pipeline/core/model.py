"""State records and transition results of the identity core, as plain data."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import orjson

from schemas import Merged, Profile, Rejected, Shutdown

OutputMessage = Merged | Shutdown | Profile | Rejected


@dataclass(frozen=True, slots=True)
class DeviceState:
    """What the pipeline knows of one device (anonymous_id) in a workspace.

    `first_seen` maps a visitor generation to the event time (epoch ms) of the earliest event
    seen from the device in that generation; generation 0 is the device's first visitor.
    """

    first_seen: dict[int, int] = field(default_factory=dict)

    def to_bytes(self) -> bytes:
        """Serialise for the store."""
        return orjson.dumps({"first_seen": {str(k): v for k, v in self.first_seen.items()}})

    @classmethod
    def from_bytes(cls, data: bytes) -> DeviceState:
        """Inverse of `to_bytes`."""
        raw = orjson.loads(data)
        return cls(first_seen={int(k): v for k, v in raw["first_seen"].items()})


def profile_to_bytes(profile: Profile) -> bytes:
    """Serialise a profile as its wire JSON (the same bytes the profiles topic carries)."""
    return orjson.dumps(profile.model_dump(mode="json"))


def profile_from_bytes(data: bytes) -> Profile:
    """Inverse of `profile_to_bytes`."""
    return Profile.model_validate_json(data)


@dataclass(frozen=True, slots=True)
class View:
    """The part of one workspace's state an event touches; None means "known absent"."""

    workspace_id: str
    devices: dict[str, DeviceState | None] = field(default_factory=dict)
    contacts: dict[str, Profile | None] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class NeedMore:
    """The transition cannot decide without these records: load them and call again."""

    devices: tuple[str, ...] = ()
    contacts: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Emit:
    """An output message for a topic of SPEC §3 (logical name, without prefix)."""

    topic: str
    key: str
    value: OutputMessage


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
    """What one event does: records to write, messages to emit, and the outcome."""

    outcome: Outcome
    devices: dict[str, DeviceState] = field(default_factory=dict)
    contacts: dict[str, Profile] = field(default_factory=dict)
    emits: tuple[Emit, ...] = ()
