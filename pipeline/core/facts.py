"""The stored facts of a workspace: what happened, never what was concluded from it.

Profiles are a pure function of these facts (see `timeline` and `profiles`), so the order in
which facts arrive cannot change the final profiles (R11), and adding a fact twice changes
nothing (R12). Every record is a set-like value: adding a fact is commutative and idempotent.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import orjson

SessionKind = Literal["login", "signup", "logout"]


@dataclass(frozen=True, slots=True, order=True)
class SessionFact:
    """A verified login/signup, or a logout, on one device at event time `at` (epoch ms)."""

    at: int
    event_id: str
    kind: SessionKind
    user_id: str


@dataclass(frozen=True, slots=True, order=True)
class ChatFact:
    """A conversation started on a device."""

    at: int
    event_id: str
    conversation_id: str
    email: str | None = None
    name: str | None = None
    city: str | None = None


@dataclass(frozen=True, slots=True, order=True)
class EmailClaim:
    """An e-mail a user's login or signup carried; `verified` when signed in the token (R9)."""

    at: int
    event_id: str
    email: str
    verified: bool


@dataclass(frozen=True, slots=True)
class Device:
    """One anonymous_id: its session facts, chats and the time of its earliest activity."""

    sessions: tuple[SessionFact, ...] = ()
    chats: tuple[ChatFact, ...] = ()
    first_activity: int | None = None

    def with_session(self, fact: SessionFact) -> Device:
        """Add a session fact (kept sorted by time, then event_id)."""
        if fact in self.sessions:
            return self
        return Device(tuple(sorted((*self.sessions, fact))), self.chats, self.first_activity)

    def with_chat(self, fact: ChatFact) -> Device:
        """Add a chat; a chat is activity too."""
        chats = self.chats if fact in self.chats else tuple(sorted((*self.chats, fact)))
        return Device(self.sessions, chats, self.first_activity).with_activity(fact.at)

    def with_activity(self, at: int) -> Device:
        """Record activity (a page view or a chat) at `at`."""
        if self.first_activity is not None and self.first_activity <= at:
            return self
        return Device(self.sessions, self.chats, at)

    def to_bytes(self) -> bytes:
        """Serialise for the store."""
        return orjson.dumps(
            {
                "s": [[f.at, f.event_id, f.kind, f.user_id] for f in self.sessions],
                "c": [
                    [f.at, f.event_id, f.conversation_id, f.email, f.name, f.city]
                    for f in self.chats
                ],
                "a": self.first_activity,
            }
        )

    @classmethod
    def from_bytes(cls, data: bytes) -> Device:
        """Inverse of `to_bytes`."""
        raw = orjson.loads(data)
        return cls(
            sessions=tuple(SessionFact(*row) for row in raw["s"]),
            chats=tuple(ChatFact(*row) for row in raw["c"]),
            first_activity=raw["a"],
        )

    @staticmethod
    def first_activity_of(data: bytes) -> int | None:
        """A stored device's `first_activity`, without building the whole device."""
        return orjson.loads(data)["a"]


@dataclass(frozen=True, slots=True)
class User:
    """One user_id: the devices it was linked on, its e-mail claims and its latest name."""

    devices: tuple[str, ...] = ()
    emails: tuple[EmailClaim, ...] = ()
    name: tuple[int, str, str] | None = None  # (at, event_id, name): the latest wins

    def with_device(self, anonymous_id: str) -> User:
        """Remember a device the user linked on."""
        if anonymous_id in self.devices:
            return self
        return User(tuple(sorted((*self.devices, anonymous_id))), self.emails, self.name)

    def with_email(self, claim: EmailClaim) -> User:
        """Add an e-mail claim."""
        if claim in self.emails:
            return self
        return User(self.devices, tuple(sorted((*self.emails, claim))), self.name)

    def with_name(self, at: int, event_id: str, name: str) -> User:
        """Keep the name of the latest event."""
        candidate = (at, event_id, name)
        if self.name is not None and self.name >= candidate:
            return self
        return User(self.devices, self.emails, candidate)

    def to_bytes(self) -> bytes:
        """Serialise for the store."""
        return orjson.dumps(
            {
                "d": list(self.devices),
                "e": [[c.at, c.event_id, c.email, c.verified] for c in self.emails],
                "n": list(self.name) if self.name else None,
            }
        )

    @classmethod
    def from_bytes(cls, data: bytes) -> User:
        """Inverse of `to_bytes`."""
        raw = orjson.loads(data)
        return cls(
            devices=tuple(raw["d"]),
            emails=tuple(EmailClaim(*row) for row in raw["e"]),
            name=tuple(raw["n"]) if raw["n"] else None,  # type: ignore[arg-type]
        )


@dataclass(frozen=True, slots=True)
class EmailEntry:
    """Who uses one normalised e-mail.

    Users who verified it (with their first verification), users who claimed it unverified,
    and devices whose chats carried it.
    """

    verified: dict[str, tuple[int, str]] = field(default_factory=dict)
    unverified: tuple[str, ...] = ()
    lead_devices: tuple[str, ...] = ()

    def with_claim(self, user_id: str, claim: EmailClaim) -> EmailEntry:
        """Add a user's claim; a verification keeps the earliest (at, event_id)."""
        if claim.verified:
            first = (claim.at, claim.event_id)
            current = self.verified.get(user_id)
            if current is not None and current <= first:
                return self
            return EmailEntry({**self.verified, user_id: first}, self.unverified, self.lead_devices)
        if user_id in self.unverified:
            return self
        return EmailEntry(self.verified, tuple(sorted((*self.unverified, user_id))),
                          self.lead_devices)  # fmt: skip

    def with_lead_device(self, anonymous_id: str) -> EmailEntry:
        """Remember a device whose chat carried this e-mail."""
        if anonymous_id in self.lead_devices:
            return self
        return EmailEntry(self.verified, self.unverified,
                          tuple(sorted((*self.lead_devices, anonymous_id))))  # fmt: skip

    def to_bytes(self) -> bytes:
        """Serialise for the store."""
        return orjson.dumps(
            {
                "v": {user: list(first) for user, first in sorted(self.verified.items())},
                "u": list(self.unverified),
                "l": list(self.lead_devices),
            }
        )

    @classmethod
    def from_bytes(cls, data: bytes) -> EmailEntry:
        """Inverse of `to_bytes`."""
        raw = orjson.loads(data)
        return cls(
            verified={user: (first[0], first[1]) for user, first in raw["v"].items()},
            unverified=tuple(raw["u"]),
            lead_devices=tuple(raw["l"]),
        )
