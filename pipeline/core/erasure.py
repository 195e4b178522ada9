"""Erasure (R16): a user or a device forgotten, in a way that survives replay.

An erasure is itself a fact: a marker keyed by a keyed digest of the subject (HMAC with a
workspace secret, so guessing e-mails or ids cannot reverse it) holding the erasure time E.
Markers are looked up under the digest of every configured secret and written under the one
found, else the first, so adding or reordering secrets keeps them. Facts of the subject
stamped before E are removed, and the subject's events stamped before E are refused (`erased`)
when they arrive later, so processing the erasure before or after them ends in the same state.

Erasing a user removes its session facts on every device, but not the boundaries they drew: a
login or logout of the user becomes the same fact of a *placeholder* user (a keyed digest that
no real user_id can equal: it starts with a NUL character, which R3 refuses), so the device's
other sessions keep their start and end, their visitors keep their contact_ids and no one
else's profile changes. A placeholder links to no profile: its sessions, and the visitors
merged into it, are never published, and their chats are removed whenever a change puts them
there (`scrub`), with the user's e-mail claims and name. An e-mail only she verified gets a
marker of its own (`email_subject`): a lead typing it before her erasure is kept as content-free
chats matched into that marker (`matched_as`), whether it was read before or after.
Erasing a device removes its facts stamped before E and deletes its record unless facts after E
remain (the record then keeps E, so its later events need no other read); a device without a
record is looked up by its marker (`device_erased_at`), so nothing but a keyed digest names it.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import replace
from typing import TYPE_CHECKING

from pipeline.core import ids
from pipeline.core.facts import ChatFact, Device, EmailEntry, ErasureMarker, SessionFact, User
from pipeline.core.model import Applied, Emit, NeedMore, Transition, Unchanged
from pipeline.core.timeline import Segment
from schemas import Erased
from schemas.time import from_epoch_ms
from schemas.topics import ERASED

if TYPE_CHECKING:
    from pipeline.core.events import CheckedErasure
    from pipeline.core.rules import CoreConfig, _Change, _Resolver

# The key of a workspace's count of device erasures (not a digest: those are 32 hex digits). A
# worker that decides page views from the first activities it remembers drops them when the
# count changes (`pipeline.worker.known`).
DEVICE_ERASURES = "devices"
PLACEHOLDER = "\x00erased:"  # a placeholder user_id: R3 refuses control characters


def proof_of(secret: bytes, subject: str) -> str:
    """The proof an erase request carries: hex HMAC-SHA256(secret, "erase:" + subject)."""
    return hmac.new(secret, b"erase:" + subject.encode(), hashlib.sha256).hexdigest()


def erase_request(
    workspace_id: str,
    subject: str,
    secret: bytes,
    *,
    event_id: str,
    timestamp: str,
    reason: str | None = None,
) -> dict:
    """The message of a proven erase request, as `idp erase` produces it."""
    request = {"event_id": event_id, "workspace_id": workspace_id, "timestamp": timestamp,
               "subject": subject, "proof": proof_of(secret, subject)}  # fmt: skip
    return request if reason is None else {**request, "reason": reason}


def subject_digest(secrets: tuple[bytes, ...], subject: str) -> str:
    """The keyed digest that names an erased subject in the state (`user:<id>`, `device:<id>`).

    Keyed with the workspace's first secret: where a marker is written when none exists yet.
    """
    return subject_digests(secrets, subject)[0]


def subject_digests(secrets: tuple[bytes, ...], subject: str) -> tuple[str, ...]:
    """The subject's digest under every configured secret, in the order of the secrets.

    A marker is looked up under each of them, so that adding, reordering or rotating secrets
    keeps finding the markers written under an older one.
    """
    return tuple(
        hmac.new(s, b"erased:" + subject.encode(), hashlib.sha256).hexdigest()[:32] for s in secrets
    )


def find_marker(
    resolver: _Resolver, secrets: tuple[bytes, ...], subject: str
) -> tuple[str, ErasureMarker | None]:
    """(digest, marker) of the subject: the first digest holding a marker, else the first one.

    A new marker of a subject erased before is written where the old one was found, so the
    placeholder named after it (`PLACEHOLDER + digest`) stays the same on every device.
    """
    digests = subject_digests(secrets, subject)
    markers = [resolver.erasure(d) for d in digests]
    for digest, marker in zip(digests, markers, strict=True):
        if marker is not None:
            return digest, marker
    return digests[0], None


def placeholder_of(resolver: _Resolver, secrets: tuple[bytes, ...], user_id: str) -> str:
    """The user_id of the placeholder that keeps an erased user's session boundaries."""
    digest, _ = find_marker(resolver, secrets, f"user:{user_id}")
    return PLACEHOLDER + digest


def is_placeholder(user_id: str | None) -> bool:
    """Whether a session fact's user_id stands for an erased user."""
    return user_id is not None and user_id.startswith(PLACEHOLDER)


def email_subject(email: str) -> str:
    """The subject an e-mail's marker is kept under (never requested: an erased user's)."""
    return f"email:{email}"


def matched_as(digest: str, verified_at: int) -> str:
    """The e-mail of a lead's chat that carried an erased user's verified e-mail (R7, R16).

    The chat keeps only its time and event_id, and stands for a lead matched by the erased
    user's first verification (`verified_at`): the same segments as before the erasure, and
    the same visitor after it, on whichever side of the erasure it is read.
    """
    return f"{PLACEHOLDER}{digest}@{verified_at}"


def matched_at(chat: ChatFact) -> tuple[int, str]:
    """(time, event_id) of the verification a placeholder e-mail stands for (`_derive`).

    A chat `matched_as` an erased user's e-mail carries it; a lead's end that an older state
    kept (`PLACEHOLDER + digest`) was matched at its own time.
    """
    assert chat.email is not None
    _, sep, verified = chat.email.rpartition("@")
    return (int(verified), "") if sep else (chat.at, chat.event_id)


def erased_segment(segment: Segment) -> bool:
    """A session of an erased user, or a visitor that was merged into one."""
    if is_placeholder(segment.user_id):
        return True
    return segment.merge is not None and is_placeholder(segment.merge.user_id)


def lands_matched(resolver: _Resolver, anonymous_id: str, trial: Device, event_id: str) -> bool:
    """Whether chat `event_id` of `trial` lies where R7 merges it into an erased user.

    That is in a visitor merged into her, or in a session of hers: what `_match_leads` asks of
    the chats an erasure finds.
    """
    before = resolver.new_devices
    resolver.new_devices = {**before, anonymous_id: trial}
    resolver.forget_timelines()
    try:
        segments = resolver.timeline(anonymous_id, new=True).segments
        return any(erased_segment(s) for s in segments if any(c.event_id == event_id
                                                               for c in s.chats))  # fmt: skip
    finally:
        resolver.new_devices = before
        resolver.forget_timelines()


def user_erased_at(resolver: _Resolver, user_id: str) -> int | None:
    """When the user was last erased, if ever: from its record, or else from its marker.

    A user's record carries the time of its erasure when it came back after it; a user with
    no record may have been erased, which only the marker knows (read with the user's record).
    """
    user = resolver.old_user(user_id)
    if user != User() or resolver.view.users.get(user_id) is not None:
        return user.erased
    secrets = resolver.config.secrets[resolver.view.workspace_id]
    _, marker = find_marker(resolver, secrets, f"user:{user_id}")
    return marker.at if marker is not None else None


def device_erased_at(resolver: _Resolver, anonymous_id: str) -> int | None:
    """When the device was last erased, if ever: from its record, or else from its marker.

    An erasure deletes the device's record unless facts after it remain (the record then
    carries the erasure time), so a device with no record may have been erased, which only
    its marker knows; a device with a record needs no other read.
    """
    device = resolver.old_device(anonymous_id)
    if device != Device() or resolver.view.devices.get(anonymous_id) is not None:
        return device.erased
    secrets = resolver.config.secrets[resolver.view.workspace_id]
    _, marker = find_marker(resolver, secrets, f"device:{anonymous_id}")
    return marker.at if marker is not None else None


def _emptied(device: Device) -> bool:
    """A device record left with no fact: deleted, since its key names the device (R16)."""
    return not (device.sessions or device.chats or device.first_activity is not None)


def erase(
    request: CheckedErasure, resolver: _Resolver, config: CoreConfig
) -> Transition | NeedMore:
    """Decide an erase request (proven at the edge): remove the subject's facts before its time."""
    kind, ident, at = request.kind, request.ident, request.at
    subject = f"{kind}:{ident}"
    digest, marker = find_marker(resolver, config.secrets[request.workspace_id], subject)
    count = resolver.erasure(DEVICE_ERASURES) if kind == "device" else None
    if resolver.missing:
        return resolver.need()
    if marker is not None and marker.at >= at:
        # Erased at this time or later already: nothing before it is left, nor ever admitted.
        return Transition(Unchanged(), reads=frozenset(resolver.reads))
    if kind == "user":
        change = _erase_user(resolver, config.secrets[request.workspace_id], ident, digest, at)
    else:
        change = _erase_device(resolver, ident, at)
    if resolver.missing:
        return resolver.need()
    resolver.new_devices, resolver.new_users = change.devices, change.users
    resolver.new_emails, resolver.new_tokens = change.emails, change.tokens
    resolver.forget_timelines()
    result = resolver.rederive(change, set(change.devices), lambda _: Applied())
    if isinstance(result, NeedMore):
        return result
    removed = sorted(cid for cid, profile in result.contacts.items() if profile is None)
    # A record left with no fact is deleted: the erasure's marker keeps the time, under a
    # keyed digest (a device record holding only it would name the device in its key).
    devices: dict[str, Device | None] = {
        a: None if d is None or _emptied(d) else d for a, d in result.devices.items()
    }
    record = Erased(
        event_id=ids.output_event_id("erased", request.workspace_id, digest, request.event_id),
        workspace_id=request.workspace_id,
        subject=subject,
        contact_ids=removed,
        anonymous_ids=sorted(change.devices),
        cause_event_id=request.event_id,
        timestamp=from_epoch_ms(at),
    )
    return replace(
        result,
        devices=devices,
        erasures={**change.erasures, digest: ErasureMarker(at)}
        if kind == "user"
        else {
            digest: ErasureMarker(at),
            DEVICE_ERASURES: ErasureMarker(count.at + 1 if count else 1),
        },
        emits=(*result.emits, Emit(ERASED, ident, record)),
    )


def _erase_user(
    resolver: _Resolver, secrets: tuple[bytes, ...], user_id: str, digest: str, at: int
) -> _Change:
    """The records a user's erasure at `at` changes (see the module's docstring)."""
    from pipeline.core.rules import _Change

    placeholder = PLACEHOLDER + digest
    user = resolver.old_user(user_id)
    entries = {c.email: resolver.old_email(c.email) for c in user.emails}
    lead_devices = {d for entry in entries.values() for d in entry.lead_devices}
    old = {d: resolver.old_device(d) for d in sorted({*user.devices, *lead_devices})}
    if resolver.missing:
        return _Change({}, {}, {})
    # The user's facts before `at` become the placeholder's: the same boundaries, no one's.
    removed_sessions: set[tuple[str, str]] = set()
    devices: dict[str, Device] = {}
    for anonymous_id, device in old.items():
        sessions = []
        hers = set()
        for fact in device.sessions:
            if fact.user_id == user_id and fact.at < at:
                removed_sessions.add((anonymous_id, fact.event_id))
                hers.add(fact.event_id)
                fact = SessionFact(fact.at, fact.event_id, fact.kind, placeholder)
            sessions.append(fact)
        # Her links the guard refused are the placeholder's boundaries now, as the others are.
        devices[anonymous_id] = replace(device, sessions=tuple(sorted(sessions)),
                                        refused=device.refused - hers)  # fmt: skip
    claims = tuple(c for c in user.emails if c.at >= at)
    emails: dict[str, EmailEntry | None] = {}
    for email, entry in entries.items():
        kept = _without_user(entry, user_id)
        for claim in claims:
            if claim.email == email:
                kept = kept.with_claim(user_id, claim)
        emails[email] = kept
    resolver.new_devices = dict(devices)
    resolver.new_emails = {e: v or EmailEntry() for e, v in emails.items()}
    # The leads matched into her by an e-mail only she verified (R7) before the erasure keep
    # their segments, as content-free chats matched into an e-mail marker; their other chats,
    # and those of her sessions, go when the change is derived (`scrub`).
    markers: dict[str, ErasureMarker] = {}
    for email, entry in sorted(entries.items()):
        first = entry.verified.get(user_id)
        if first is None or first[0] >= at or set(entry.verified) != {user_id}:
            continue
        mark = _email_marker(resolver, secrets, email, at, first[0])
        if mark is None:
            continue
        email_digest, marker = mark
        if marker != resolver.erasure(email_digest):
            markers[email_digest] = marker
        devices, converted = _match_leads(
            resolver, devices, email, at, matched_as(email_digest, _first_verified(marker))
        )
        _forget_leads(resolver, emails, devices, converted)
    if resolver.missing:
        return _Change({}, {}, {})
    tokens = _forget_uses(resolver, old, removed_sessions)
    linked = tuple(a for a in user.devices
                   if any(f.user_id == user_id for f in devices[a].sessions))  # fmt: skip
    name = user.name if user.name is not None and user.name[0] >= at else None
    since = {a: t for a, t in user.since.items() if a in linked}
    new_user = User(linked, claims, name, at, since) if (linked or claims or name) else None
    changed_devices = {a: d for a, d in devices.items() if d != old[a]}
    return _Change(changed_devices, {user_id: new_user}, _changed_emails(resolver, emails),
                   tokens, erasures=markers)  # fmt: skip


def _first_verified(marker: ErasureMarker) -> int:
    assert marker.verified is not None  # an e-mail's marker always holds it
    return marker.verified


def _email_marker(
    resolver: _Resolver, secrets: tuple[bytes, ...], email: str, at: int, verified: int
) -> tuple[str, ErasureMarker] | None:
    """(digest, marker) of an erased user's e-mail, erased at `at` and verified at `verified`.

    The stored marker's times are kept where they are later (an erasure) or earlier (a first
    verification). None while the stored marker is not loaded.
    """
    digest, marker = find_marker(resolver, secrets, email_subject(email))
    if resolver.missing:
        return None
    if marker is not None:
        at = max(at, marker.at)
        verified = min(verified, marker.verified if marker.verified is not None else verified)
    return digest, ErasureMarker(at, verified)


def erased_claim(
    resolver: _Resolver,
    secrets: tuple[bytes, ...],
    devices: dict[str, Device],
    email: str,
    erased_at: int,
    at: int,
) -> tuple[dict[str, Device], dict[str, EmailEntry | None], dict[str, ErasureMarker]]:
    """What an erased user's refused login or signup verifying `email` at `at` records.

    Its marker (the erasure's time, the first verification) and the e-mail's leads before the
    erasure matched into it, as the erasure would have left them had it come after: a replay
    into empty state reads the erasure before her events and decides them this way.
    """
    mark = _email_marker(resolver, secrets, email, erased_at, at)
    if mark is None:
        return devices, {}, {}
    digest, marker = mark
    devices, converted = _match_leads(
        resolver, devices, email, marker.at, matched_as(digest, _first_verified(marker))
    )
    emails: dict[str, EmailEntry | None] = {}
    _forget_leads(resolver, emails, devices, converted)
    if resolver.missing:
        return devices, {}, {}
    stored = resolver.erasure(digest)
    return devices, _changed_emails(resolver, emails), {} if stored == marker else {digest: marker}


def _match_leads(
    resolver: _Resolver, devices: dict[str, Device], email: str, before: int, mark: str
) -> tuple[dict[str, Device], dict[str, set[ChatFact]]]:
    """The e-mail's lead chats before `before`, content-free and matched into `mark`.

    Only where the lead is then merged into the erased user (R7): a lead that had become
    someone else first (a login) keeps its chat as it was. Returns the devices and the chats
    replaced on each.
    """
    entry = resolver.email(email, new=True)
    if entry.verified:
        return devices, {}  # another user verified it too: no lead was matched into hers alone
    devices = dict(devices)
    swaps: dict[str, dict[ChatFact, ChatFact]] = {}
    for anonymous_id in entry.lead_devices:
        device = devices.get(anonymous_id) or resolver.device(anonymous_id, new=True)
        swap = {ChatFact(c.at, c.event_id, "", mark): c for c in device.chats
                if c.email == email and c.at < before}  # fmt: skip
        if swap:
            swaps[anonymous_id] = swap
            kept = tuple(c for c in device.chats if c not in swap.values())
            devices[anonymous_id] = replace(device, chats=tuple(sorted({*kept, *swap})))
    if resolver.missing or not swaps:
        return devices, {}
    resolver.new_devices = {**resolver.new_devices, **devices}
    resolver.forget_timelines()
    converted: dict[str, set[ChatFact]] = {}
    for anonymous_id, swap in swaps.items():
        timeline = resolver.timeline(anonymous_id, new=True)
        back = {c for s in timeline.segments if not erased_segment(s) for c in s.chats if c in swap}
        device = devices[anonymous_id]
        if back:  # not merged into her: as it was
            chats = {*(c for c in device.chats if c not in back), *(swap[c] for c in back)}
            devices[anonymous_id] = replace(device, chats=tuple(sorted(chats)))
        if set(swap) - back:
            converted[anonymous_id] = {swap[c] for c in swap if c not in back}
    resolver.new_devices = {**resolver.new_devices, **devices}
    resolver.forget_timelines()
    return devices, converted


def scrub(resolver: _Resolver, change: _Change) -> _Change:
    """The change without the chats that lie in an erased user's sessions or leads (R16).

    A chat read inside an erased user's session (or in a visitor merged into her), or put
    there by a boundary of hers read after it, goes with its conversation: the state keeps
    nothing of it. Content-free chats that keep a lead's match (`matched_as`) stay.
    """
    removed: dict[str, set[ChatFact]] = {}
    for anonymous_id in sorted(change.devices):
        segments = resolver.timeline(anonymous_id, new=True).segments
        doomed = {c for s in segments if erased_segment(s) for c in s.chats
                  if not is_placeholder(c.email)}  # fmt: skip
        if any(change.devices[anonymous_id].settled_before(c.at) for c in doomed):
            resolver.unfold(anonymous_id)  # a carried chat goes: from the whole device
        if doomed:
            removed[anonymous_id] = doomed
    if resolver.missing or not removed:
        return change
    devices = {a: _without_chats(d, removed.get(a, set())) for a, d in change.devices.items()}
    forgotten: dict[str, EmailEntry | None] = {
        e: v or EmailEntry() for e, v in change.emails.items()
    }
    _forget_leads(resolver, forgotten, devices, removed)
    emails = dict(change.emails)
    for email, entry in forgotten.items():
        if entry == resolver.old_email(email):
            emails.pop(email, None)
        elif entry != change.emails.get(email):
            emails[email] = None if entry == EmailEntry() else entry
    resolver.new_devices = {**resolver.new_devices, **devices}
    resolver.new_emails = {**resolver.new_emails, **emails}
    resolver.forget_timelines()
    return replace(change, devices=devices, emails=emails)


def _erase_device(resolver: _Resolver, anonymous_id: str, at: int) -> _Change:
    """The records a device's erasure at `at` changes: its facts before `at` are removed."""
    from pipeline.core.rules import _Change

    device = resolver.old_device(anonymous_id)
    gone_sessions = [f for f in device.sessions if f.at < at]
    sessions = tuple(f for f in device.sessions if f.at >= at)
    gone_chats = {c for c in device.chats if c.at < at}
    chats = tuple(c for c in device.chats if c.at >= at)
    first = device.first_activity
    if first is not None and first < at:
        first = min((c.at for c in chats), default=None)
    erased = max(at, device.erased or at)
    remaining = {f.event_id for f in sessions}
    new_device = Device(sessions, chats, first, erased, refused=device.refused & remaining,
                        retired_by=device.retired_by)  # fmt: skip
    users: dict[str, User | None] = {}
    emails: dict[str, EmailEntry | None] = {
        c.email: resolver.old_email(c.email)
        for c in gone_chats
        if c.email is not None and not is_placeholder(c.email)
    }
    # Logouts too: a user's record lists the devices of its logouts (`rules._facts`). The
    # e-mail claims and the name its logins and signups here carried go with them.
    gone_events = {f.event_id for f in gone_sessions}
    for user_id in sorted({f.user_id for f in gone_sessions}):
        user = resolver.old_user(user_id)
        kept = user
        if anonymous_id in user.devices and not any(f.user_id == user_id for f in sessions):
            kept = replace(
                kept,
                devices=tuple(d for d in user.devices if d != anonymous_id),
                since={d: t for d, t in user.since.items() if d != anonymous_id},
            )
        claims = tuple(c for c in user.emails if c.event_id not in gone_events)
        if claims != user.emails:
            kept = replace(kept, emails=claims)
            for email in sorted({c.email for c in user.emails if c.event_id in gone_events}):
                entry = _without_user(emails.get(email) or resolver.old_email(email), user_id)
                for claim in claims:  # claimed elsewhere too: those claims stay
                    if claim.email == email:
                        entry = entry.with_claim(user_id, claim)
                emails[email] = entry
        if user.name is not None and user.name[1] in gone_events:
            kept = replace(kept, name=None)
        if kept != user:
            users[user_id] = None if kept == User() else kept
    if resolver.missing:
        return _Change({}, {}, {})
    _forget_leads(resolver, emails, {anonymous_id: new_device}, {anonymous_id: gone_chats})
    tokens = _forget_uses(resolver, {anonymous_id: device},
                          {(anonymous_id, f.event_id) for f in gone_sessions})  # fmt: skip
    return _Change({anonymous_id: new_device}, users, _changed_emails(resolver, emails), tokens)


def _without_user(entry: EmailEntry, user_id: str) -> EmailEntry:
    verified = {u: first for u, first in entry.verified.items() if u != user_id}
    return EmailEntry(verified, tuple(u for u in entry.unverified if u != user_id), entry.leads)


def _changed_emails(resolver: _Resolver, emails: dict[str, EmailEntry | None]) -> dict:
    """The e-mail records that differ from the stored ones; an empty one is deleted."""
    changed = {}
    for email, entry in emails.items():
        if entry != resolver.old_email(email):
            changed[email] = None if entry == EmailEntry() else entry
    return changed


def _without_chats(device: Device, chats: set[ChatFact]) -> Device:
    if not chats:
        return device
    return replace(device, chats=tuple(c for c in device.chats if c not in chats))


def _forget_leads(
    resolver: _Resolver,
    emails: dict[str, EmailEntry | None],
    devices: dict[str, Device],
    removed: dict[str, set[ChatFact]],
) -> None:
    """Drop from the e-mail index the leads of removed chats (a device's other chat may stay)."""
    for anonymous_id, chats in removed.items():
        for email in sorted({c.email for c in chats
                             if c.email is not None and not is_placeholder(c.email)}):  # fmt: skip
            entry = emails.get(email) or resolver.old_email(email)
            leads = tuple(lead for lead in entry.leads if lead[2] != anonymous_id)
            kept = EmailEntry(entry.verified, entry.unverified, leads)
            for chat in devices[anonymous_id].chats:
                if chat.email == email:
                    kept = kept.with_lead(chat.at, chat.event_id, anonymous_id)
            emails[email] = kept


def _forget_uses(
    resolver: _Resolver, devices: dict[str, Device], removed: set[tuple[str, str]]
) -> dict:
    """Token uses (R17) of removed session facts: deleted, the record too once empty."""
    tokens: dict = {}
    for anonymous_id, device in devices.items():
        for fact in device.sessions:
            if fact.jti and (anonymous_id, fact.event_id) in removed:
                uses = tokens.get(fact.jti) or resolver.old_token(fact.jti)
                kept = tuple(u for u in uses.uses if (u[2], u[1]) not in removed)
                tokens[fact.jti] = replace(uses, uses=kept)
    return {jti: (uses if uses.uses else None) for jti, uses in tokens.items()}
