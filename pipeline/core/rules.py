"""The transition function: (state an event touches, event) -> new state and outputs.

An event adds a fact to the records it names (its device; for a login its user; for an e-mail
the e-mail index). The profiles the changed facts can affect are then derived again from the
facts (`timeline`, `profiles`) and compared with what was last published: only differences
are emitted. Because profiles are a function of the set of facts, not of their arrival order,
reading the five topics in any order gives the same final profiles (R11), and an event applied
twice adds nothing the second time (R12).

Events come in checked (`events.check`, once per event, at the edge): the rules use their
normalised values as they are. The function is resumable: when it needs records it has not
been given it returns `NeedMore` and the caller loads them and calls again with a larger view.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace

import jwt

from pipeline.core import erasure, ids, settle
from pipeline.core.events import (
    Checked,
    CheckedChat,
    CheckedErasure,
    CheckedPageView,
    CheckedSession,
    admit,
    optional_email,
)
from pipeline.core.facts import (
    RETIRED_IDS_PER_CHUNK,
    Carry,
    ChatFact,
    Chunk,
    Device,
    DeviceChunk,
    EmailClaim,
    EmailEntry,
    ErasureMarker,
    Retired,
    RetiredChunk,
    SessionFact,
    SettledPart,
    TokenUses,
    User,
    chunk_ident,
    chunk_idents,
    retired_idents,
    summary_idents,
)
from pipeline.core.guard import (
    DEFAULT_DEVICE_LIMIT,
    DEFAULT_WINDOW_MS,
    accepted_window,
    refused_links,
)
from pipeline.core.identifiers import BLOCKED_VALUES
from pipeline.core.model import (
    Applied,
    Emit,
    NeedMore,
    Outcome,
    Refusal,
    Transition,
    Unchanged,
    View,
)
from pipeline.core.profiles import (
    DEFAULT_LIST_LIMIT,
    Lead,
    UserView,
    first_link,
    retired_segment,
    settled_part,
    user_part,
    user_profile,
    visitor_profile,
    with_retired,
    with_settled,
)
from pipeline.core.timeline import Merge, Segment, Timeline, derive
from pipeline.core.verify import TokenPolicy
from schemas import InputEvent, Merged, PageView, Profile, Shutdown
from schemas.time import from_epoch_ms
from schemas.topics import MERGED, PROFILES, SHUTDOWN


@dataclass(frozen=True, slots=True)
class CoreConfig:
    """Deployment choices the rules depend on (pure data)."""

    # Workspace id -> accepted verification secrets (two during a rotation).
    secrets: Mapping[str, tuple[bytes, ...]] = field(default_factory=dict)
    blocked_values: frozenset[str] = BLOCKED_VALUES
    # The shared-identifier guard (R4): at most this many devices per user within the window.
    shared_device_limit: int = DEFAULT_DEVICE_LIMIT
    shared_window_ms: int = DEFAULT_WINDOW_MS
    # R14: how long before its Kafka record's timestamp an event may be stamped (page views
    # and chats; signups, logins and logouts).
    allowed_lateness_ms: int = 86_400_000
    session_lateness_ms: int = 300_000
    # R17: workspace id -> its identity-token policy (absent: tokens optional, any lifetime).
    policies: Mapping[str, TokenPolicy] = field(default_factory=dict)
    # R15: the entries each list of a profile keeps, the most recent by event time.
    profile_list_limit: int = DEFAULT_LIST_LIMIT
    # R15: session facts per chunk record of a folded device (`settle`).
    fold_sessions: int = settle.DEFAULT_FOLD_SESSIONS
    # ... and how far before a device's latest session fact a cut falls at least (`settle`).
    fold_margin_ms: int = 86_400_000
    # R15: how long before a user's latest link a device of hers must have fallen quiet to be
    # retired into her record's summary (`facts.Retired`); None: devices are never retired.
    retire_margin_ms: int | None = 86_400_000
    # ... and how many such devices retire at once: fewer wait (listed live) for more, so her
    # summary records are written once per batch rather than at each of her sessions.
    retire_batch: int = 16


_NOT_LOADED = object()
_NO_DEVICE = Device()  # what an absent device reads as (frozen: shared)
_UNCHANGED = Unchanged()


@dataclass(frozen=True, slots=True)
class _Change:
    """The new records an event's facts produce (only those that changed)."""

    devices: dict[str, Device]
    users: dict[str, User | None]  # None: deleted (an erasure)
    emails: dict[str, EmailEntry | None]
    tokens: dict[str, TokenUses | None] = field(default_factory=dict)
    # An event refused that still records its fact (an erased user's boundary, R16).
    refusal: Refusal | None = None
    erasures: dict[str, ErasureMarker] = field(default_factory=dict)  # markers written (R16)


def apply(event: Checked, view: View, config: CoreConfig) -> Transition | NeedMore:
    """Decide what `event` (checked at the edge, `events.check`) does to the state in `view`."""
    if isinstance(event, CheckedPageView):
        # The commonest event of all, decided with the same rule `_facts` applies (activity
        # only moves earlier), without the general path; see also `browsing`.
        device = view.devices.get(event.anonymous_id, _NOT_LOADED)
        if isinstance(device, Device) and device.first_activity is not None:
            if device.first_activity <= event.at:
                return Transition(_UNCHANGED, reads=frozenset({("devices", event.anonymous_id)}))
    # An erasure reaches every fact of the subject: folded devices are read whole.
    resolver = _Resolver(view, config, full=isinstance(event, CheckedErasure))
    result = _decide(event, resolver)
    if isinstance(result, NeedMore):
        return result
    if result.devices or resolver.refold or resolver.full:
        result = _fold(result, resolver)
        if isinstance(result, NeedMore):
            return result
    return _split_retired(result, resolver) if result.users else result


def _decide(event: Checked, resolver: _Resolver) -> Transition | NeedMore:
    config = resolver.config
    if isinstance(event, CheckedErasure):
        return erasure.erase(event, resolver, config)
    anonymous_id = event.anonymous_id
    change = _facts(event, resolver, config.secrets[event.workspace_id])
    if isinstance(change, Refusal):
        return Transition(change)
    if resolver.missing:
        return resolver.need()
    if change.refusal is not None:
        # Refused, yet it records a fact (an erased user's boundary or activity, R16).
        refusal = change.refusal
        if not (change.devices or change.erasures):
            return Transition(refusal, reads=frozenset(resolver.reads))
        resolver.new_devices, resolver.new_emails = change.devices, change.emails
        result = resolver.rederive(change, set(change.devices), lambda _: refusal)
        if isinstance(result, NeedMore) or not change.erasures:
            return result
        return replace(result, erasures=change.erasures)
    if not (change.devices or change.users or change.emails or change.tokens):
        # Nothing new: a known device browsing, or a replay.
        return Transition(Unchanged(), reads=frozenset(resolver.reads))
    resolver.new_devices, resolver.new_users, resolver.new_emails = (
        change.devices, change.users, change.emails
    )  # fmt: skip
    resolver.new_tokens = change.tokens
    return resolver.consequences(event, anonymous_id, change)


def _fold(result: Transition, resolver: _Resolver) -> Transition | NeedMore:
    """The transition with its long devices folded (`settle`), and those read whole folded again.

    A device read whole (its chunk records loaded) is folded again from its whole history: what
    behind its carry an event changed (a late fact, a guard verdict, a token's first use, an
    e-mail's verification, an erasure) is written back, and chunks it no longer has go.
    """
    view, config = resolver.view, resolver.config
    size, margin = config.fold_sessions, config.fold_margin_ms
    candidates: dict[str, Device | None] = dict(result.devices)
    # A device read whole only for a profile keeps its carry: nothing behind it changed.
    refold = resolver.unfolded if resolver.full else resolver.unfolded & resolver.refold
    for anonymous_id in sorted(refold - candidates.keys()):
        candidates[anonymous_id] = resolver.old_device(anonymous_id)
    for anonymous_id in sorted((resolver.unfolded - refold) & candidates.keys()):
        whole = candidates[anonymous_id]
        stored_carry = view.devices[anonymous_id].carry  # type: ignore[union-attr]
        if whole is not None and stored_carry is not None:  # its new facts are recent ones
            candidates[anonymous_id] = _rebased(whole, stored_carry)
    devices = {a: candidates[a] for a in result.devices}
    chunks: dict[str, Chunk | None] = {}
    work: dict[str, Device] = {}
    erased: list[str] = []
    for anonymous_id, device in candidates.items():
        stored = chunk_idents(anonymous_id, view.devices.get(anonymous_id))
        if device is None:
            chunks.update(dict.fromkeys(stored))  # an erased device's chunks go with it
            erased += [anonymous_id] if stored else []
        elif settle.needs_folding(device, size, margin) or (device.carry is None and stored):
            work[anonymous_id] = device
    if not (work or erased):
        if not chunks and all(devices[a] is result.devices[a] for a in devices):
            return result
        return replace(result, devices=devices, chunks=chunks)
    refolds = _Resolver(view, config)
    refolds.new_devices = {a: d for a, d in devices.items() if d is not None}
    refolds.new_devices.update(work)
    refolds.new_users, refolds.new_emails = result.users, result.emails
    refolds.new_tokens = result.tokens
    parts = _Parts(resolver, refolds, result)
    for anonymous_id in erased:  # its users' settled parts there go with it
        for user_id in parts.stored(anonymous_id):
            parts.write(user_id, anonymous_id, None)
    for anonymous_id, device in sorted(work.items()):
        refused = refolds.refusals(anonymous_id, new=True)
        if refolds.missing:
            return refolds.need()
        folded, made = settle.fold_device(view.workspace_id, anonymous_id, device, refused,
                                          size, margin)  # fmt: skip
        parts.fold(anonymous_id, device, folded, refused)
        stored_device = view.devices.get(anonymous_id)
        if device.carry is None:  # folded from its whole history: chunks it no longer has go
            made_idents = {chunk_ident(anonymous_id, i) for i in made}
            for ident in chunk_idents(anonymous_id, stored_device):
                if ident not in made_idents:
                    chunks[ident] = None
        for index, chunk in made.items():
            ident = chunk_ident(anonymous_id, index)
            if view.chunks.get(ident) != chunk:
                chunks[ident] = chunk
        if folded != stored_device:
            devices[anonymous_id] = folded
        else:
            devices.pop(anonymous_id, None)
    if resolver.missing or refolds.missing:  # the users whose parts are written, say
        for kind, keys in resolver.missing.items():
            refolds.missing.setdefault(kind, set()).update(keys)
        return refolds.need()
    return replace(result, devices=devices, chunks=chunks, users={**result.users, **parts.users},
                   reads=result.reads | refolds.reads | resolver.reads)  # fmt: skip


def _split_retired(result: Transition, resolver: _Resolver) -> Transition | NeedMore:
    """The transition with its users' retired summaries written apart from their records (R15).

    A user's record keeps her summary's header (`Retired`); the transition also writes her
    summary records when the summary changed, appends the devices she newly retired to her id
    chunk records, and marks each retired device's record with her (`Device.retired_by`).
    A summary worked out anew (she was read whole, retired for the first time, or her record
    is of state format 4) rewrites her id chunks and the marks on every device she was read
    with. An erased user's, or one read whole who retires nothing, go.
    """
    view = resolver.view
    users = dict(result.users)
    devices = dict(result.devices)
    chunks = dict(result.chunks)
    missing: dict[str, set[str]] = {}
    reads: set[tuple[str, str]] = set()

    def device(anonymous_id: str) -> Device | None:
        if anonymous_id in devices:
            return devices[anonymous_id]
        if anonymous_id not in view.devices:
            missing.setdefault("devices", set()).add(anonymous_id)
            return None
        reads.add(("devices", anonymous_id))
        return view.devices[anonymous_id]

    def mark(anonymous_id: str, user_id: str, counted: bool | None) -> None:
        current = device(anonymous_id)
        if current is not None and current.retired_for(user_id) != counted:
            devices[anonymous_id] = current.with_retired_for(user_id, counted)

    def write_ids(user_id: str, start: int, every: list[str]) -> None:
        per = RETIRED_IDS_PER_CHUNK
        for offset in range(0, len(every), per):
            ident = f"r{(start + offset) // per}:{user_id}"
            chunk = RetiredChunk(ids=tuple(every[offset : offset + per]))
            if view.chunks.get(ident) != chunk:
                chunks[ident] = chunk

    for user_id, user in sorted(result.users.items()):
        stored = view.users.get(user_id)
        old = stored.retired if stored is not None else None
        new = user.retired if user is not None else None
        if (old is None and new is None) or (new is not None and not new.loaded):
            continue  # never retired, or her summary is not read (so neither changed)
        stale = retired_idents(user_id, old)
        if new is None or old is None or old.inline or user_id in resolver._whole_users:
            # Worked out anew: every device she retired is listed in `new` (read whole), or
            # none is (a record without any, or erased).
            every = list(new.ids) if new is not None else []
            for anonymous_id, record in sorted(view.devices.items()):
                if record is not None and record.retired_for(user_id) is not None:
                    if new is None or not new.has(anonymous_id):
                        mark(anonymous_id, user_id, None)
            if new is None:
                if old is not None and not old.inline:
                    chunks.update(dict.fromkeys((*summary_idents(user_id), *stale)))
                continue
            write_ids(user_id, 0, every)
            count = len(every)
            kept = -(-count // RETIRED_IDS_PER_CHUNK)
            chunks.update(dict.fromkeys(stale[kept:]))
            summary_changed = True
        else:
            added = []
            for anonymous_id in new.ids:
                record = device(anonymous_id)
                if record is not None and record.retired_for(user_id) is None:
                    added.append(anonymous_id)
            count = old.ids_count + len(added)
            if added:
                start = old.ids_count - old.ids_count % RETIRED_IDS_PER_CHUNK
                earlier: tuple[str, ...] = ()
                if start < old.ids_count:  # the last chunk has room: it takes them first
                    ident = stale[-1]
                    if ident not in view.chunks:
                        missing.setdefault("chunks", set()).add(ident)
                    reads.add(("chunks", ident))
                    chunk = view.chunks.get(ident)
                    earlier = chunk.ids if isinstance(chunk, RetiredChunk) else ()
                write_ids(user_id, start, [*earlier, *added])
            before = resolver.filled_user(user_id).retired
            summary_changed = before is None or (before.part, before.devices) != (
                new.part, new.devices)  # fmt: skip
        for anonymous_id in new.ids:
            mark(anonymous_id, user_id, not _in_sorted(new.uncounted, anonymous_id))
        if summary_changed:
            part_ident, devices_ident = summary_idents(user_id)
            part, listed = RetiredChunk(part=new.part), RetiredChunk(devices=new.devices)
            if view.chunks.get(part_ident) != part:
                chunks[part_ident] = part
            if view.chunks.get(devices_ident) != listed:
                chunks[devices_ident] = listed
        if count != new.ids_count:
            assert user is not None  # retired, so not erased
            users[user_id] = replace(user, retired=replace(new, ids_count=count))
    for ident, value in chunks.items():
        if ident in result.chunks and result.chunks[ident] is value:
            continue  # written by the decision, which read it
        # Written here: read first, as every record a transition writes (a record written
        # unread would have to be absent; the summary's may be there already).
        if ident not in view.chunks:
            missing.setdefault("chunks", set()).add(ident)
        reads.add(("chunks", ident))
    if missing or resolver.missing:
        for kind, keys in resolver.missing.items():
            missing.setdefault(kind, set()).update(keys)
        get = missing.get
        return NeedMore(devices=tuple(sorted(get("devices", ()))),
                        chunks=tuple(sorted(get("chunks", ()))))  # fmt: skip
    return replace(result, users=users, devices=devices, chunks=chunks,
                   reads=result.reads | reads | resolver.reads)  # fmt: skip


def _in_sorted(values: tuple[str, ...], value: str) -> bool:
    at = bisect_left(values, value)
    return at < len(values) and values[at] == value


class _Parts:
    """The settled parts (`User.past`) a transition's folds write into users' records (R15).

    A device folded on from its carry adds to each user's part there what the fold settles of
    hers. A device folded from its whole history (or erased) has its users' parts worked out
    anew, and those that changed are written, with those of users whose records are loaded
    anyway (which repairs any part a carry without parts left unwritten).
    """

    def __init__(self, decided: _Resolver, refolds: _Resolver, result: Transition) -> None:
        self.decided, self.refolds, self.result = decided, refolds, result
        self.workspace_id = decided.view.workspace_id
        self.limit = decided.config.profile_list_limit
        self.users: dict[str, User] = {}

    def _settled(self, before: Timeline, after: Timeline) -> dict[str, SettledPart]:
        """Per user: her part of the segments `before` has and `after` no longer has."""
        kept = set(after.segments)
        gone: dict[str, list[Lead]] = {}
        for segment in before.segments:
            if segment in kept:
                continue
            owner = segment.user_id or (segment.merge.user_id if segment.merge else None)
            if owner is not None and not erasure.is_placeholder(owner):
                gone.setdefault(owner, []).append(Lead(segment, before))
        for owner in sorted(gone):  # a retired device's segments in her summary are not settled
            user = self._user(owner)
            retired = user.retired if user is not None else None
            if retired is not None and retired.has(before.anonymous_id):
                gone[owner] = [lead for lead in gone[owner]
                               if not retired_segment(retired, before.anonymous_id,
                                                      lead.segment)]  # fmt: skip
        found = {}
        for user_id, segments in sorted(gone.items()):
            part = settled_part(self.workspace_id, user_id, segments, limit=self.limit)
            if part is not None:
                found[user_id] = part
        return found

    def stored(self, anonymous_id: str) -> dict[str, SettledPart]:
        """The parts the stored device's settled history gives (read whole: `_fold`)."""
        decided = self.decided
        stored = decided.view.devices.get(anonymous_id)
        if stored is None or stored.carry is None or not stored.carry.parts:
            return {}
        refused = decided.refusals(anonymous_id, new=False)
        whole = decided.timeline(anonymous_id, new=False)
        if whole.settled is not None:  # not read whole: cannot be (`refold` reads them whole)
            return {}
        return self._settled(whole, decided.derive_device(anonymous_id, stored, refused,
                                                          new=False))  # fmt: skip

    def _user(self, user_id: str) -> User | None:
        if user_id in self.users:
            return self.users[user_id]
        if user_id in self.result.users and self.result.users[user_id] is None:
            return None  # deleted (an erasure)
        user = self.refolds.user(user_id, new=True)
        return None if user == User() else user

    def write(self, user_id: str, anonymous_id: str, part: SettledPart | None) -> None:
        user = self._user(user_id)
        if user is not None and user.past.get(anonymous_id) != part:
            self.users[user_id] = user.with_past(anonymous_id, part)

    def fold(
        self, anonymous_id: str, device: Device, folded: Device, refused: frozenset[str]
    ) -> None:
        """Write the parts that folding `device` into `folded` changes."""
        if folded.carry is not None and not folded.carry.parts:
            return  # a carry of state format 2, folded on: no parts are kept for it yet
        found: dict[str, SettledPart] = {}  # a device left whole (no carry) settles nothing
        if folded.carry is not None:
            refolds = self.refolds
            before = refolds.derive_device(anonymous_id, device, refused, new=True)
            after = refolds.derive_device(anonymous_id, folded, refused, new=True)
            found = self._settled(before, after)
        if device.carry is not None:  # folded on: each part grows by what this fold settles
            for user_id, more in found.items():
                user = self._user(user_id)
                if user is not None:
                    part = with_settled(anonymous_id, user.past.get(anonymous_id), more,
                                        limit=self.limit)  # fmt: skip
                    self.write(user_id, anonymous_id, part)
            return
        # Folded from its whole history: the parts are these.
        old = self.stored(anonymous_id)
        stored = self.decided.view.devices.get(anonymous_id)
        known = stored is not None and stored.carry is not None and stored.carry.parts
        loaded = set(self.decided.view.users) | set(self.result.users)
        for user_id in sorted({*found, *old}):
            if not known or old.get(user_id) != found.get(user_id) or user_id in loaded:
                self.write(user_id, anonymous_id, found.get(user_id))


def _summarised(workspace_id: str, user_id: str, retired: Retired, timeline: Timeline) -> object:
    """What the segments of a retired device that her summary holds give her profile."""
    kept = [Lead(s, timeline) for s in timeline.segments
            if retired_segment(retired, timeline.anonymous_id, s)]  # fmt: skip
    return user_part(workspace_id, user_id, kept)


def _guarded(user: User) -> int:
    """How many devices the guard (R4) may count for the user: live, or in the retired window."""
    if user.retired is None or not user.retired.accepted:
        return len(user.devices)
    live = set(user.devices)
    return len(live) + len({d for _, d in user.retired.accepted if d not in live})


def _latest_fact(device: Device) -> int:
    """The time of the device's latest fact of any kind."""
    times = [device.first_activity or 0]
    if device.sessions:
        times.append(device.sessions[-1].at)
    if device.chats:
        times.append(device.chats[-1].at)
    return max(times)


def _device_chunk(chunk: Chunk | None) -> DeviceChunk:
    return chunk if isinstance(chunk, DeviceChunk) else DeviceChunk()


def _rebased(whole: Device, carry: Carry) -> Device:
    """A whole device as its folded record: the facts from the carry on, and the carry."""
    key = carry.key
    return Device(tuple(f for f in whole.sessions if 2 * f.at >= key),
                  tuple(c for c in whole.chats if 2 * c.at >= key), whole.first_activity,
                  whole.erased, carry, whole.refused, whole.retired_by)  # fmt: skip


def browsing(
    event: InputEvent | Checked,
    first_activity: int | None,
    config: CoreConfig,
    *,
    record_ms: int | None = None,
) -> bool:
    """Whether `event` is a page view of a device active no later than it: it changes nothing.

    `first_activity` is the stored device's earliest activity (None: no device, or none yet).
    This is `apply`'s own answer for such an event, found from one number instead of the whole
    device, and it stays true whatever else happens meanwhile: facts only accumulate, so a
    device's first activity only moves earlier. A caller may therefore decide these events
    before, after or without the rest of their batch. An event not checked yet passes only
    the edge's first checks (`events.admit`), all a page view needs; `record_ms` is its Kafka
    record's timestamp.
    """
    if first_activity is None:
        return False
    if isinstance(event, PageView):
        admitted = admit(event, config, record_ms=record_ms)
        return not isinstance(admitted, Refusal) and first_activity <= admitted[1]
    return isinstance(event, CheckedPageView) and first_activity <= event.at


def likely_needs(event: Checked, config: CoreConfig, *, new_device: bool = False) -> NeedMore:
    """What `apply` will most likely ask for besides the event's device, known from the event.

    `new_device`: the device is known to have no record yet, so a page view or a chat begins
    its first visitor. A caller that loads these together with the device (or before deciding
    at all) spares itself a round of asking. These are hints, not answers: a token's e-mail
    claim is read without its signature, and `apply` still asks for whatever else it needs.
    """
    secrets = config.secrets.get(event.workspace_id)
    # A device or user without a record may have been erased: its marker is read with the
    # record (R16).
    device_marker: tuple[str, ...] = ()
    if new_device and secrets and not isinstance(event, CheckedErasure):
        device_marker = erasure.subject_digests(secrets, f"device:{event.anonymous_id}")
    if isinstance(event, CheckedPageView | CheckedChat):
        origin: tuple[str, ...] = ()
        if new_device:
            origin = (ids.visitor_contact_id(event.workspace_id, event.anonymous_id, ids.ORIGIN),)
        email = event.email if isinstance(event, CheckedChat) else None
        if email and secrets:  # an e-mail an erased user verified has a marker (R16)
            device_marker += erasure.subject_digests(secrets, erasure.email_subject(email))
        return NeedMore(contacts=origin, emails=(email,) if email else (), erasures=device_marker)
    if not isinstance(event, CheckedSession) or isinstance(event.user_id, Refusal):
        return NeedMore()
    user_id = event.user_id
    marker = erasure.subject_digests(secrets, f"user:{user_id}") if secrets else ()
    marker = (*marker, *device_marker)
    if event.kind == "logout":
        return NeedMore(users=(user_id,), erasures=marker)
    emails = [event.email]
    if event.identity_token is not None:
        emails.append(_unverified_email(event.identity_token, config.blocked_values))
    return NeedMore(
        users=(user_id,),
        emails=tuple(sorted({e for e in emails if e})),
        contacts=(ids.user_contact_id(event.workspace_id, user_id),),
        erasures=marker,
    )


def likely_more(event: Checked, view: View, config: CoreConfig) -> NeedMore:
    """What `apply` will most likely ask for next, read off the records already in `view`.

    For a chat or a session event whose device (and `likely_needs`) are loaded, or a session
    event whose device has no record: the published profiles of the device's visitors (one per
    session it may have: the first, one after each logout, one after each e-mail match, and
    the one this event may begin), the other devices of the event's user (and a retired user's
    summary records), and the users of the e-mails involved with their profiles. Deciding
    without them would only end in asking for them; like `likely_needs` these are hints, and a
    few may name records that do not exist.
    """
    if not isinstance(event, CheckedChat | CheckedSession):
        return NeedMore()
    anonymous_id = event.anonymous_id
    device = view.devices.get(anonymous_id)
    if device is None and not isinstance(event, CheckedSession):
        return NeedMore()
    # A session event on a device without a record (a new device's login) still names its
    # user, whose devices and summary it reads.
    facts = device.sessions if device is not None else ()
    chats = device.chats if device is not None else ()
    workspace_id = view.workspace_id
    sessions = [ids.ORIGIN]
    sessions += [ids.logout_session(f.event_id) for f in facts if f.kind == "logout"]
    sessions += [ids.email_session(c.event_id) for c in chats if c.email is not None]
    if isinstance(event, CheckedSession) and event.kind == "logout":
        sessions.append(ids.logout_session(event.event_id))
    elif isinstance(event, CheckedChat) and event.email is not None:
        sessions.append(ids.email_session(event.event_id))
    contacts = {ids.visitor_contact_id(workspace_id, anonymous_id, s) for s in sessions}
    users = {f.user_id for f in facts
             if f.kind != "logout" and not erasure.is_placeholder(f.user_id)}  # fmt: skip
    devices: set[str] = set()
    emails = {c.email for c in chats
              if c.email is not None and not erasure.is_placeholder(c.email)}  # fmt: skip
    if isinstance(event, CheckedSession):
        if isinstance(event.user_id, str):
            users.add(event.user_id)
    elif event.email is not None:
        emails.add(event.email)
    for email in emails:
        entry = view.emails.get(email)
        if entry is not None:
            users.update(entry.verified, entry.unverified)
    chunks: set[str] = set()
    for user_id in users:
        user = view.users.get(user_id)
        if user is not None:
            devices.update(user.devices)
            if user.retired is not None and not user.retired.inline:
                chunks.update(summary_idents(user_id))  # her profile reads her summary
    contacts.update(ids.user_contact_id(workspace_id, u) for u in users)
    devices.discard(anonymous_id)
    return NeedMore(
        devices=tuple(sorted(devices)),
        contacts=tuple(sorted(contacts)),
        users=tuple(sorted(users)),
        emails=tuple(sorted(emails)),
        chunks=tuple(sorted(chunks)),
    )


def _unverified_email(token: str, blocked: frozenset[str]) -> str | None:
    """The e-mail claim of a token, read without checking it (for `likely_needs` only)."""
    try:
        claims = jwt.decode(token, options={"verify_signature": False})
    except jwt.PyJWTError:
        return None
    email = claims.get("email")
    return optional_email(email, blocked) if isinstance(email, str) else None


def _facts(
    event: CheckedPageView | CheckedChat | CheckedSession,
    resolver: _Resolver,
    secrets: tuple[bytes, ...],
) -> _Change | Refusal:
    """The records the event's own facts change."""
    anonymous_id, at = event.anonymous_id, event.at
    device = resolver.old_device(anonymous_id)
    if resolver.settled(anonymous_id, at) and resolver.missing:
        return _Change({}, {}, {})  # behind the device's carry: decided on the whole device
    erased_device = erasure.device_erased_at(resolver, anonymous_id)
    if erased_device is not None:
        resolver.read_whole(anonymous_id)
    if erased_device is not None and at < erased_device:
        return Refusal("erased", "the device was erased after this event's time (R16)")
    if device.erased is None and erased_device is not None:
        device = Device(erased=erased_device)  # the device comes back after its erasure
    if isinstance(event, CheckedPageView):
        return _Change(_changed(anonymous_id, device, device.with_activity(at)), {}, {})
    if isinstance(event, CheckedChat):
        conversation_id = event.conversation_id
        if isinstance(conversation_id, Refusal):
            return conversation_id
        email = event.email
        chat = ChatFact(at, event.event_id, conversation_id, email, event.name, event.city)
        emails: dict[str, EmailEntry | None] = {}
        if email is not None:
            digest, marker = erasure.find_marker(resolver, secrets, erasure.email_subject(email))
            if marker is not None:
                resolver.read_whole(anonymous_id)
            if marker is not None and marker.verified is not None and at < marker.at:
                if not resolver.old_email(email).verified:
                    # A lead typing an erased user's verified e-mail before her erasure: matched
                    # into her marker, content-free, as the erasure left such leads (R16). A chat
                    # in someone's session (or a lead that became someone else first) is no
                    # such lead: it is kept as it is, as the erasure keeps it when it comes after.
                    mark = erasure.matched_as(digest, marker.verified)
                    matched = device.with_chat(ChatFact(at, event.event_id, "", mark))
                    if erasure.lands_matched(resolver, anonymous_id, matched, event.event_id):
                        return _Change(_changed(anonymous_id, device, matched), {}, {})

            entry = resolver.old_email(email)
            emails = _changed(email, entry, entry.with_lead(at, event.event_id, anonymous_id))
        return _Change(_changed(anonymous_id, device, device.with_chat(chat)), {}, emails)
    user_id = event.user_id
    if isinstance(user_id, Refusal):
        return user_id
    logout = event.kind == "logout"
    erased_at = erasure.user_erased_at(resolver, user_id)
    erased = erased_at is not None and at < erased_at
    if logout and not erased:
        fact = SessionFact(at, event.event_id, "logout", user_id)
        # The user's record lists the devices of its logouts too, so that an erasure finds
        # every fact that names it (R16).
        user = resolver.old_user(user_id)
        if user.erased is None and erased_at is not None:
            user = User(erased=erased_at)
        with_fact = device.with_session(fact)
        new_user = _with_device(user, anonymous_id, at, with_fact != device)
        return _Change(_changed(anonymous_id, device, with_fact),
                       _user_changed(resolver, user_id, user, new_user, anonymous_id, at,
                                     with_fact != device), {})  # fmt: skip
    proof = event.proof
    if isinstance(proof, Refusal):
        return proof
    if erased_at is not None:
        resolver.read_whole(anonymous_id)
    if erased:
        # An erased user's event: refused, but the boundary it draws is kept as the erased
        # user's placeholder's, as the erasure left those it saw (R16), so that other people's
        # sessions on the device end and begin where they would have.
        placeholder = erasure.placeholder_of(resolver, secrets, user_id)
        fact = SessionFact(at, event.event_id, event.kind, placeholder)
        refusal = Refusal("erased", "the user was erased after this event's time (R16)")
        # Chats it puts into the erased session go (`erasure.scrub`). The e-mail it verifies
        # gets the marker the erasure gives the e-mails she verified, and its leads before the
        # erasure are matched into it, as they would have been (R7).
        devices = {anonymous_id: device.with_session(fact)}
        emails = {}
        markers: dict[str, ErasureMarker] = {}
        if proof is not None and proof.email is not None:
            assert erased_at is not None  # `erased`
            devices, emails, markers = erasure.erased_claim(
                resolver, secrets, devices, proof.email, erased_at, at
            )
        devices = {a: d for a, d in devices.items() if d != resolver.old_device(a)}
        return _Change(devices, {}, emails, refusal=refusal, erasures=markers)
    assert proof is not None  # a signup or login with a user_id has its proof checked
    fact = SessionFact(at, event.event_id, event.kind, user_id, proof.jti or "")
    tokens: dict[str, TokenUses | None] = {}
    if proof.jti:
        uses = resolver.old_token(proof.jti)
        tokens = _changed(proof.jti, uses, uses.with_use(at, event.event_id, anonymous_id))
    user = resolver.old_user(user_id)
    if user.erased is None and erased_at is not None:
        user = User(erased=erased_at)  # the user comes back after its erasure: a new profile
    with_fact = device.with_session(fact)
    new_user = _with_device(user, anonymous_id, at, with_fact != device)
    if event.name:
        new_user = new_user.with_name(at, event.event_id, event.name)
    emails = {}
    claimed = proof.email or event.email
    if claimed is not None:
        claim = EmailClaim(at, event.event_id, claimed, verified=proof.email == claimed)
        new_user = new_user.with_email(claim)
        entry = resolver.old_email(claimed)
        emails = _changed(claimed, entry, entry.with_claim(user_id, claim))
    return _Change(
        _changed(anonymous_id, device, device.with_session(fact)),
        _user_changed(resolver, user_id, user, new_user, anonymous_id, at, with_fact != device),
        emails,
        tokens,
    )


def _changed(key: str, old: object, new: object) -> dict:
    return {} if old == new else {key: new}


def _user_changed(
    resolver: _Resolver,
    user_id: str,
    user: User,
    new: User,
    anonymous_id: str,
    at: int,
    fresh: bool,
) -> dict[str, User | None]:
    """The user's record, if a new session fact at `at` on the device changes it.

    Read with her retired devices live (`old_user`), it may list the device while her stored
    record has it retired: a fact there still changes the record (the device comes back).
    """
    if new != user:
        return {user_id: new}
    stored = resolver.view.users.get(user_id)
    if stored is not None and stored.retired is not None:
        stored = resolver.filled_user(user_id)
    if (
        stored is not None
        and stored is not user
        and _with_device(stored, anonymous_id, at, fresh) != stored
    ):
        return {user_id: new}
    return {}


def _with_device(user: User, anonymous_id: str, at: int, fresh: bool) -> User:
    """The user with her session fact at `at` on the device.

    A replayed fact (not `fresh`) brings no retired device back (R12).
    """
    retired = user.retired
    if not fresh and retired is not None and retired.has(anonymous_id):
        return user
    return user.with_device(anonymous_id, at)


def _moved_segments(
    old: Mapping[str, Timeline], new: Mapping[str, Timeline]
) -> dict[str, tuple[set[Segment], set[Segment]]]:
    """Per device: the segments of `old` that `new` no longer has, and those it has anew.

    A profile is a function of its segments and their timeline's `first_activity` (whether a
    device's first visitor exists): a device whose first activity moved counts all of them.
    """
    moved: dict[str, tuple[set[Segment], set[Segment]]] = {}
    for anonymous_id, after in new.items():
        before = old[anonymous_id]
        if before.first_activity != after.first_activity:
            moved[anonymous_id] = set(before.segments), set(after.segments)
        elif before.segments != after.segments:
            was, now = set(before.segments), set(after.segments)
            moved[anonymous_id] = was - now, now - was
    return moved


# Rounds of loading that a device's timeline needs at most: the device, its users, a shared
# user's other devices, their tokens; nothing deeper (`Timelines` callers load in rounds).
TIMELINE_ROUNDS = 8


class Timelines:
    """Devices' timelines from the records a view holds, derived as `apply` derives them.

    The links the shared-identifier guard (R4) and the token rule (R17) refused link nothing.
    A record the view lacks is taken as absent and named by `missing`: load it and derive
    again with a new `Timelines` over the larger view.
    """

    def __init__(self, view: View, config: CoreConfig) -> None:
        self._resolver = _Resolver(view, config, full=True)

    def of(self, anonymous_id: str) -> Timeline:
        """The device's timeline, refusals applied."""
        return self._resolver.timeline(anonymous_id, new=False)

    def refusals(self, anonymous_id: str) -> dict[str, str]:
        """The device's links refused: event_id -> reason (R17 before R4, as `apply` decides)."""
        resolver = self._resolver
        reasons: dict[str, str] = {}
        for event_id in resolver.refusals(anonymous_id, new=False):
            reasons[event_id] = "shared_identifier"
        for event_id in resolver.reused(anonymous_id, new=False):
            reasons[event_id] = "token_reused"
        device = resolver.old_device(anonymous_id)
        own = {f.event_id for f in device.sessions}
        return {event_id: reason for event_id, reason in reasons.items() if event_id in own}

    def device(self, anonymous_id: str) -> Device:
        """The device with every fact, once its chunk records are loaded (`missing` asks)."""
        return self._resolver.old_device(anonymous_id)

    def missing(self) -> NeedMore:
        """The records the timelines derived so far needed and the view lacks."""
        return self._resolver.need()


class _Resolver:
    """Reads the view (recording what is missing) and derives timelines and profiles."""

    def __init__(self, view: View, config: CoreConfig, *, full: bool = False) -> None:
        self.view = view
        self.config = config
        # Read folded devices whole (an erasure's decision): see `old_device`.
        self.full = full
        self.unfolded: set[str] = set()  # folded devices this decision read whole
        self.refold: set[str] = set()  # ... of which this decision may change the settled part
        self._whole: dict[str, Device] = {}
        self.missing: dict[str, set[str]] = {}
        self.reads: set[tuple[str, str]] = set()
        self.new_devices: dict[str, Device] = {}
        self.new_users: dict[str, User | None] = {}
        self.new_emails: dict[str, EmailEntry | None] = {}
        self.new_tokens: dict[str, TokenUses | None] = {}
        self._timelines: dict[tuple[str, bool], Timeline] = {}
        self._whole_users: dict[str, User] = {}  # users read with their retired devices listed
        self._filled: dict[str, User] = {}  # users read retired, with their summary
        self.user_views: dict[str, UserView] = {}
        # (user_id, new) -> the new records they were worked out from, and the verdicts.
        self._refused: dict[tuple[str, bool], tuple[Mapping, Mapping, frozenset[str]]] = {}

    # -- reading, old (as stored) and new (with this event's facts)

    def _get(self, kind: str, table: Mapping, key: str, default: object) -> object:
        self.reads.add((kind, key))
        if key not in table:
            self.missing.setdefault(kind, set()).add(key)
            return default
        return table[key] or default

    def old_device(self, anonymous_id: str) -> Device:
        """The stored device: whole when its chunk records are in the view, else its record.

        Chunk records are in the view only once some decision asked for them (`unfold`), so a
        decision sees a device either whole or folded, the same way every time it is made.
        """
        stored: Device = self._get("devices", self.view.devices, anonymous_id, _NO_DEVICE)  # type: ignore[assignment]
        if stored.carry is None:
            return stored
        whole = self._whole.get(anonymous_id)
        if whole is not None:
            return whole
        chunks = self.view.chunks
        # Chunks are asked for all at once: the last one absent (the common case) says enough.
        if chunk_ident(anonymous_id, stored.carry.chunks - 1) in chunks:
            idents = chunk_idents(anonymous_id, stored)
            if all(ident in chunks for ident in idents):
                self.reads.update(("chunks", ident) for ident in idents)
                whole = stored.unfolded(_device_chunk(chunks[ident]) for ident in idents)
                self._whole[anonymous_id] = whole
                self.unfolded.add(anonymous_id)
                return whole
        if self.full:
            self.unfold(anonymous_id)
        return stored

    def unfold(self, anonymous_id: str) -> None:
        """Ask for the device's chunk records: the decision needs its whole history."""
        chunks = self.view.chunks
        for ident in chunk_idents(anonymous_id, self.view.devices.get(anonymous_id)):
            if ident not in chunks:
                self.missing.setdefault("chunks", set()).add(ident)

    def read_whole(self, anonymous_id: str) -> None:
        """Read this and every other folded device whole (an erasure is involved, R16).

        Every device read whole is folded again after the decision.
        """
        self.full = True
        self.unfold(anonymous_id)

    def settled(self, anonymous_id: str, at: int | None, *, reading: bool = False) -> bool:
        """Whether a fact at `at` (None: unknown, the earliest) lies behind the device's carry.

        If it does, the device's chunk records are asked for (unless loaded): the decision is
        made on the whole device. Unless only `reading` them (a profile that lists its settled
        segments), the change may reach behind the carry: the device is folded again after it.
        """
        stored = self.view.devices.get(anonymous_id)
        if stored is None or stored.carry is None:  # not folded, or not loaded (asked for then)
            if stored is None:
                self.old_device(anonymous_id)
            return False
        if at is not None and not stored.settled_before(at):
            return False
        self.unfold(anonymous_id)
        if not reading:
            self.refold.add(anonymous_id)
        return True

    def old_user(self, user_id: str) -> User:
        """The stored user: with her retired devices listed live once they are all in the view.

        They are in the view only once some decision asked for them (`unretire`, or an erasure:
        `full`), so a decision sees her retired or whole the same way every time it is made.
        Retired, she is read with her summary (`Retired`, its records asked for) and with the
        retired devices among those loaded.
        """
        stored: User = self._get("users", self.view.users, user_id, User())  # type: ignore[assignment]
        retired = stored.retired
        if retired is None:
            return stored
        whole = self._whole_users.get(user_id)
        if whole is not None:
            return whole
        if self.full:
            self.unretire(user_id)
        every = self.retired_ids(user_id, stored, asking=False)
        devices = self.view.devices
        if every is not None and all(anonymous_id in devices for anonymous_id in every):
            whole = replace(stored, devices=tuple(sorted({*stored.devices, *every})),
                            retired=None)  # fmt: skip
            self._whole_users[user_id] = whole
            return whole
        return self.filled_user(user_id)

    def filled_user(self, user_id: str) -> User:
        """The stored user, retired devices retired, with her summary (its records asked for)."""
        filled = self._filled.get(user_id)
        if filled is None:
            stored: User = self._get("users", self.view.users, user_id, User())  # type: ignore[assignment]
            if stored.retired is None:
                return stored
            filled = replace(stored, retired=self._summary(user_id, stored.retired))
            self._filled[user_id] = filled
        return filled

    def _summary(self, user_id: str, retired: Retired) -> Retired:
        """Her stored summary header with the summary records and the retired devices loaded."""
        if retired.inline:
            return retired
        chunks = self.view.chunks
        part_ident, devices_ident = summary_idents(user_id)
        part = self._get("chunks", chunks, part_ident, None)
        listed = self._get("chunks", chunks, devices_ident, None)
        flagged = [(anonymous_id, counted) for anonymous_id, device in self.view.devices.items()
                   if device is not None
                   and (counted := device.retired_for(user_id)) is not None]  # fmt: skip
        return replace(
            retired,
            ids=tuple(sorted(a for a, _ in flagged)),
            uncounted=tuple(sorted(a for a, counted in flagged if not counted)),
            part=part.part if isinstance(part, RetiredChunk) and part.part else SettledPart(),
            devices=listed.devices if isinstance(listed, RetiredChunk) else (),
            loaded=True,
        )

    def retired_ids(
        self, user_id: str, stored: User, *, asking: bool = True
    ) -> tuple[str, ...] | None:
        """Every device the user retired, once her id chunk records are loaded (None: not yet).

        `asking` asks for those the view lacks.
        """
        retired = stored.retired
        if retired is None:
            return ()
        if retired.inline:
            return retired.ids
        chunks = self.view.chunks
        idents = retired_idents(user_id, retired)
        if not all(ident in chunks for ident in idents):
            if asking:
                for ident in idents:
                    if ident not in chunks:
                        self.missing.setdefault("chunks", set()).add(ident)
            return None
        self.reads.update(("chunks", ident) for ident in idents)
        every: list[str] = []
        for ident in idents:
            chunk = chunks[ident]
            every += chunk.ids if isinstance(chunk, RetiredChunk) else ()
        return tuple(every)

    def unretire(self, user_id: str) -> None:
        """Ask for the user's retired devices: the decision needs all her devices live (R15)."""
        stored = self.view.users.get(user_id)
        if stored is None or stored.retired is None:
            return
        every = self.retired_ids(user_id, stored)
        for anonymous_id in every or ():
            if anonymous_id not in self.view.devices:
                self.missing.setdefault("devices", set()).add(anonymous_id)

    def old_email(self, email: str) -> EmailEntry:
        return self._get("emails", self.view.emails, email, EmailEntry())  # type: ignore[return-value]

    def old_token(self, jti: str) -> TokenUses:
        return self._get("tokens", self.view.tokens, jti, TokenUses())  # type: ignore[return-value]

    def erasure(self, digest: str) -> ErasureMarker | None:
        return self._get("erasures", self.view.erasures, digest, None)  # type: ignore[return-value]

    def token(self, jti: str, *, new: bool) -> TokenUses:
        if new and jti in self.new_tokens:
            return self.new_tokens[jti] or TokenUses()
        return self.old_token(jti)

    def reused(self, anonymous_id: str, *, new: bool) -> frozenset[str]:
        """The device's links by a token whose first use was on another device (R17)."""
        return frozenset(
            fact.event_id
            for fact in self.device(anonymous_id, new=new).sessions
            if fact.jti and self.token(fact.jti, new=new).first_device not in (None, anonymous_id)
        )

    def published(self, contact_id: str) -> Profile | None:
        return self._get("contacts", self.view.contacts, contact_id, None)  # type: ignore[return-value]

    def want_published(self, contact_ids: Iterable[str]) -> None:
        """Ask for these contacts now if they are missing, without depending on them yet.

        Their profiles will be compared with what was published; asking early, together with
        the other missing records, spares the caller a round of loading and deciding again.
        """
        contacts = self.view.contacts
        for contact_id in contact_ids:
            if contact_id not in contacts:
                self.missing.setdefault("contacts", set()).add(contact_id)

    def device(self, anonymous_id: str, *, new: bool) -> Device:
        if new and anonymous_id in self.new_devices:
            return self.new_devices[anonymous_id]
        return self.old_device(anonymous_id)

    def user(self, user_id: str, *, new: bool = True) -> User:
        if new and user_id in self.new_users:
            return self.new_users[user_id] or User()
        return self.old_user(user_id)

    def refused(self, user_id: str, *, new: bool) -> frozenset[str]:
        """The user's links refused by the shared-identifier guard (R4).

        Asked once per device the user linked on; worked out once per decision (and again
        when the decision's new records change: they are new objects then, never mutated).
        """
        if erasure.is_placeholder(user_id):
            return frozenset()  # an erased user's boundaries are kept as they were
        user = self.user(user_id, new=new)
        if _guarded(user) <= self.config.shared_device_limit:
            return frozenset()  # too few devices for any refusal: spare the loads
        memo = self._refused.get((user_id, new))
        if memo is not None and not self.missing:
            devices, users, verdicts = memo
            if not new or (devices is self.new_devices and users is self.new_users):
                return verdicts
        verdicts = self._verdicts(user_id, user, new=new)
        self._refused[user_id, new] = (self.new_devices, self.new_users, verdicts)
        return verdicts

    def _verdicts(self, user_id: str, user: User, *, new: bool) -> frozenset[str]:
        for anonymous_id in user.devices:  # the user's links behind a carry count too
            self.settled(anonymous_id, user.first_on(anonymous_id))
        links = [
            (fact.at, fact.event_id, anonymous_id)
            for anonymous_id in user.devices
            for fact in self.device(anonymous_id, new=new).sessions
            if fact.user_id == user_id and fact.kind != "logout"
        ]
        retired = user.retired
        if retired is None:
            return refused_links(links, limit=self.config.shared_device_limit,
                                 window_ms=self.config.shared_window_ms)  # fmt: skip
        # Her links before the retired point were all accepted (`_retire`): the pass starts
        # where the guard stood there.
        return refused_links([link for link in links if link[0] >= retired.point],
                             limit=self.config.shared_device_limit,
                             window_ms=self.config.shared_window_ms,
                             accepted=retired.accepted)  # fmt: skip

    def email(self, email: str, *, new: bool) -> EmailEntry:
        if new and email in self.new_emails:
            return self.new_emails[email] or EmailEntry()
        return self.old_email(email)

    def need(self) -> NeedMore:
        get = self.missing.get
        return NeedMore(
            devices=tuple(sorted(get("devices", ()))),
            contacts=tuple(sorted(get("contacts", ()))),
            users=tuple(sorted(get("users", ()))),
            emails=tuple(sorted(get("emails", ()))),
            tokens=tuple(sorted(get("tokens", ()))),
            erasures=tuple(sorted(get("erasures", ()))),
            chunks=tuple(sorted(get("chunks", ()))),
        )

    # -- deriving

    def forget_timelines(self) -> None:
        """Derive timelines again: the new records changed (an erasure decides in steps)."""
        self._timelines.clear()

    def timeline(self, anonymous_id: str, *, new: bool) -> Timeline:
        # Derived once per decision: the view does not change while the resolver decides.
        memo = self._timelines.get((anonymous_id, new))
        if memo is None:
            memo = self._timelines[anonymous_id, new] = self._derive(anonymous_id, new=new)
        return memo

    def _derive(self, anonymous_id: str, *, new: bool) -> Timeline:
        device = self.device(anonymous_id, new=new)
        return self.derive_device(anonymous_id, device, self.refusals(anonymous_id, new=new),
                                  new=new)  # fmt: skip

    def derive_device(
        self, anonymous_id: str, device: Device, refused: frozenset[str], *, new: bool
    ) -> Timeline:
        """The timeline of this record of the device, with these links refused."""
        verified = {}
        carried = device.carry.chats if device.carry is not None else ()
        for chat in (*carried, *device.chats) if carried else device.chats:
            if chat.email is not None and erasure.is_placeholder(chat.email):
                # A lead e-mail-matched into an erased user (R16): as her verification matched it.
                verified[chat.email] = {chat.email: erasure.matched_at(chat)}
            elif chat.email is not None:
                entry = self.email(chat.email, new=new)
                if entry.admits(anonymous_id):  # one of the e-mail's leads it may match (R15)
                    verified[chat.email] = entry.verified
        return derive(self.view.workspace_id, anonymous_id, device, verified, refused)

    def refusals(self, anonymous_id: str, *, new: bool) -> frozenset[str]:
        """The links among the device's session facts that link nothing (R4, R17).

        A link before its user's retired point has its verdict on the device (`Device.refused`);
        one of a user read with all her devices live has it worked out again.
        """
        device = self.device(anonymous_id, new=new)
        linked = {f.user_id for f in device.sessions if f.kind != "logout"}
        refused = frozenset().union(*(self.refused(u, new=new) for u in sorted(linked)))
        if device.refused:
            settled = {u for u in linked if self.user(u, new=new).retired is not None}
            refused |= {f.event_id for f in device.sessions
                        if f.event_id in device.refused and f.user_id in settled}  # fmt: skip
        return refused | self.reused(anonymous_id, new=new)

    def user_view(self, user_id: str) -> UserView:
        user = self.user(user_id)
        # The user's profile is derived from every segment of hers. A folded device's settled
        # segments of hers are summarised in her record (`User.past`, written when the device
        # folds); a device folded without them (state format 2), or a settled lead of one of her
        # e-mails (it may match or be flagged), has the device read whole (R15).
        for claim in user.emails:
            for at, _, anonymous_id in self.email(claim.email, new=True).leads:
                self.settled(anonymous_id, at, reading=True)
        record = self.view.users.get(user_id)
        if user_id in self._whole_users and record is not None and record.retired is not None:
            # Read with her retired devices live: one folded since it retired keeps no settled
            # part of hers (`_Parts`), so it is read whole and folded again, which writes it.
            for anonymous_id in self.retired_ids(user_id, record) or ():
                stored = self.view.devices.get(anonymous_id)
                if stored is not None and stored.carry is not None:
                    if self.settled(anonymous_id, None, reading=True):
                        self.refold.add(anonymous_id)
        for anonymous_id in user.devices:
            stored = self.view.devices.get(anonymous_id)  # (absent: asked for below)
            if stored is None or stored.carry is None or stored.carry.parts:
                continue
            if self.settled(anonymous_id, user.first_on(anonymous_id), reading=True):
                self.refold.add(anonymous_id)  # folded again: its users' parts are written
        timelines = {a: self.timeline(a, new=True) for a in user.devices
                     if self._contributes(user_id, a)}  # fmt: skip
        settled = {a: user.past[a] for a, t in timelines.items()
                   if t.settled is not None and a in user.past}  # fmt: skip
        emails = {c.email: self.email(c.email, new=True) for c in user.emails}
        leads: list[Lead] = []
        for entry in emails.values():
            for anonymous_id in entry.lead_devices:
                timeline = timelines.get(anonymous_id) or self.timeline(anonymous_id, new=True)
                leads += [Lead(s, timeline) for s in timeline.segments if s.kind == "visitor"]
        # A part keeps its most recent conversations only: one it dropped may be listed again
        # elsewhere (the same conversation_id in another segment), which only the whole device
        # tells. A part that dropped some is read whole while her other segments chat.
        cut = [a for a, p in settled.items() if p.conversations_total > len(p.conversations)]
        if cut:
            live = [seg for t in timelines.values() for seg in t.segments]
            live += [lead.segment for lead in leads]
            if len(settled) > 1 or any(c.conversation_id for g in live for c in g.chats):
                for anonymous_id in cut:
                    self.settled(anonymous_id, user.first_on(anonymous_id), reading=True)
        retired = user.retired
        if retired is not None:
            self._check_retired(user_id, retired)
            if retired.part.conversations_total > len(retired.part.conversations):
                # A summary that dropped conversations cannot tell whether a live one is one of
                # them (a limit lowered since it was kept): decided with all her devices live.
                live = [seg for t in timelines.values() for seg in t.segments]
                live += [lead.segment for lead in leads]
                if any(c.conversation_id for g in live for c in g.chats):
                    self.unretire(user_id)
        refused = self.refused(user_id, new=True)
        view = UserView(user_id, user, timelines, tuple(leads), emails, refused, settled, retired)
        self.user_views[user_id] = view
        return view

    def _contributes(self, user_id: str, anonymous_id: str) -> bool:
        """Whether the device may hold a segment of hers.

        Not when the guard (R4) or the token rule (R17) refused every link of hers there.
        """
        device = self.device(anonymous_id, new=True)
        if device.carry is not None:
            return True  # her segment may come from behind the carry
        mine = [f.event_id for f in device.sessions if f.user_id == user_id and f.kind != "logout"]
        if not mine:
            return False  # only logouts of hers: they end sessions, they begin none of hers
        refused = self.refusals(anonymous_id, new=True)
        return not all(event_id in refused for event_id in mine)

    def _check_retired(self, user_id: str, retired: Retired) -> None:
        """Decide with all her devices live if a change moves what a retired device gave her.

        Her summary holds what the segments of her retired devices gave her profile when they
        were retired; a later event can only add to such a device after them (a page view
        changes nothing, a chat lands in a later visitor, a login brings the device back live)
        unless it lands before the point: then the summary no longer holds.
        """
        workspace_id = self.view.workspace_id
        for (anonymous_id, new), after in list(self._timelines.items()):
            before = self._timelines.get((anonymous_id, False))
            if not new or before is None or not retired.has(anonymous_id):
                continue
            if _summarised(workspace_id, user_id, retired, before) != _summarised(
                workspace_id, user_id, retired, after
            ):
                self.unretire(user_id)
                return

    def _retire(self, user_id: str) -> None:
        """Retire the devices of hers that fell quiet a margin before her latest link (R15).

        Such a device is kept in her record's summary (`facts.Retired`) instead of being listed
        live: her profile, her guard verdicts (R4) and her other devices' decisions no longer
        read it. Only an unfolded device whose facts all lie before the point and that no e-mail
        of hers lists as a lead device is retired, and not one that would make the summary drop
        conversations (one listed live could be one of them). The guard's verdicts before the
        point settle with it: a refused link's on its device, the accepted window's in the summary.
        """
        margin = self.config.retire_margin_ms
        if margin is None or erasure.is_placeholder(user_id):
            return
        stored = self.view.users.get(user_id)
        user = self.user(user_id)
        if user_id in self.new_users:
            if self.new_users[user_id] is None:
                return  # erased
        elif user_id in self._whole_users:
            # Read with her retired devices live, because a change moved what one of them gave
            # her: her summary no longer holds and is written anew (or her devices live).
            self.new_users[user_id] = user
        if self.full:
            return
        links = [(f.at, f.event_id, a) for a in user.devices
                 for f in self.device(a, new=True).sessions
                 if f.user_id == user_id and f.kind != "logout"]  # fmt: skip
        if not links:
            return
        point = max(at for at, _, _ in links) - margin
        old = user.retired
        if old is not None and point <= old.point:
            return
        config = self.config
        size, fold_margin = config.fold_sessions, config.fold_margin_ms
        leads = {d for c in user.emails for d in self.email(c.email, new=True).lead_devices}
        quiet = [
            anonymous_id
            for anonymous_id in user.devices
            if (device := self.device(anonymous_id, new=True)).carry is None
            and anonymous_id not in leads
            and _latest_fact(device) < point
            and not settle.needs_folding(device, size, fold_margin)
        ]
        if len(quiet) < config.retire_batch and user_id not in self._whole_users:
            return  # too few can retire: they wait for a batch (her other events re-check)
        refused = self.refused(user_id, new=True)
        limit = config.profile_list_limit
        summary = old or Retired(point)
        conversations = {c for c, _, _ in summary.part.conversations}
        cut = summary.part.conversations_total > len(conversations)
        workspace_id = self.view.workspace_id
        retiring: list[str] = []
        segments: list[Lead] = []
        for anonymous_id in quiet:
            timeline = self.timeline(anonymous_id, new=True)
            own = [Lead(s, timeline) for s in timeline.segments
                   if not retired_segment(summary, anonymous_id, s)]  # fmt: skip
            found = user_part(workspace_id, user_id, own)
            more = conversations | set(found.conversations)
            if len(more) > len(conversations) and (cut or len(more) > limit):
                continue
            conversations = more
            retiring.append(anonymous_id)
            segments += own
        if not retiring:
            return
        if len(retiring) < config.retire_batch and user_id not in self._whole_users:
            return  # they wait for a batch (read whole, she retires what she can: `old_user`)
        # The guard's verdicts before the point settle: refusals on their devices, the
        # accepted links of the window before it in the summary.
        since = summary.point if old is not None else None
        flagged = summary.flagged
        for anonymous_id in user.devices:
            device = self.device(anonymous_id, new=True)
            mine = {f.event_id: f.at for f in device.sessions
                    if f.user_id == user_id and f.kind != "logout"}  # fmt: skip
            marks = {e for e, at in mine.items() if at < point and e in refused}
            flagged = flagged or bool(marks)
            if since is None:  # worked out anew: her earlier marks may no longer hold
                marked = (device.refused - mine.keys()) | marks
            else:
                marked = device.refused | marks
            if marked != device.refused:
                self.new_devices[anonymous_id] = replace(device, refused=frozenset(marked))
        # Refused: by the verdicts worked out here, or before the earlier point (on the device).
        settled = {e for a in user.devices for e in self.device(a, new=True).refused}
        guarded = refused | settled if old is not None else refused
        accepted = [(at, d) for at, e, d in links if at < point and e not in guarded]
        accepted += summary.accepted
        gone = set(retiring)
        summary = replace(
            with_retired(summary, user_part(workspace_id, user_id, segments), retiring,
                         limit=limit),
            point=point,
            returned={d: k for d, k in summary.returned.items() if d not in gone},
            accepted=accepted_window(accepted, before=point, window_ms=config.shared_window_ms),
            flagged=flagged,
        )  # fmt: skip
        retired_user = replace(
            user,
            devices=tuple(d for d in user.devices if d not in gone),
            since={d: at for d, at in user.since.items() if d not in gone},
            retired=summary,
        )
        if retired_user != stored or user_id in self.new_users:
            self.new_users[user_id] = retired_user
        self._refused.pop((user_id, True), None)

    # -- consequences of a change

    def consequences(
        self,
        event: CheckedPageView | CheckedChat | CheckedSession,
        anonymous_id: str,
        change: _Change,
    ) -> Transition | NeedMore:
        """Re-derive what the change can affect; emit what differs from what was published."""

        def outcome(timelines: Mapping[str, Timeline]) -> Outcome:
            return self._outcome(event, timelines[anonymous_id])

        return self.rederive(change, {anonymous_id}, outcome)

    def rederive(
        self,
        change: _Change,
        devices: set[str],
        outcome: Callable[[Mapping[str, Timeline]], Outcome],
    ) -> Transition | NeedMore:
        """Re-derive what a change of these devices' (and other) records can affect.

        Profiles, merges and shutdowns that differ from what was published are emitted; those
        of an erased user's placeholder (R16) never are: it links to no profile.
        """
        placeholder = erasure.is_placeholder
        change = erasure.scrub(self, change)
        scope = set(devices)
        touched_users = set(change.users)
        # A link can move the guard's verdicts (R4) on the user's other devices, even when the
        # user's record does not change (a second login from a device it already has).
        # Only the users whose own link facts changed: a user's verdicts depend on its links.
        moved_links = [
            fact
            for anonymous_id, device in change.devices.items()
            for fact in set(device.sessions) ^ set(self.device(anonymous_id, new=False).sessions)
            if fact.kind != "logout" and not placeholder(fact.user_id)
        ]
        linkers = {fact.user_id for fact in moved_links}
        earliest: dict[str, int] = {}  # per user: her earliest link that moved
        for fact in moved_links:
            earliest[fact.user_id] = min(fact.at, earliest.get(fact.user_id, fact.at))
        for fact in moved_links:
            # A link before a user's retired point moves verdicts the guard settled there (R4):
            # decided with all her devices live.
            retired = self.user(fact.user_id, new=False).retired
            if retired is not None and fact.at < retired.point:
                self.unretire(fact.user_id)
        for user_id in sorted(linkers):
            for new in (False, True):
                user = self.user(user_id, new=new)
                if _guarded(user) > self.config.shared_device_limit:
                    # The guard decides her links in time order: only her links from the
                    # earliest that moved on can change (R15: a new latest link re-derives no
                    # other device).
                    since = earliest[user_id]
                    scope.update(
                        a for a in user.devices
                        if any(f.user_id == user_id and f.at >= since
                               for f in self.device(a, new=new).sessions)
                    )  # fmt: skip
        for jti in change.tokens:
            # The token's first use decides which of its devices it links (R17).
            token, before = self.token(jti, new=True), self.token(jti, new=False)
            scope.update(token.devices(), before.devices())
            if token.first_device != before.first_device:
                for at, _, anonymous_id in (*token.uses, *before.uses):
                    self.settled(anonymous_id, at)
        for email in change.emails:
            entry, old = self.email(email, new=True), self.email(email, new=False)
            for at, _, anonymous_id in (*entry.leads, *old.leads):
                self.settled(anonymous_id, at)  # its settled chats may match or be flagged
            scope.update(entry.lead_devices, old.lead_devices)
            if entry.leads != old.leads or entry.verified != old.verified:
                # Which leads its users see, or whether it is theirs alone (R7): all of them.
                touched_users.update(entry.verified, entry.unverified, old.verified, old.unverified)
            else:  # a claim added or removed: that claimant's profile only (R15)
                touched_users.update(set(entry.unverified) ^ set(old.unverified))
        old_timelines = {a: self.timeline(a, new=False) for a in sorted(scope)}
        new_timelines = {a: self.timeline(a, new=True) for a in sorted(scope)}
        if self.missing:
            # Timelines derived without a record they depend on (a token's uses, another
            # device of a shared user) are not to be compared, nor kept: ask for it first.
            return self.need()
        # A refused link moves no segment, yet flags its user (R4): such a user is touched.
        flagged = {u for u in sorted(linkers)
                   if self.refused(u, new=False) != self.refused(u, new=True)}  # fmt: skip
        if self.missing:
            return self.need()
        if (
            not (change.users or change.emails or change.tokens or flagged)
            and new_timelines == old_timelines
        ):
            # The new facts move no segment of any device they can affect and touch no user
            # or e-mail record (a repeated login of the user already linked there, say):
            # every profile, merge and shutdown is derived from the same inputs as before, so
            # nothing differs from what was published. The facts are recorded all the same.
            return Transition(
                outcome(new_timelines),
                devices=self.new_devices,
                reads=frozenset(self.reads),
            )
        # Only the segments that differ can change a profile (R15: a device's thousandth session
        # re-derives the contacts of that session, not of the 999 before it).
        moved = _moved_segments(old_timelines, new_timelines)
        gone = {s for was, _ in moved.values() for s in was}
        came = {s for _, now in moved.values() for s in now}
        for segment in (*gone, *came):
            touched_users |= {segment.user_id} if segment.user_id else set()
            touched_users |= {segment.merge.user_id} if segment.merge else set()
        # A lead's profile also depends on the e-mail records of its chats: derived again when
        # one of them changed, though its segment did not move.
        refreshed: set[Segment] = set()
        if change.emails:
            refreshed = {s for t in new_timelines.values() for s in t.segments
                         if any(c.email in change.emails for c in s.chats)}  # fmt: skip
        touched_users |= flagged
        # A user's profile also depends on the leads of its e-mails (duplicates, e-mail
        # matches): a moved segment of one of an e-mail's lead devices touches its users.
        for device_id, (was, now) in moved.items():
            for chat in (c for segment in (*was, *now) for c in segment.chats):
                if chat.email is not None and not placeholder(chat.email):
                    for new in (False, True):
                        entry = self.email(chat.email, new=new)
                        if entry.admits(device_id):
                            touched_users.update(entry.verified, entry.unverified)
        touched_users = {u for u in touched_users if not placeholder(u)}
        workspace_id = self.view.workspace_id
        visitors = [(s, t) for t in new_timelines.values() for s in t.visitors()
                    if s in came or s in refreshed]  # fmt: skip
        vanished = [s for t in old_timelines.values() for s in t.visitors() if s in gone]
        self.want_published([s.contact_id for s, _ in visitors] + [s.contact_id for s in vanished])
        self.want_published(ids.user_contact_id(workspace_id, u) for u in touched_users)
        if self.missing:
            return self.need()
        user_views = {u: self.user_view(u) for u in sorted(touched_users)}
        if self.missing:
            return self.need()
        for user_id in sorted(user_views):
            self._retire(user_id)
        if self.missing:
            return self.need()

        profiles: dict[str, Profile | None] = {}
        for segment, timeline in visitors:
            if erasure.erased_segment(segment):
                continue  # merged into an erased user: removed (a tombstone below)
            lead = Lead(segment, timeline)
            emails = {c.email: self.email(c.email, new=True)
                      for c in segment.chats if c.email}  # fmt: skip
            profiles[segment.contact_id] = visitor_profile(
                self.view.workspace_id, lead, emails, limit=self.config.profile_list_limit
            )
        for segment in vanished:
            profiles.setdefault(segment.contact_id, None)  # vanished: a tombstone
        for user_view in user_views.values():
            profile = user_profile(self.view.workspace_id, user_view,
                                   limit=self.config.profile_list_limit)  # fmt: skip
            contact_id = ids.user_contact_id(self.view.workspace_id, user_view.user_id)
            # None: the user has no linked session (left): a late first use of its token
            # elsewhere (R17) took its only link; a published profile then gets a tombstone.
            profiles[contact_id] = profile
        published = {cid: self.published(cid) for cid in sorted(profiles)}
        if self.missing:
            return self.need()
        changed = {cid: p for cid, p in profiles.items() if p != published[cid]}

        emits = self._shutdowns(old_timelines, new_timelines)
        emits += self._merges(old_timelines, new_timelines, user_views)
        emits += [Emit(PROFILES, cid, changed[cid]) for cid in sorted(changed)]
        return Transition(
            outcome(new_timelines),
            devices=self.new_devices,
            users=self.new_users,
            emails=self.new_emails,
            tokens=self.new_tokens,
            contacts=changed,
            emits=tuple(emits),
            reads=frozenset(self.reads),
        )

    def _outcome(
        self, event: CheckedPageView | CheckedChat | CheckedSession, timeline: Timeline
    ) -> Applied | Refusal:
        """Applied, unless the guard refused the link (R4) or the logout ended no session."""
        if not isinstance(event, CheckedSession):
            return Applied()
        if event.kind == "logout":
            if event.event_id in timeline.ignored_logouts:
                return Refusal("not_logged_in", "that user is not logged in on this device then")
            return Applied()
        if event.event_id in self.reused(timeline.anonymous_id, new=True):
            return Refusal("token_reused", "this token's jti was first used on another device")
        assert isinstance(event.user_id, str)  # a refused user_id changes nothing
        if event.event_id in self.refused(event.user_id, new=True):
            limit = self.config.shared_device_limit
            detail = f"user_id linked from more than {limit} devices within the window"
            return Refusal("shared_identifier", detail)
        return Applied()

    def _shutdowns(self, old: Mapping[str, Timeline], new: Mapping[str, Timeline]) -> list[Emit]:
        """Sessions the change ended (R8, R10), including corrected ones.

        Usually that is the session this event's logout or login ended. A late event can also
        change an earlier shutdown: a logout read before the login it follows ended nobody's
        session when it was processed, and ends the user's once the login arrives. The event_id
        hashes the shutdown's content, so a correction is a new event and the same shutdown
        derived again keeps its id (R12).
        """
        emits = []
        for anonymous_id, timeline in new.items():
            before = set(old[anonymous_id].shutdowns)
            for s in timeline.shutdowns:
                if s in before or erasure.is_placeholder(s.user_id):
                    continue
                event_id = ids.output_event_id("shutdown", s.cause_event_id, anonymous_id,
                                               s.user_id or "", s.contact_id)  # fmt: skip
                emits.append(Emit(SHUTDOWN, anonymous_id, Shutdown(
                    event_id=event_id,
                    workspace_id=self.view.workspace_id,
                    anonymous_id=anonymous_id,
                    user_id=s.user_id,
                    contact_id=s.contact_id,
                    reason=s.reason,
                    cause_event_id=s.cause_event_id,
                    timestamp=from_epoch_ms(s.at),
                )))  # fmt: skip
        return emits

    def _merges(
        self,
        old: Mapping[str, Timeline],
        new: Mapping[str, Timeline],
        users: Mapping[str, UserView],
    ) -> list[Emit]:
        """One `identity.merged` per merge the change created (R6, R7)."""

        def merges(timelines: Mapping[str, Timeline]) -> dict[tuple[str, str, str], Merge]:
            return {
                (s.contact_id, s.merge.into_contact_id, s.merge.cause_event_id): s.merge
                for t in timelines.values() for s in t.visitors() if s.merge
            }  # fmt: skip

        before = merges(old)
        emits = []
        for (from_id, into_id, cause), merge in sorted(merges(new).items()):
            if (from_id, into_id, cause) in before or erasure.is_placeholder(merge.user_id):
                continue
            link = first_link(users[merge.user_id])
            created = merge.reason != "email_match" and link is not None and link[1] == cause
            emits.append(Emit(MERGED, into_id, Merged(
                event_id=ids.output_event_id("merged", from_id, into_id, cause),
                workspace_id=self.view.workspace_id,
                kind="converted" if created else "merged",
                from_contact_id=from_id,
                into_contact_id=into_id,
                user_id=merge.user_id,
                reason=merge.reason,
                cause_event_id=cause,
                timestamp=from_epoch_ms(merge.at),
            )))  # fmt: skip
        return emits
