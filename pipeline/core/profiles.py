"""Profiles as a pure function of timelines (SPEC §3 `identity.profiles`).

`created_at` is the event time of the earliest fact in the contact's whole history (merged
contacts included); `updated_at` the event time of the latest fact the profile reflects. Both
come from event time, never the wall clock, so a replay reproduces them. Page views after a
contact's first are not facts a profile reflects: a known device browsing changes nothing.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from pipeline.core import ids
from pipeline.core.facts import ChatFact, EmailEntry, User
from pipeline.core.timeline import Segment, Timeline
from schemas import Profile
from schemas.time import from_epoch_ms

POSSIBLE_DUPLICATE = "possible_duplicate"
SHARED_IDENTIFIER = "shared_identifier"
TRUNCATED = "truncated"
DEFAULT_LIST_LIMIT = 1000  # IDP_PROFILE_LIST_LIMIT (R15)
LIMITED_LISTS = ("anonymous_ids", "merged_contact_ids", "conversation_ids", "possible_duplicates")


# Derived anew at every decision and never mutated; not frozen, as in `timeline`, to be cheap.
@dataclass(slots=True, unsafe_hash=True)
class Lead:
    """A visitor segment of some device, with its device's timeline."""

    segment: Segment
    timeline: Timeline


def _conversations(chats: Iterable[ChatFact]) -> dict[str, int]:
    """Conversation ids in the order they started -> the time of their latest chat."""
    seen: dict[str, int] = {}
    for chat in sorted(chats):
        if chat.conversation_id:  # a content-free chat (R16) is none
            seen[chat.conversation_id] = chat.at
    return seen


def _bounded(profile: Profile, times: Mapping[str, Mapping[str, int]], limit: int) -> Profile:
    """R15: each list keeps its `limit` most recent entries (by `times`, then by value).

    A list that had to drop entries is counted in `totals`, and the profile is flagged
    `truncated`; the kept entries keep their order. `email_matched_contact_ids`, a subset of
    `merged_contact_ids`, keeps the ones that list keeps.
    """
    lists: dict[str, list[str]] = {}
    totals: dict[str, int] = {}
    for name in LIMITED_LISTS:
        entries: list[str] = getattr(profile, name)
        if len(entries) <= limit:
            continue
        when = times.get(name, {})
        kept = set(sorted(entries, key=lambda e: (when.get(e, 0), e))[-limit:])
        lists[name] = [e for e in entries if e in kept]
        totals[name] = len(entries)
    if not lists:
        return profile
    if "merged_contact_ids" in lists:
        merged = set(lists["merged_contact_ids"])
        lists["email_matched_contact_ids"] = [
            c for c in profile.email_matched_contact_ids if c in merged
        ]
    update: dict[str, object] = {**lists, "totals": totals}
    update["flags"] = sorted({*profile.flags, TRUNCATED})
    return profile.model_copy(update=update)


def visitor_created_ms(lead: Lead) -> int:
    """A visitor starts with its session, or with the device's first activity for the first."""
    start = lead.segment.start_ms
    if start is None:
        assert lead.timeline.first_activity is not None  # exists() guarantees it
        return lead.timeline.first_activity
    return start


def visitor_updated_ms(lead: Lead) -> int:
    """The latest fact of a visitor: its start, a chat, or its merge."""
    segment = lead.segment
    times = [visitor_created_ms(lead), *(c.at for c in segment.chats)]
    if segment.merge is not None:
        times.append(segment.merge.at)
    return max(times)


def visitor_profile(
    workspace_id: str,
    lead: Lead,
    emails: Mapping[str, EmailEntry],
    *,
    limit: int = DEFAULT_LIST_LIMIT,
) -> Profile:
    """The profile of a visitor, or a lead once it has chatted (R5)."""
    segment = lead.segment
    # A content-free chat (what an erasure leaves of a lead matched into the erased user, R16)
    # is no conversation.
    chats = tuple(c for c in segment.chats if c.conversation_id)
    is_lead = bool(chats)
    email = next((c.email for c in reversed(chats) if c.email), None)
    name = next((c.name for c in reversed(chats) if c.name), None)
    city = next((c.city for c in chats if c.city), None)
    into = segment.merge.into_contact_id if segment.merge else None
    # A possible duplicate's time is its verification; an unverified claim has none kept, so
    # it ranks as the oldest (R15).
    duplicates: dict[str, int] = {}
    for chat in chats:
        entry = emails.get(chat.email or "")
        if entry is None or not entry.admits(lead.timeline.anonymous_id):
            # None of the e-mail's kept leads (R15): neither merged nor flagged, as the
            # e-mail's users do not list it (a claim or verification made after it would
            # otherwise have to reach every device that ever typed the e-mail).
            continue
        if len(entry.verified) > 1:
            # Several users verified it (R7): do not merge, flag.
            for u, (at, _) in entry.verified.items():
                duplicates[ids.user_contact_id(workspace_id, u)] = at
        for u in entry.unverified:
            duplicates.setdefault(ids.user_contact_id(workspace_id, u), 0)
    duplicates.pop(into or "", None)
    conversations = _conversations(chats)
    profile = Profile(
        contact_id=segment.contact_id,
        workspace_id=workspace_id,
        type="lead" if is_lead else "visitor",
        email=email,
        email_verified=False,
        name=name,
        pseudonym=ids.pseudonym(segment.contact_id, city) if is_lead else None,
        anonymous_ids=[lead.timeline.anonymous_id],
        merged_contact_ids=[],  # given, not defaulted: pydantic deep-copies a mutable default
        conversation_ids=list(conversations),
        possible_duplicates=sorted(duplicates),
        flags=[POSSIBLE_DUPLICATE] if duplicates else [],
        created_at=from_epoch_ms(visitor_created_ms(lead)),
        updated_at=from_epoch_ms(visitor_updated_ms(lead)),
        merged_into=into,
    )
    times = {"conversation_ids": conversations, "possible_duplicates": duplicates}
    return _bounded(profile, times, limit)


@dataclass(slots=True, unsafe_hash=True)
class UserView:
    """Everything a user's profile depends on."""

    user_id: str
    user: User
    timelines: Mapping[str, Timeline]  # the user's devices
    email_leads: tuple[Lead, ...]  # leads (on any device) carrying one of the user's e-mails
    emails: Mapping[str, EmailEntry]  # the user's e-mails
    refused: frozenset[str] = frozenset()  # links refused by the shared-identifier guard


def user_segments(view: UserView) -> list[tuple[Segment, Timeline]]:
    """The user's sessions on all its devices."""
    return [
        (segment, timeline)
        for timeline in view.timelines.values()
        for segment in timeline.segments
        if segment.user_id == view.user_id
    ]


def merged_leads(workspace_id: str, view: UserView) -> list[Lead]:
    """Visitors and leads whose history moved into the user, by login, signup or e-mail."""
    into = ids.user_contact_id(workspace_id, view.user_id)
    found: dict[str, Lead] = {}
    candidates = [Lead(s, t) for t in view.timelines.values() for s in t.segments]
    for lead in (*candidates, *view.email_leads):
        segment = lead.segment
        if segment.kind == "visitor" and segment.merge and segment.merge.into_contact_id == into:
            if lead.timeline.exists(segment):
                found.setdefault(segment.contact_id, lead)
    return [found[k] for k in sorted(found)]


def first_link(view: UserView) -> tuple[int, str] | None:
    """(at, event_id) of the login or signup that created the user's profile."""
    starts = [(s.start_ms or 0, s.session) for s, _ in user_segments(view)]
    return min(starts) if starts else None


def user_profile(
    workspace_id: str, view: UserView, *, limit: int = DEFAULT_LIST_LIMIT
) -> Profile | None:
    """The profile of a user (R6-R8); None before any verified login or signup."""
    sessions = user_segments(view)
    if not sessions:
        return None
    contact_id = ids.user_contact_id(workspace_id, view.user_id)
    merged = merged_leads(workspace_id, view)
    chats = [c for s, _ in sessions for c in s.chats]
    chats += [c for lead in merged for c in lead.segment.chats]
    verified = [c for c in view.user.emails if c.verified]
    claim = max(verified) if verified else max(view.user.emails, default=None)
    duplicates: dict[str, int] = {}  # contact_id -> its latest fact
    merged_at = {lead.segment.contact_id: visitor_updated_ms(lead) for lead in merged}
    merged_ids = set(merged_at)
    for lead in view.email_leads:
        segment = lead.segment
        lead_emails = {c.email for c in segment.chats}
        for own in view.user.emails:
            entry = view.emails.get(own.email)
            ambiguous = entry is not None and len(entry.verified) > 1
            if own.email in lead_emails and (not own.verified or ambiguous):
                if segment.contact_id not in merged_ids and lead.timeline.exists(segment):
                    duplicates[segment.contact_id] = visitor_updated_ms(lead)
    created = [s.start_ms or 0 for s, _ in sessions]
    created += [visitor_created_ms(lead) for lead in merged]
    updated = [*created, *(c.at for c in chats), *(c.at for c in view.user.emails)]
    updated += [visitor_updated_ms(lead) for lead in merged]
    if view.user.name is not None:
        updated.append(view.user.name[0])
    devices: dict[str, int] = {}  # anonymous_id -> the start of the user's latest session there
    for segment, timeline in sessions:
        start = segment.start_ms or 0
        devices[timeline.anonymous_id] = max(start, devices.get(timeline.anonymous_id, start))
    conversations = _conversations(chats)
    profile = Profile(
        contact_id=contact_id,
        workspace_id=workspace_id,
        type="user",
        user_id=view.user_id,
        email=claim.email if claim else None,
        email_verified=bool(claim and claim.verified),
        name=view.user.name[2] if view.user.name else None,
        anonymous_ids=sorted(devices),
        merged_contact_ids=sorted(merged_ids),
        email_matched_contact_ids=sorted(
            lead.segment.contact_id
            for lead in merged
            if lead.segment.merge is not None and lead.segment.merge.reason == "email_match"
        ),
        conversation_ids=list(conversations),
        possible_duplicates=sorted(duplicates),
        flags=sorted({POSSIBLE_DUPLICATE} if duplicates else set())
        + ([SHARED_IDENTIFIER] if view.refused else []),
        created_at=from_epoch_ms(min(created)),
        updated_at=from_epoch_ms(max(updated)),
    )
    times = {"anonymous_ids": devices, "merged_contact_ids": merged_at,
             "conversation_ids": conversations, "possible_duplicates": duplicates}  # fmt: skip
    return _bounded(profile, times, limit)
