"""Profiles as a pure function of timelines (SPEC §3 `identity.profiles`).

`created_at` is the event time of the earliest fact in the contact's whole history (merged
contacts included); `updated_at` the event time of the latest fact the profile reflects. Both
come from event time, never the wall clock, so a replay reproduces them. Page views after a
contact's first are not facts a profile reflects: a known device browsing changes nothing.
"""

from __future__ import annotations

import bisect
import heapq
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from itertools import compress, repeat

from pipeline.core import ids
from pipeline.core.facts import ChatFact, EmailEntry, Retired, SettledPart, User
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


def _bounded(
    profile: Profile,
    times: Mapping[str, Mapping[str, int]],
    limit: int,
    dropped: Mapping[str, int] | None = None,
) -> Profile:
    """R15: each list keeps its `limit` most recent entries (by `times`, then by value).

    A list that had to drop entries is counted in `totals`, and the profile is flagged
    `truncated`; the kept entries keep their order. `email_matched_contact_ids`, a subset of
    `merged_contact_ids`, keeps the ones that list keeps. `dropped` counts, per list, the
    entries dropped already (by settled parts, which keep the most recent `limit`).
    """
    lists: dict[str, list[str]] = {}
    totals: dict[str, int] = {}
    for name in LIMITED_LISTS:
        entries: list[str] = getattr(profile, name)
        total = len(entries) + (dropped or {}).get(name, 0)
        if total <= limit:
            continue
        lists[name] = _most_recent(entries, times.get(name, {}), limit)
        totals[name] = total
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


def _most_recent(entries: list[str], when: Mapping[str, int], limit: int) -> list[str]:
    """The `limit` most recent of `entries` (by `when`, then by value), in their order.

    Those that go are the oldest: usually a few of a list just over the limit, found from the
    times alone rather than by ranking every entry.
    """
    k = len(entries) - limit
    if k <= 0:
        return entries
    times = list(map(when.get, entries, repeat(0)))
    heapq.heapify(times)  # epoch milliseconds: a heap is cheaper than sorting them all
    oldest = [heapq.heappop(times) for _ in range(k)]
    cut = oldest[-1]  # the latest time of those that go
    if not times or times[0] != cut:  # every entry at `cut` goes too: keep the later ones
        return list(compress(entries, map(cut.__lt__, map(when.get, entries, repeat(0)))))
    older = bisect.bisect_left(oldest, cut)  # entries before it: all go
    tied = sorted(e for e in entries if when.get(e, 0) == cut)
    going = set(tied[: k - older])  # of those at `cut`, the smallest values go
    return [e for e in entries
            if (t := when.get(e, 0)) > cut or (t == cut and e not in going)]  # fmt: skip


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
    # Device -> the user's settled part there: her segments behind the carry of a folded device
    # that `timelines` holds folded (R15).
    settled: Mapping[str, SettledPart] = field(default_factory=dict)
    # The devices she no longer uses, summarised; `timelines` holds the live ones (R15).
    retired: Retired | None = None


def retired_segment(retired: Retired | None, anonymous_id: str, segment: Segment) -> bool:
    """Whether the segment (hers, or a visitor merged into her) is in her retired summary.

    On a retired device: all of them. On one that came back live: her sessions that start, and
    the visitors merged into her, before the device's point (`Retired.returned`).
    """
    if retired is None:
        return False
    key = retired.key(anonymous_id)
    if key is None:
        return retired.has(anonymous_id)
    if segment.merge is not None and segment.kind == "visitor":
        return segment.merge.at < key
    return segment.start_ms is None or segment.start_ms < key


def user_segments(view: UserView) -> list[tuple[Segment, Timeline]]:
    """The user's sessions on its live devices (see `UserView.settled`, `UserView.retired`)."""
    return [
        (segment, timeline)
        for timeline in view.timelines.values()
        for segment in timeline.segments
        if segment.user_id == view.user_id
        and not retired_segment(view.retired, timeline.anonymous_id, segment)
    ]


def merged_leads(workspace_id: str, view: UserView) -> list[Lead]:
    """Visitors and leads whose history moved into the user, by login, signup or e-mail."""
    into = ids.user_contact_id(workspace_id, view.user_id)
    found: dict[str, Lead] = {}
    candidates = [Lead(s, t) for t in view.timelines.values() for s in t.segments]
    for lead in (*candidates, *view.email_leads):
        segment = lead.segment
        if segment.kind == "visitor" and segment.merge and segment.merge.into_contact_id == into:
            if lead.timeline.exists(segment) and not retired_segment(
                view.retired, lead.timeline.anonymous_id, segment
            ):
                found.setdefault(segment.contact_id, lead)
    return [found[k] for k in sorted(found)]


def first_link(view: UserView) -> tuple[int, str] | None:
    """(at, event_id) of the login or signup that created the user's profile."""
    starts = [(s.start_ms or 0, s.session) for s, _ in user_segments(view)]
    starts += [p.first for p in view.settled.values() if p.first is not None]
    if view.retired is not None and view.retired.part.first is not None:
        starts.append(view.retired.part.first)
    return min(starts) if starts else None


@dataclass(slots=True)
class _Contributions:
    """What a user's segments (live ones, and settled parts) give her profile, gathered."""

    first: tuple[int, str] | None = None
    created: int | None = None
    updated: int | None = None
    devices: dict[str, int] = field(default_factory=dict)  # device -> her latest session start
    merged: dict[str, tuple[int, bool]] = field(default_factory=dict)  # -> (latest, by e-mail)
    # conversation_id -> ((time, event_id) of its first chat, time of its latest)
    conversations: dict[str, tuple[tuple[int, str], int]] = field(default_factory=dict)
    # Entries settled parts counted but no longer list (beyond the list limit).
    dropped_merged: int = 0
    dropped_conversations: int = 0
    # The retired summary added (`retired`), whose devices it counts, listed or not, and the
    # devices added otherwise.
    summary: Retired | None = None
    others: set[str] = field(default_factory=set)
    # Gathered from a retired summary's (`of_retired`): what the summary alone gives (`base`),
    # and the devices and merged contacts added or moved since, whose lists are then cut from
    # the base's orders (`_cut_from`) rather than sorted whole.
    base: _Contributions | None = None
    fresh_devices: set[str] | None = None
    fresh_merged: set[str] | None = None
    orders: _Orders | None = None  # of a base: its lists' orders, worked out once

    def _time(self, created: int | None, updated: int) -> None:
        if created is not None and (self.created is None or created < self.created):
            self.created = created
        if self.updated is None or updated > self.updated:
            self.updated = updated

    def _link(self, link: tuple[int, str]) -> None:
        if self.first is None or link < self.first:
            self.first = link

    def _device(self, anonymous_id: str, start: int) -> None:
        self.devices[anonymous_id] = max(start, self.devices.get(anonymous_id, start))
        self.others.add(anonymous_id)
        if self.fresh_devices is not None:
            self.fresh_devices.add(anonymous_id)

    def _conversation(self, conversation_id: str, first: tuple[int, str], latest: int) -> None:
        seen = self.conversations.get(conversation_id)
        if seen is not None:
            first, latest = min(first, seen[0]), max(latest, seen[1])
        self.conversations[conversation_id] = (first, latest)

    def _chat(self, chat: ChatFact) -> None:
        self._time(None, chat.at)
        if chat.conversation_id:  # a content-free chat (R16) is no conversation
            self._conversation(chat.conversation_id, (chat.at, chat.event_id), chat.at)

    def session(self, segment: Segment, anonymous_id: str) -> None:
        start = segment.start_ms or 0
        self._link((start, segment.session))
        self._time(start, start)
        self._device(anonymous_id, start)
        for chat in segment.chats:
            self._chat(chat)

    def lead(self, lead: Lead) -> None:
        segment = lead.segment
        if segment.contact_id in self.merged:
            return
        assert segment.merge is not None  # a merged lead's
        updated = visitor_updated_ms(lead)
        self.merged[segment.contact_id] = (updated, segment.merge.reason == "email_match")
        if self.fresh_merged is not None:
            self.fresh_merged.add(segment.contact_id)
        self._time(visitor_created_ms(lead), updated)
        for chat in segment.chats:
            self._chat(chat)

    def part(self, anonymous_id: str, part: SettledPart) -> None:
        if part.first is not None:
            self._link(part.first)
        if part.updated is not None:
            self._time(part.created, part.updated)
        if part.latest_start is not None:
            self._device(anonymous_id, part.latest_start)
        merged, fresh = self.merged, self.fresh_merged
        if not merged:  # the common case: one part, read first
            self.merged = {c: (at, by_email) for c, at, by_email in part.merged}
            if fresh is not None:
                fresh.update(self.merged)
        else:
            for contact_id, at, by_email in part.merged:
                if contact_id not in merged:
                    merged[contact_id] = (at, by_email)
                    if fresh is not None:
                        fresh.add(contact_id)
        self.dropped_merged += part.merged_total - len(part.merged)
        for conversation_id, first, latest in part.conversations:
            self._conversation(conversation_id, first, latest)
        self.dropped_conversations += part.conversations_total - len(part.conversations)

    def retired(self, retired: Retired) -> None:
        """Add a retired summary: its part, and the devices it lists and counts."""
        self.part("", retired.part)
        devices = self.devices
        for anonymous_id, start in retired.devices:
            devices[anonymous_id] = max(start, devices.get(anonymous_id, start))
        self.summary = retired

    @classmethod
    def of_retired(cls, retired: Retired) -> _Contributions:
        """What the retired summary alone gives (`retired`), gathered once per summary read.

        Her summary holds up to a list limit of devices, merged contacts and conversations
        and changes with few of her events, while each of them derives her profile from it:
        what it gives is kept by the identity of its (immutable) `part` and `devices`, which a
        worker reads once while their bytes stay the same (`pipeline.worker.decoded`), and
        handed out as a copy.
        """
        key = (id(retired.part), id(retired.devices))
        kept = _SUMMARIES.get(key)
        if kept is None or kept[0] is not retired.part or kept[1] is not retired.devices:
            found = cls()
            found.retired(retired)
            kept = (retired.part, retired.devices, found)
            _SUMMARIES[key] = kept
            while len(_SUMMARIES) > _SUMMARIES_KEPT:
                del _SUMMARIES[next(iter(_SUMMARIES))]
        found = kept[2]
        return _Contributions(
            found.first, found.created, found.updated, dict(found.devices), dict(found.merged),
            dict(found.conversations), found.dropped_merged, found.dropped_conversations,
            retired, set(found.others), found, set(), set(),
        )  # fmt: skip

    def ordered(self) -> _Orders:
        """The lists of a base, in the orders `_cut_from` reads (kept with it)."""
        if self.orders is None:
            merged = self.merged
            self.orders = _Orders(
                sorted(self.devices),
                sorted((at, d) for d, at in self.devices.items()),
                sorted(merged),
                sorted((at, c) for c, (at, _) in merged.items()),
                sorted(c for c, (_, by_email) in merged.items() if by_email),
            )  # fmt: skip
        return self.orders

    def devices_total(self) -> int:
        """Her devices: those a retired summary counts, and the others listed."""
        summary = self.summary
        if summary is None:
            return len(self.devices)
        return summary.devices_total + sum(1 for d in self.others if not summary.counted(d))

    def settled(self, anonymous_id: str, limit: int) -> SettledPart | None:
        """As a settled part of the device (None: nothing), its lists cut to `limit`."""
        if self.first is None and not self.merged:
            return None
        merged, chats = self.merged, self.conversations
        kept_merged = _most_recent(sorted(merged), {c: m[0] for c, m in merged.items()}, limit)
        kept_chats = _most_recent(sorted(chats), {c: t[1] for c, t in chats.items()}, limit)
        return SettledPart(
            self.first, self.created, self.updated, self.devices.get(anonymous_id),
            tuple((c, *merged[c]) for c in kept_merged),
            len(merged) + self.dropped_merged,
            tuple((c, *chats[c]) for c in kept_chats),
            len(chats) + self.dropped_conversations,
        )  # fmt: skip


@dataclass(slots=True)
class _Orders:
    """A retired summary's devices and merged contacts, by value and by (time, value)."""

    devices: list[str]
    devices_by_age: list[tuple[int, str]]
    merged: list[str]
    merged_by_age: list[tuple[int, str]]
    email_matched: list[str]


_FRESH_MAX = 64  # `_cut_from` inserts or cuts this many entries at most; beyond, a list is sorted


def _cut_from(
    order: list[str],
    by_age: list[tuple[int, str]],
    base: Mapping[str, object],
    current: Mapping[str, object],
    fresh: set[str],
    time_of: Callable[[object], int],
    limit: int,
) -> tuple[list[str], int] | None:
    """`current`'s keys sorted, less the oldest beyond `limit`, and how many went.

    What `_most_recent(sorted(current), times, limit)` gives, worked out from a base's orders
    (`order` its keys sorted, `by_age` its (time, key) pairs sorted): `current` holds the base's
    keys, those of `fresh` added or moved since. Its cost is that of the few fresh or cut
    entries, not of the list. None when more than `_FRESH_MAX` are: the caller sorts.
    """
    added = sorted(key for key in fresh if key not in base)
    if len(added) > _FRESH_MAX:
        return None
    kept = order.copy()
    for key in added:
        bisect.insort(kept, key)
    k = len(kept) - limit
    if k <= 0:
        return kept, 0
    if k > _FRESH_MAX:
        return None
    # The k smallest (time, key) go: the base's in age order (those moved since left out),
    # merged with the fresh ones.
    moved = sorted((time_of(current[key]), key) for key in fresh)
    going: list[str] = []
    i = j = 0
    while len(going) < k:
        while i < len(by_age) and by_age[i][1] in fresh:
            i += 1
        if j < len(moved) and (i == len(by_age) or moved[j] < by_age[i]):
            going.append(moved[j][1])
            j += 1
        else:
            going.append(by_age[i][1])
            i += 1
    for key in going:
        del kept[bisect.bisect_left(kept, key)]
    return kept, k


def _same(at: object) -> int:
    return at  # type: ignore[return-value]


def _first(merged: object) -> int:
    return merged[0]  # type: ignore[index]


# The contributions of the retired summaries read last (`_Contributions.of_retired`), by the
# identities of their part and devices, with those objects (so an identity is never reused).
_SUMMARIES: dict[tuple[int, int], tuple[SettledPart, tuple, _Contributions]] = {}
_SUMMARIES_KEPT = 64


def user_part(workspace_id: str, user_id: str, segments: Iterable[Lead]) -> _Contributions:
    """What these segments (of one device) give the user's profile.

    Her sessions, and the visitors merged into her.
    """
    into = ids.user_contact_id(workspace_id, user_id)
    found = _Contributions()
    for lead in sorted(segments, key=lambda lead: lead.segment.contact_id):
        segment = lead.segment
        if segment.user_id == user_id:
            found.session(segment, lead.timeline.anonymous_id)
        elif (
            segment.kind == "visitor"
            and segment.merge is not None
            and segment.merge.into_contact_id == into
            and lead.timeline.exists(segment)
        ):
            found.lead(lead)
    return found


def settled_part(
    workspace_id: str, user_id: str, segments: Iterable[Lead], *, limit: int
) -> SettledPart | None:
    """The user's settled part of these settled segments of one device (None: nothing)."""
    segments = list(segments)
    if not segments:
        return None
    anonymous_id = segments[0].timeline.anonymous_id
    return user_part(workspace_id, user_id, segments).settled(anonymous_id, limit)


def with_settled(
    anonymous_id: str, part: SettledPart | None, more: SettledPart | None, *, limit: int
) -> SettledPart | None:
    """A settled part with what a fold settles after it (`more`)."""
    if part is None or more is None:
        return more if part is None else part
    found = _Contributions()
    found.part(anonymous_id, part)
    found.part(anonymous_id, more)
    return found.settled(anonymous_id, limit)


def with_retired(
    retired: Retired, found: _Contributions, retiring: Iterable[str], *, limit: int
) -> Retired:
    """The retired summary with what `found` (the segments being retired) gives it."""
    merged = _Contributions.of_retired(retired)
    part = found.settled("", limit)
    if part is not None:
        merged.part("", part)
    for anonymous_id, start in found.devices.items():
        merged._device(anonymous_id, start)
    counted = {d for d in found.devices if not retired.counted(d)}
    total = retired.devices_total + len(counted)
    uncounted = {d for d in retiring if d not in found.devices and not retired.counted(d)}
    uncounted |= set(retired.uncounted) - counted
    summary = merged.settled("", limit) or SettledPart()
    listed = merged.devices
    devices = [(d, listed[d]) for d in _most_recent(sorted(listed), listed, limit)]
    return replace(
        retired,
        ids=tuple(sorted({*retired.ids, *retiring})),
        part=replace(summary, latest_start=None),
        devices=tuple(devices),
        devices_total=total,
        uncounted=tuple(sorted(uncounted)),
    )


def user_profile(
    workspace_id: str, view: UserView, *, limit: int = DEFAULT_LIST_LIMIT
) -> Profile | None:
    """The profile of a user (R6-R8); None before any verified login or signup."""
    found = _Contributions() if view.retired is None else _Contributions.of_retired(view.retired)
    for anonymous_id, part in sorted(view.settled.items()):
        found.part(anonymous_id, part)
    for segment, timeline in user_segments(view):
        found.session(segment, timeline.anonymous_id)
    if found.first is None:
        return None
    merged = merged_leads(workspace_id, view)
    for lead in merged:
        found.lead(lead)
    contact_id = ids.user_contact_id(workspace_id, view.user_id)
    verified = [c for c in view.user.emails if c.verified]
    claim = max(verified) if verified else max(view.user.emails, default=None)
    duplicates: dict[str, int] = {}  # contact_id -> its latest fact
    merged_ids = found.merged
    for lead in view.email_leads:
        segment = lead.segment
        lead_emails = {c.email for c in segment.chats}
        for own in view.user.emails:
            entry = view.emails.get(own.email)
            ambiguous = entry is not None and len(entry.verified) > 1
            if own.email in lead_emails and (not own.verified or ambiguous):
                if segment.contact_id not in merged_ids and lead.timeline.exists(segment):
                    duplicates[segment.contact_id] = visitor_updated_ms(lead)
    assert found.created is not None and found.updated is not None  # a session sets both
    updated = [found.updated, *(c.at for c in view.user.emails)]
    if view.user.name is not None:
        updated.append(view.user.name[0])
    started = sorted(found.conversations.items(), key=lambda c: (c[1][0], c[0]))
    conversations = {c: latest for c, (_, latest) in started}
    # Her lists of devices and merged contacts, sorted and cut to the limit: from her retired
    # summary's orders and the few entries added since, when it gave most of them (R15).
    devices_cut = merged_cut = None
    base = found.base
    if base is not None:
        orders = base.ordered()
        assert found.fresh_devices is not None and found.fresh_merged is not None
        devices_cut = _cut_from(orders.devices, orders.devices_by_age, base.devices,
                                found.devices, found.fresh_devices, _same, limit)  # fmt: skip
        merged_cut = _cut_from(orders.merged, orders.merged_by_age, base.merged,
                               found.merged, found.fresh_merged, _first, limit)  # fmt: skip
    merged_at: dict[str, int] = {}
    if devices_cut is not None:
        anonymous_ids, devices_gone = devices_cut
    else:
        anonymous_ids, devices_gone = sorted(found.devices), 0
    if merged_cut is not None:
        assert base is not None and base.orders is not None
        merged_contact_ids, merged_gone = merged_cut
        email_matched = base.orders.email_matched.copy()
        for merged_id in sorted(found.fresh_merged or ()):
            if found.merged[merged_id][1] and merged_id not in base.merged:
                bisect.insort(email_matched, merged_id)
    else:
        merged_contact_ids, merged_gone = sorted(found.merged), 0
        email_matched = sorted(c for c, (_, by_email) in found.merged.items() if by_email)
        merged_at = {c: at for c, (at, _) in found.merged.items()}
    profile = Profile(
        contact_id=contact_id,
        workspace_id=workspace_id,
        type="user",
        user_id=view.user_id,
        email=claim.email if claim else None,
        email_verified=bool(claim and claim.verified),
        name=view.user.name[2] if view.user.name else None,
        anonymous_ids=anonymous_ids,
        merged_contact_ids=merged_contact_ids,
        email_matched_contact_ids=email_matched,
        conversation_ids=list(conversations),
        possible_duplicates=sorted(duplicates),
        flags=sorted({POSSIBLE_DUPLICATE} if duplicates else set())
        + ([SHARED_IDENTIFIER] if view.refused or (view.retired and view.retired.flagged) else []),
        created_at=from_epoch_ms(found.created),
        updated_at=from_epoch_ms(max(updated)),
    )
    times = {"anonymous_ids": found.devices, "merged_contact_ids": merged_at,
             "conversation_ids": conversations, "possible_duplicates": duplicates}  # fmt: skip
    unlisted = found.devices_total() - len(found.devices) + devices_gone
    dropped = {"merged_contact_ids": found.dropped_merged + merged_gone,
               "conversation_ids": found.dropped_conversations,
               "anonymous_ids": unlisted}  # fmt: skip
    return _bounded(profile, times, limit, dropped)
