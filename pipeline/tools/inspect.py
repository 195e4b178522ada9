"""`idp inspect`: one profile, its devices, merged contacts, conversations, and why.

`describe` is pure: it turns stored facts into the lines a support engineer reads. `inspect`
is the edge: it finds the contact an identifier names and loads what `describe` needs.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from pipeline.core import ids
from pipeline.core.facts import Device, EmailEntry, User
from pipeline.core.model import profile_from_bytes
from pipeline.core.timeline import Segment, Timeline, derive
from pipeline.ops.settings import Settings
from pipeline.state.base import Keys
from pipeline.state.redis_store import RedisStore
from schemas import Profile
from schemas.time import format_timestamp, from_epoch_ms


@dataclass
class Facts:
    """The stored records of one workspace that a description needs."""

    workspace_id: str
    devices: dict[str, Device] = field(default_factory=dict)
    users: dict[str, User] = field(default_factory=dict)
    emails: dict[str, EmailEntry] = field(default_factory=dict)

    def timeline(self, anonymous_id: str) -> Timeline:
        """The device's timeline, from the facts loaded."""
        device = self.devices.get(anonymous_id, Device())
        verified = {
            c.email: self.emails.get(c.email, EmailEntry()).verified
            for c in device.chats
            if c.email
        }
        return derive(self.workspace_id, anonymous_id, device, verified)


def _when(ms: int | None) -> str:
    return "the beginning" if ms is None else format_timestamp(from_epoch_ms(ms))


def _segment_line(segment: Segment) -> str:
    end = "now" if segment.end_key is None else _when(segment.end_key // 2)
    who = f"user {segment.user_id}" if segment.user_id else "anonymous visitor"
    return f"{_when(segment.start_ms)} → {end}: {who} (contact {segment.contact_id})"


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


async def inspect(settings: Settings, workspace_id: str, identifier: str) -> list[str]:
    """Find the contact `identifier` names and describe it; [] when nothing matches."""
    keys = Keys(settings.state_namespace)
    store = RedisStore.from_url(settings.redis_url, marker_ttl_s=settings.dedup_ttl_days * 86400)
    facts = Facts(workspace_id)

    async def load(kind: str, ident: str) -> bytes | None:
        (record,) = await store.read([keys.of(workspace_id, kind, ident)])  # type: ignore[arg-type]
        return record.data or None

    try:
        candidates = [identifier, ids.user_contact_id(workspace_id, identifier)]
        email = identifier.strip().lower()
        if "@" in email and (data := await load("email", email)):
            entry = EmailEntry.from_bytes(data)
            candidates = [ids.user_contact_id(workspace_id, u) for u in sorted(entry.verified)]
            candidates += [ids.user_contact_id(workspace_id, u) for u in entry.unverified]
        if data := await load("dev", identifier):
            facts.devices[identifier] = Device.from_bytes(data)
            current = facts.timeline(identifier).segments[-1]
            candidates.insert(
                0, current.merge.into_contact_id if current.merge else current.contact_id
            )
        profile = None
        for contact_id in candidates:
            if data := await load("contact", contact_id):
                profile = profile_from_bytes(data)
                break
        if profile is None:
            return []
        for anonymous_id in profile.anonymous_ids:
            if anonymous_id not in facts.devices and (data := await load("dev", anonymous_id)):
                facts.devices[anonymous_id] = Device.from_bytes(data)
        for device in list(facts.devices.values()):
            for chat in device.chats:
                if chat.email and (data := await load("email", chat.email)):
                    facts.emails[chat.email] = EmailEntry.from_bytes(data)
        if profile.user_id and (data := await load("user", profile.user_id)):
            user = facts.users[profile.user_id] = User.from_bytes(data)
            for claim in user.emails:  # leads on other devices may have been matched by e-mail
                if data := await load("email", claim.email):
                    entry = facts.emails[claim.email] = EmailEntry.from_bytes(data)
                    for anonymous_id in entry.lead_devices:
                        if anonymous_id not in facts.devices and (
                            raw := await load("dev", anonymous_id)
                        ):
                            facts.devices[anonymous_id] = Device.from_bytes(raw)
        return describe(profile, facts)
    finally:
        await store.close()
