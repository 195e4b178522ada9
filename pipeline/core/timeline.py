"""A device's history cut into sessions by its facts: who the device was, and when.

Time is compared on a doubled millisecond scale: an event at `at` has key `2*at`. A login or
logout at `t` takes effect from `t` on (boundary key `2*t`: an event stamped exactly then is
after it, R6/R10). An e-mail match (R7) takes effect just after `t` (key `2*t + 1`), so the
chat that carried the e-mail stays with the lead it describes.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Literal

from pipeline.core import ids
from pipeline.core.facts import Carry, ChatFact, Device, SessionFact

MergeReason = Literal["login", "signup", "email_match"]

# The values below are derived anew at every decision, a few dozen per event, and never
# mutated; they are not frozen because a frozen dataclass takes three times as long to build.
# `unsafe_hash` hashes them by value all the same (shutdowns are compared as sets).


@dataclass(slots=True, unsafe_hash=True)
class Merge:
    """Where a visitor's history went, and why."""

    into_contact_id: str
    user_id: str
    reason: MergeReason
    cause_event_id: str
    at: int


@dataclass(slots=True, unsafe_hash=True)
class Segment:
    """A stretch of a device's time during which it was one contact.

    Keys are half-open `[start_key, end_key)`; `end_key` None means "until now". A visitor
    segment's `session` names what started it (`ids.ORIGIN`, `ids.logout_session` or
    `ids.email_session`).
    """

    kind: Literal["visitor", "user"]
    contact_id: str
    start_key: int | None
    end_key: int | None
    session: str
    user_id: str | None = None
    chats: tuple[ChatFact, ...] = ()
    merge: Merge | None = None

    def covers(self, key: int) -> bool:
        """Whether an event with time key `key` falls in this segment."""
        return (self.start_key is None or self.start_key <= key) and (
            self.end_key is None or key < self.end_key
        )

    @property
    def start_ms(self) -> int | None:
        """Start as epoch ms (None for a device's first session)."""
        return None if self.start_key is None else self.start_key // 2


@dataclass(slots=True, unsafe_hash=True)
class DeviceShutdown:
    """A device session that ended (R8, R10)."""

    at: int
    cause_event_id: str
    reason: Literal["logout", "user_switch"]
    user_id: str | None
    contact_id: str


@dataclass(slots=True, unsafe_hash=True)
class Timeline:
    """A device's segments in time order, the shutdowns between them, and ignored logouts."""

    anonymous_id: str
    segments: tuple[Segment, ...]
    shutdowns: tuple[DeviceShutdown, ...]
    ignored_logouts: frozenset[str]
    first_activity: int | None
    # The carry's key when the device is folded: the timeline starts at the segment the device
    # was in there, and the segments before it are settled (in the chunk records).
    settled: int | None = None

    def at(self, at_ms: int) -> Segment:
        """The segment an event stamped `at_ms` belongs to."""
        key = 2 * at_ms
        return next(s for s in self.segments if s.covers(key))

    def exists(self, segment: Segment) -> bool:
        """A visitor session exists once it has activity; later sessions exist from their start.

        The device's first visitor exists only if something happened before its first login:
        a device that logs in straight away never was an anonymous visitor.
        """
        if segment.kind == "user" or segment.session != ids.ORIGIN:
            return True
        first = self.first_activity
        return first is not None and (segment.end_key is None or 2 * first < segment.end_key)

    def visitors(self) -> list[Segment]:
        """The visitor segments that exist."""
        return [s for s in self.segments if s.kind == "visitor" and self.exists(s)]

    def users(self) -> set[str]:
        """Every user_id with a session on this device."""
        return {s.user_id for s in self.segments if s.user_id is not None}


def derive(
    workspace_id: str,
    anonymous_id: str,
    device: Device,
    verified: Mapping[str, Mapping[str, tuple[int, str]]],
    refused: frozenset[str] = frozenset(),
) -> Timeline:
    """Cut the device's history into segments.

    `verified` maps each e-mail of the device's chats to the users who verified it (with their
    first verification), which decides e-mail matches (R7). `refused` names the links the
    shared-identifier guard refused (R4): they are kept as facts but link nothing.

    A folded device (`Device.carry`) is derived from its carry on: the timeline holds the
    segment the device was in at the carry and those after it, as the whole history gives them.
    """
    carry = device.carry
    chats = (*carry.chats, *device.chats) if carry is not None and carry.chats else device.chats
    current = start_segment(workspace_id, anonymous_id, carry)
    segments, shutdowns, ignored, current = fold(workspace_id, anonymous_id, current,
                                                 device.sessions, refused)  # fmt: skip
    segments.append(current)
    if chats:  # most devices never chat: spare them the work
        segments = [_attach_chats(s, chats) for s in segments]
        if verified:
            segments = _email_splits(workspace_id, anonymous_id, segments, verified)
    return Timeline(anonymous_id, tuple(segments), tuple(shutdowns), frozenset(ignored),
                    device.first_activity, None if carry is None else carry.key)  # fmt: skip


def start_segment(workspace_id: str, anonymous_id: str, carry: Carry | None) -> Segment:
    """The segment a device's record begins in: its first visitor, or the one its carry holds."""
    if carry is None:
        return Segment("visitor", ids.visitor_contact_id(workspace_id, anonymous_id, ids.ORIGIN),
                       None, None, ids.ORIGIN)  # fmt: skip
    return Segment(carry.kind, carry.contact_id, carry.start_key, None, carry.session,
                   user_id=carry.user_id)  # fmt: skip


def fold(
    workspace_id: str,
    anonymous_id: str,
    current: Segment,
    sessions: tuple[SessionFact, ...],
    refused: frozenset[str],
) -> tuple[list[Segment], list[DeviceShutdown], set[str], Segment]:
    """The session facts applied in order from `current`, the device's state before them.

    Returns the segments they ended, the shutdowns, the ignored logouts, and the segment the
    device is in after them (open, without chats).
    """
    segments: list[Segment] = []
    shutdowns: list[DeviceShutdown] = []
    ignored: set[str] = set()
    for fact in sessions:
        if fact.event_id in refused:
            continue
        key = 2 * fact.at
        linked = current.user_id
        if fact.kind == "logout":
            if linked is not None and linked != fact.user_id:
                ignored.add(fact.event_id)  # not the user logged in here: no effect
                continue
            shutdowns.append(
                DeviceShutdown(fact.at, fact.event_id, "logout", linked, current.contact_id)
            )
            segments.append(_ended(current, key, current.merge))
            session = ids.logout_session(fact.event_id)
            current = Segment("visitor", ids.visitor_contact_id(workspace_id, anonymous_id,
                              session), key, None, session)  # fmt: skip
            continue
        if linked == fact.user_id:
            continue  # a repeated login of the user already linked here
        into = ids.user_contact_id(workspace_id, fact.user_id)
        if linked is not None:
            shutdowns.append(DeviceShutdown(fact.at, fact.event_id, "user_switch", linked,
                                            current.contact_id))  # fmt: skip
            segments.append(_ended(current, key, None))
        else:
            merge = Merge(into, fact.user_id, fact.kind, fact.event_id, fact.at)
            segments.append(_ended(current, key, merge))
        current = Segment("user", into, key, None, fact.event_id, user_id=fact.user_id)
    return segments, shutdowns, ignored, current


def _ended(segment: Segment, end_key: int, merge: Merge | None) -> Segment:
    """The segment closed at `end_key` (built directly: `dataclasses.replace` is slow here)."""
    return Segment(segment.kind, segment.contact_id, segment.start_key, end_key, segment.session,
                   segment.user_id, segment.chats, merge)  # fmt: skip


def _attach_chats(segment: Segment, chats: tuple[ChatFact, ...]) -> Segment:
    own = tuple(c for c in chats if segment.covers(2 * c.at))
    return Segment(segment.kind, segment.contact_id, segment.start_key, segment.end_key,
                   segment.session, segment.user_id, own, segment.merge)  # fmt: skip


def _email_splits(
    workspace_id: str,
    anonymous_id: str,
    segments: list[Segment],
    verified: Mapping[str, Mapping[str, tuple[int, str]]],
) -> list[Segment]:
    """R7: a lead whose chat e-mail exactly one user verified is merged into that user.

    The merge takes effect when both facts exist (the later of the chat and the verification);
    the device is not linked (R2), so its later events belong to a new visitor until a login.
    """
    result: list[Segment] = []
    pending = list(segments)
    while pending:
        segment = pending.pop(0)
        match = _first_match(segment, verified) if segment.kind == "visitor" else None
        if match is None:
            result.append(segment)
            continue
        key, chat, user_id, cause = match
        into = ids.user_contact_id(workspace_id, user_id)
        merge = Merge(into, user_id, "email_match", cause, key // 2)
        result.append(replace(segment, end_key=key, merge=merge,
                              chats=tuple(c for c in segment.chats if 2 * c.at < key)))  # fmt: skip
        session = ids.email_session(chat.event_id)
        rest = Segment("visitor", ids.visitor_contact_id(workspace_id, anonymous_id, session),
                       key, segment.end_key, session, merge=segment.merge,
                       chats=tuple(c for c in segment.chats if 2 * c.at >= key))  # fmt: skip
        pending.insert(0, rest)
    return result


def _first_match(
    segment: Segment, verified: Mapping[str, Mapping[str, tuple[int, str]]]
) -> tuple[int, ChatFact, str, str] | None:
    """The earliest e-mail match inside the segment: (boundary key, chat, user_id, cause)."""
    best: tuple[int, ChatFact, str, str] | None = None
    for chat in segment.chats:
        users = verified.get(chat.email or "", {})
        if chat.email is None or len(users) != 1:
            continue  # no e-mail, nobody verified it, or several users did (flagged instead)
        ((user_id, (verified_at, verified_by)),) = users.items()
        at, cause = max((chat.at, chat.event_id), (verified_at, verified_by))
        key = 2 * at + 1
        if segment.end_key is not None and key >= segment.end_key:
            continue  # the lead had become someone else before the match could happen
        if best is None or (key, cause) < (best[0], best[3]):
            best = (key, chat, user_id, cause)
    return best
