"""`idp inspect`: one profile, its devices, merged contacts, conversations, and why.

`describe` is pure: it turns stored facts into the lines a support engineer reads. `load` is
the edge: it finds the contact an identifier names and loads what `describe` (and the drawn
page of `pipeline.tools.inspect_html`) needs. Timelines are derived by the core's own
`rules.Timelines`, so the links the worker refused (R4 `shared_identifier`, R17 `token_reused`)
link nothing here either.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from pipeline.core import ids
from pipeline.core.facts import (
    Chunk,
    Device,
    EmailEntry,
    RetiredChunk,
    TokenUses,
    User,
    chunk_from_bytes,
    retired_idents,
)
from pipeline.core.model import View, profile_from_bytes
from pipeline.core.rules import TIMELINE_ROUNDS, CoreConfig, Timelines
from pipeline.core.timeline import Segment, Timeline
from pipeline.ops.settings import Settings
from pipeline.state.base import KeyKind, Keys
from pipeline.state.redis_store import RedisStore
from schemas import Profile
from schemas.time import format_timestamp, from_epoch_ms

# The tables a timeline reads and the store's key kinds.
_KINDS: dict[str, KeyKind] = {"devices": "dev", "users": "user", "emails": "email",
                              "tokens": "jti", "chunks": "chunk"}  # fmt: skip
_DECODE: dict[str, Callable[[bytes], object]] = {
    "devices": Device.from_bytes, "users": User.from_bytes, "emails": EmailEntry.from_bytes,
    "tokens": TokenUses.from_bytes, "chunks": chunk_from_bytes,
}  # fmt: skip


@dataclass
class Facts:
    """The stored records of one workspace that a description needs.

    `absent` names the (table, key) pairs known not to exist. `config` carries the guard's
    bounds (R4), which the timelines depend on.
    """

    workspace_id: str
    devices: dict[str, Device] = field(default_factory=dict)
    users: dict[str, User] = field(default_factory=dict)
    emails: dict[str, EmailEntry] = field(default_factory=dict)
    tokens: dict[str, TokenUses] = field(default_factory=dict)
    chunks: dict[str, Chunk] = field(default_factory=dict)  # folded devices' (R15)
    absent: set[tuple[str, str]] = field(default_factory=set)
    config: CoreConfig = field(default_factory=CoreConfig)
    _timelines: Timelines | None = field(default=None, repr=False, compare=False)

    def timelines(self) -> Timelines:
        """The core's timelines over the records loaded (derived again after each `add`)."""
        if self._timelines is None:
            tables: dict[str, dict] = {}
            for table in _KINDS:
                loaded: dict = dict(getattr(self, table))
                loaded.update({key: None for kind, key in self.absent if kind == table})
                tables[table] = loaded
            view = View(self.workspace_id, **tables)
            self._timelines = Timelines(view, self.config)
        return self._timelines

    def add(self, table: str, key: str, data: bytes | None) -> None:
        """Record a loaded record (None: known absent)."""
        if data is None:
            self.absent.add((table, key))
        else:
            getattr(self, table)[key] = _DECODE[table](data)
        self._timelines = None

    def missing(self, anonymous_ids: Iterable[str]) -> dict[str, set[str]]:
        """What the timelines of these devices need that is not loaded yet, by table."""
        timelines = self.timelines()
        for anonymous_id in anonymous_ids:
            timelines.of(anonymous_id)
        need = timelines.missing()
        self._timelines = None  # timelines derived without a record keep asking for it
        return {table: set(getattr(need, table)) for table in _KINDS if getattr(need, table)}

    def timeline(self, anonymous_id: str) -> Timeline:
        """The device's timeline as the worker derives it, refusals applied."""
        return self.timelines().of(anonymous_id)

    def refusals(self, anonymous_id: str) -> dict[str, str]:
        """The device's links the worker refused: event_id -> reason."""
        return self.timelines().refusals(anonymous_id)

    def whole(self, anonymous_id: str) -> Device:
        """The device with all its facts (a folded device's chunk records loaded)."""
        return self.timelines().device(anonymous_id)


def _when(ms: int | None) -> str:
    return "the beginning" if ms is None else format_timestamp(from_epoch_ms(ms))


def _segment_line(segment: Segment) -> str:
    end = "now" if segment.end_key is None else _when(segment.end_key // 2)
    who = f"user {segment.user_id}" if segment.user_id else "anonymous visitor"
    return f"{_when(segment.start_ms)} → {end}: {who} (contact {segment.contact_id})"


def _every_device(user_id: str, facts: Facts) -> list[str]:
    """The user's devices, live and retired (R15; her id chunk records loaded)."""
    user = facts.users.get(user_id)
    if user is None:
        return []
    retired = user.retired
    every = set(retired.ids) if retired is not None else set()
    for ident in retired_idents(user_id, retired):
        chunk = facts.chunks.get(ident)
        every.update(chunk.ids if isinstance(chunk, RetiredChunk) else ())
    return sorted({*user.devices, *every})


def devices_of(profile: Profile, facts: Facts) -> list[str]:
    """The devices that explain a profile, in this order.

    Its own devices; devices of other contacts merged into it (leads matched by e-mail); then
    devices where a link of its user was refused (R4, R17), which it never absorbed.
    """
    chosen = dict.fromkeys(profile.anonymous_ids)
    for anonymous_id in sorted(facts.devices):
        if anonymous_id in chosen:
            continue
        timeline = facts.timeline(anonymous_id)
        if any(s.merge and s.merge.into_contact_id == profile.contact_id
               for s in timeline.visitors()):  # fmt: skip
            chosen[anonymous_id] = None
    for anonymous_id in _every_device(profile.user_id or "", facts):
        if anonymous_id not in chosen and facts.refusals(anonymous_id):
            chosen[anonymous_id] = None
    return list(chosen)


def describe(profile: Profile, facts: Facts) -> list[str]:
    """Lines describing a profile and the history behind it, oldest first."""
    lines = [
        f"contact {profile.contact_id} ({profile.type}) in workspace {profile.workspace_id}",
    ]
    for name in ("user_id", "email", "name", "pseudonym", "merged_into"):
        value = getattr(profile, name)
        if value is not None:
            verified = " (verified)" if name == "email" and profile.email_verified else ""
            lines.append(f"  {name}: {value}{verified}")
    lines.append(f"  created {format_timestamp(profile.created_at)}, "
                 f"updated {format_timestamp(profile.updated_at)}")  # fmt: skip
    for title, values in (
        ("devices", profile.anonymous_ids),
        ("merged contacts", profile.merged_contact_ids),
        ("conversations", profile.conversation_ids),
        ("possible duplicates", profile.possible_duplicates),
        ("flags", profile.flags),
    ):
        if values:
            lines.append(f"  {title}: {', '.join(values)}")
    history: list[tuple[int, str]] = []
    for anonymous_id in profile.anonymous_ids:
        timeline = facts.timeline(anonymous_id)
        lines.append(f"  device {anonymous_id}:")
        lines += [f"    {_segment_line(s)}" for s in timeline.segments if timeline.exists(s)]
        for segment in timeline.segments:
            if segment.contact_id != profile.contact_id:
                continue
            for chat in segment.chats:
                history.append(
                    (chat.at, f"started conversation {chat.conversation_id} on {anonymous_id}")
                )
            if segment.kind == "user" and segment.start_ms is not None:
                history.append(
                    (
                        segment.start_ms,
                        f"linked on device {anonymous_id} by event {segment.session}",
                    )
                )
        for shutdown in timeline.shutdowns:
            if shutdown.contact_id == profile.contact_id:
                history.append((shutdown.at, f"session on {anonymous_id} ended ({shutdown.reason}, "
                                             f"event {shutdown.cause_event_id})"))  # fmt: skip
        for segment in timeline.segments:
            merge = segment.merge
            if merge and segment.contact_id == profile.contact_id:
                history.append((merge.at, f"merged into {merge.into_contact_id} ({merge.reason}, "
                                          f"event {merge.cause_event_id})"))  # fmt: skip
    for anonymous_id in sorted(facts.devices):  # the profile's devices and e-mail leads' devices
        timeline = facts.timeline(anonymous_id)
        for segment in timeline.visitors():
            merge = segment.merge
            if merge and merge.into_contact_id == profile.contact_id:
                what = (f"absorbed {segment.contact_id} from device {anonymous_id} "
                        f"({merge.reason}, event {merge.cause_event_id})")  # fmt: skip
                history.append((merge.at, what))
    for anonymous_id in devices_of(profile, facts):
        refused = facts.refusals(anonymous_id)
        for fact in facts.whole(anonymous_id).sessions:
            if fact.event_id in refused and fact.user_id == profile.user_id:
                what = (f"{fact.kind} on device {anonymous_id} refused "
                        f"({refused[fact.event_id]}, event {fact.event_id})")  # fmt: skip
                history.append((fact.at, what))
    user = facts.users.get(profile.user_id or "")
    if user is not None:
        for claim in user.emails:
            kind = "verified" if claim.verified else "unverified"
            history.append(
                (claim.at, f"claimed e-mail {claim.email} ({kind}, event {claim.event_id})")
            )
    if history:
        lines.append("  history:")
        for at, what in sorted(history):
            lines.append(f"    {_when(at)}  {what}")
    return lines


async def load(
    settings: Settings, workspace_id: str, identifier: str
) -> tuple[Profile, Facts] | None:
    """Find the contact `identifier` names and load its facts; None when nothing matches."""
    keys = Keys(settings.state_namespace)
    store = RedisStore.from_url(
        settings.redis_url,
        marker_ttl_s=settings.dedup_ttl_days * 86400,
        wait_replicas=settings.redis_wait_replicas,
    )
    config = CoreConfig(shared_device_limit=settings.shared_device_limit,
                        shared_window_ms=settings.shared_window_s * 1000,
                        profile_list_limit=settings.profile_list_limit)  # fmt: skip
    facts = Facts(workspace_id, config=config)

    def known(table: str, key: str) -> bool:
        return key in getattr(facts, table) or (table, key) in facts.absent

    async def fetch(wanted: Mapping[str, Iterable[str]]) -> None:
        pairs = sorted({(t, k) for t, ks in wanted.items() for k in ks if not known(t, k)})
        if pairs:  # one round trip for all of them
            records = await store.read([keys.of(workspace_id, _KINDS[t], k) for t, k in pairs])
            for (table, key), record in zip(pairs, records, strict=True):
                facts.add(table, key, record.data or None)

    async def complete() -> None:
        for _ in range(TIMELINE_ROUNDS):
            missing = facts.missing(sorted(facts.devices))
            if not missing:
                return
            await fetch(missing)

    async def published(contact_id: str) -> Profile | None:
        (record,) = await store.read([keys.of(workspace_id, "contact", contact_id)])
        return profile_from_bytes(record.data) if record.data else None

    try:
        email = identifier.strip().lower()
        await fetch({"devices": [identifier], "emails": [email] if "@" in email else []})
        candidates = [identifier, ids.user_contact_id(workspace_id, identifier)]
        if (entry := facts.emails.get(email)) is not None:
            candidates = [ids.user_contact_id(workspace_id, u) for u in sorted(entry.verified)]
            candidates += [ids.user_contact_id(workspace_id, u) for u in entry.unverified]
        if identifier in facts.devices:
            await complete()
            current = facts.timeline(identifier).segments[-1]
            candidates.insert(
                0, current.merge.into_contact_id if current.merge else current.contact_id
            )
        profile = None
        for contact_id in candidates:
            if (profile := await published(contact_id)) is not None:
                break
        if profile is None:
            return None
        await fetch({"devices": profile.anonymous_ids,
                     "users": [profile.user_id] if profile.user_id else []})  # fmt: skip
        user = facts.users.get(profile.user_id or "")
        if user is not None:  # its refused links, and leads matched by its e-mails (R7)
            await fetch({"chunks": retired_idents(profile.user_id or "", user.retired)})
            await fetch({"devices": _every_device(profile.user_id or "", facts),
                         "emails": [c.email for c in user.emails]})  # fmt: skip
            leads = [
                d for c in user.emails for d in facts.emails.get(c.email, EmailEntry()).lead_devices
            ]
            await fetch({"devices": leads})
        await complete()
        return profile, facts
    finally:
        await store.close()


async def inspect(settings: Settings, workspace_id: str, identifier: str) -> list[str]:
    """Find the contact `identifier` names and describe it; [] when nothing matches."""
    found = await load(settings, workspace_id, identifier)
    return [] if found is None else describe(*found)
