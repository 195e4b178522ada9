"""The stored facts of a workspace: what happened, never what was concluded from it.

Profiles are a pure function of these facts (see `timeline` and `profiles`), so the order in
which facts arrive cannot change the final profiles (R11), and adding a fact twice changes
nothing (R12). Every record is a set-like value: adding a fact is commutative and idempotent.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from typing import Literal

import orjson

SessionKind = Literal["login", "signup", "logout"]


@dataclass(frozen=True, slots=True, order=True)
class SessionFact:
    """A verified login/signup, or a logout, on one device at event time `at` (epoch ms).

    `jti` is the identity token's id when the proof was a token that carried one (R17).
    """

    at: int
    event_id: str
    kind: SessionKind
    user_id: str
    jti: str = ""


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
class Carry:
    """Where a device's settled history ends: its facts before `key` are in chunk records.

    `key` is on the timeline's doubled scale (`2 * at` of the first session fact kept in the
    device's record). The rest is the device's state there, all that deriving its later
    segments needs of the facts before it: the segment it was in (kind, contact, start,
    session, linked user: `timeline.fold`'s state) and that segment's chats before
    `key` (an e-mail match can still split it, and its profile lists them). `chunks` counts the
    chunk records (`DeviceChunk`, numbered from 0) that hold the facts before `key`.
    """

    key: int
    kind: Literal["visitor", "user"]
    contact_id: str
    start_key: int | None
    session: str
    user_id: str | None
    chats: tuple[ChatFact, ...]
    chunks: int
    # Whether the users with segments behind `key` keep their settled part (`SettledPart`, in
    # their records). A carry of state format 2 does not: its device is read whole for their
    # profiles, and folded again, which writes them.
    parts: bool = True

    def to_json(self) -> list:
        """As stored in the device's record."""
        row = [self.key, self.kind, self.contact_id, self.start_key, self.session,
               self.user_id, [_chat_row(c) for c in self.chats], self.chunks]  # fmt: skip
        return [*row, 1] if self.parts else row

    @classmethod
    def from_json(cls, row: list) -> Carry:
        """Inverse of `to_json`."""
        key, kind, contact_id, start_key, session, user_id, chats, chunks, *parts = row
        return cls(key, kind, contact_id, start_key, session, user_id,
                   tuple(ChatFact(*c) for c in chats), chunks, bool(parts))  # fmt: skip


@dataclass(frozen=True, slots=True)
class SettledPart:
    """What a user's segments behind a folded device's carry give her profile (R15).

    Her sessions there and the visitors merged into her there, summarised as
    `profiles.user_profile` merges them with her live segments: the first link (start, session),
    the earliest and latest times, the start of her latest session on the device, and the
    merged contacts (contact_id, latest time, whether by e-mail match) and conversations
    (conversation_id, (time, event_id) of its first chat, time of its latest) most recent
    first, `IDP_PROFILE_LIST_LIMIT` of each at most, with how many there were.
    """

    first: tuple[int, str] | None = None
    created: int | None = None
    updated: int | None = None
    latest_start: int | None = None
    merged: tuple[tuple[str, int, bool], ...] = ()
    merged_total: int = 0
    conversations: tuple[tuple[str, tuple[int, str], int], ...] = ()
    conversations_total: int = 0

    def to_json(self) -> list:
        """As stored in the user's record."""
        return [list(self.first) if self.first else None, self.created, self.updated,
                self.latest_start, [[c, at, int(m)] for c, at, m in self.merged],
                self.merged_total, [[c, a, e, t] for c, (a, e), t in self.conversations],
                self.conversations_total]  # fmt: skip

    @classmethod
    def from_json(cls, row: list) -> SettledPart:
        """Inverse of `to_json`."""
        first, created, updated, latest, merged, merged_total, chats, chats_total = row
        return cls(tuple(first) if first else None, created, updated, latest,
                   tuple((c, at, bool(m)) for c, at, m in merged), merged_total,
                   tuple((c, (a, e), t) for c, a, e, t in chats), chats_total)  # fmt: skip


@dataclass(frozen=True, slots=True)
class Retired:
    """A user's devices she no longer uses, summarised apart from her record (R15).

    A device of hers whose every fact lies before `point` (a margin before her latest link) is
    **retired**: her record no longer lists it, and what its segments give her profile is
    merged into `part` (as a settled part is, its `latest_start` unused) and into `devices`,
    the `IDP_PROFILE_LIST_LIMIT` most recent (anonymous_id, start of her latest session there)
    of `devices_total`. `accepted` is where the guard stands at `point`: the latest accepted
    link per device within the window before it. A retired device she links on again (or logs
    out of) is listed live once more and `returned` keeps, per such device, the point before
    which its segments of hers (and the visitors merged into her there) are in `part`.

    Her record keeps only this header. The summary (`part`, `devices`) is in two chunk records
    of hers, the ids of every device she retired (`ids_count` of them) in chunk records of
    `RETIRED_IDS_PER_CHUNK` (`RetiredChunk`), and each retired device's record names her
    (`Device.retired_by`). So `ids` and `uncounted` hold the retired devices among those a
    decision has loaded (each says whether it is retired for her), all of them only once her id
    chunks are loaded; `loaded` says whether the summary was. A record of state format 4 keeps
    all of it inline (`inline`), and is split up the first time it is written.
    """

    point: int
    ids: tuple[str, ...] = ()
    returned: dict[str, int] = field(default_factory=dict)
    accepted: tuple[tuple[int, str], ...] = ()
    part: SettledPart = field(default_factory=SettledPart)
    devices: tuple[tuple[str, int], ...] = ()
    devices_total: int = 0
    # Those of `ids` where she had no session when they retired (her links there refused, or
    # only logouts): not counted in `devices_total`.
    uncounted: tuple[str, ...] = ()
    # Whether the guard refused a link of hers before `point` (her profile is flagged, R4).
    flagged: bool = False
    ids_count: int = 0  # the ids in her id chunks
    loaded: bool = True  # whether `part` and `devices` are the summary's (False: not read)
    inline: bool = False  # read from state format 4: everything is in the record itself

    def key(self, anonymous_id: str) -> int | None:
        """Before this time (ms) the device's segments of hers are in `part` (None: all)."""
        return self.returned.get(anonymous_id)

    def has(self, anonymous_id: str) -> bool:
        """Whether the device was retired (and may have come back since)."""
        return _in_sorted(self.ids, anonymous_id)

    def counted(self, anonymous_id: str) -> bool:
        """Whether `devices_total` counts the device."""
        return self.has(anonymous_id) and not _in_sorted(self.uncounted, anonymous_id)

    @property
    def id_chunks(self) -> int:
        """How many id chunk records hold her retired devices' ids."""
        return -(-self.ids_count // RETIRED_IDS_PER_CHUNK)

    def to_json(self) -> list:
        """As stored in the user's record: the header."""
        return [self.point, self.ids_count, sorted(self.returned.items()),
                [list(a) for a in self.accepted], self.devices_total,
                int(self.flagged)]  # fmt: skip

    @classmethod
    def from_json(cls, row: list) -> Retired:
        """Inverse of `to_json`; a row of state format 4 holds the whole summary."""
        if len(row) == 9:
            point, ids, returned, accepted, part, devices, total, uncounted, flagged = row
            return cls(point, tuple(ids), dict(returned), tuple((a, d) for a, d in accepted),
                       SettledPart.from_json(part), tuple((d, a) for d, a in devices),
                       total, tuple(uncounted), bool(flagged), len(ids),
                       inline=True)  # fmt: skip
        point, count, returned, accepted, total, flagged = row
        return cls(point, (), dict(returned), tuple((a, d) for a, d in accepted),
                   devices_total=total, flagged=bool(flagged), ids_count=count,
                   loaded=False)  # fmt: skip


RETIRED_IDS_PER_CHUNK = 500  # retired devices' ids per chunk record (some 20 KB of UUIDs)


def retired_idents(user_id: str, retired: Retired | None) -> list[str]:
    """The identifiers of a user's id chunk records (`RetiredChunk`), in order."""
    count = retired.id_chunks if retired is not None and not retired.inline else 0
    return [f"r{i}:{user_id}" for i in range(count)]


def summary_idents(user_id: str) -> tuple[str, str]:
    """The identifiers of a user's retired summary records: its part, and its devices."""
    return f"p:{user_id}", f"v:{user_id}"


@dataclass(frozen=True, slots=True)
class RetiredChunk:
    """One record of a user's retired devices (`Retired`): some of their ids, or the summary.

    Chunk records share one table: a device's (`DeviceChunk`) are named by a number first,
    a user's by a letter (`retired_idents`, `summary_idents`).
    """

    ids: tuple[str, ...] = ()
    part: SettledPart | None = None
    devices: tuple[tuple[str, int], ...] = ()

    def to_bytes(self) -> bytes:
        """Serialise for the store."""
        if self.part is not None:
            return orjson.dumps({"p": self.part.to_json()})
        if self.devices:
            return orjson.dumps({"v": [list(d) for d in self.devices]})
        return orjson.dumps({"i": list(self.ids)})

    @classmethod
    def from_json(cls, raw: dict) -> RetiredChunk:
        """Inverse of `to_bytes`, once parsed."""
        if "p" in raw:
            return cls(part=SettledPart.from_json(raw["p"]))
        if "v" in raw:
            return cls(devices=tuple((d, at) for d, at in raw["v"]))
        return cls(ids=tuple(raw["i"]))


def _in_sorted(values: tuple[str, ...], value: str) -> bool:
    at = bisect_left(values, value)
    return at < len(values) and values[at] == value


def _session_row(f: SessionFact) -> list:
    return [f.at, f.event_id, f.kind, f.user_id, f.jti] if f.jti else [f.at, f.event_id, f.kind,
                                                                       f.user_id]  # fmt: skip


def _chat_row(f: ChatFact) -> list:
    return [f.at, f.event_id, f.conversation_id, f.email, f.name, f.city]


@dataclass(frozen=True, slots=True)
class Device:
    """One anonymous_id: its session facts, chats and the time of its earliest activity.

    `erased` is the time of the device's erasure (R16), if it was erased: its events stamped
    before it are refused, so the check costs nothing for a device never erased.

    A device with a long history is *folded* (`carry`, R15): its record keeps the facts from
    `carry.key` on, and the older ones are in chunk records, read only when an event needs
    them (`rules._Resolver.unfold`). An unfolded device holds every fact and no carry.
    """

    sessions: tuple[SessionFact, ...] = ()
    chats: tuple[ChatFact, ...] = ()
    first_activity: int | None = None
    erased: int | None = None
    carry: Carry | None = None
    # The event_ids of links here that the guard (R4) refused before their user's retired point
    # (`Retired.point`): settled there, so that her other links need not be read to know (R15).
    refused: frozenset[str] = frozenset()
    # The users who retired the device (`Retired`), each with whether her `devices_total`
    # counts it: whether it is retired for a user is asked of the device (R15).
    retired_by: tuple[tuple[str, bool], ...] = ()

    def retired_for(self, user_id: str) -> bool | None:
        """Whether the user retired the device: None if not, else whether her total counts it."""
        for user, counted in self.retired_by:
            if user == user_id:
                return counted
        return None

    def with_retired_for(self, user_id: str, counted: bool | None) -> Device:
        """The device retired for the user (None: not retired for her)."""
        if self.retired_for(user_id) == counted:
            return self
        others = [(u, c) for u, c in self.retired_by if u != user_id]
        mine = [(user_id, counted)] if counted is not None else []
        return replace(self, retired_by=tuple(sorted((*others, *mine))))

    def with_session(self, fact: SessionFact) -> Device:
        """Add a session fact (kept sorted by time, then event_id)."""
        if fact in self.sessions:
            return self
        sessions = tuple(sorted((*self.sessions, fact)))
        return replace(self, sessions=sessions)

    def with_chat(self, fact: ChatFact) -> Device:
        """Add a chat; a chat is activity too."""
        chats = self.chats if fact in self.chats else tuple(sorted((*self.chats, fact)))
        device = replace(self, chats=chats) if chats is not self.chats else self
        return device.with_activity(fact.at)

    def with_activity(self, at: int) -> Device:
        """Record activity (a page view or a chat) at `at`."""
        if self.first_activity is not None and self.first_activity <= at:
            return self
        return replace(self, first_activity=at)

    def settled_before(self, at: int) -> bool:
        """Whether a fact at `at` lies in the folded part (before the carry)."""
        return self.carry is not None and 2 * at < self.carry.key

    def unfolded(self, chunks: Iterable[DeviceChunk]) -> Device:
        """The whole device: its record's facts with those of its chunk records."""
        sessions = [*self.sessions]
        chats = [*self.chats]
        for chunk in chunks:
            sessions += chunk.sessions
            chats += chunk.chats
        return Device(tuple(sorted(sessions)), tuple(sorted(chats)), self.first_activity,
                      self.erased, refused=self.refused, retired_by=self.retired_by)  # fmt: skip

    def to_bytes(self) -> bytes:
        """Serialise for the store."""
        return orjson.dumps(
            {
                "s": [_session_row(f) for f in self.sessions],
                "c": [_chat_row(f) for f in self.chats],
                "a": self.first_activity,
                **({"x": self.erased} if self.erased is not None else {}),
                **({"k": self.carry.to_json()} if self.carry is not None else {}),
                **({"g": sorted(self.refused)} if self.refused else {}),
                **({"b": [[u, int(c)] for u, c in self.retired_by]} if self.retired_by else {}),
            }
        )

    @classmethod
    def from_bytes(cls, data: bytes) -> Device:
        """Inverse of `to_bytes`."""
        raw = orjson.loads(data)
        carry = raw.get("k")
        return cls(
            sessions=tuple(SessionFact(*row) for row in raw["s"]),
            chats=tuple(ChatFact(*row) for row in raw["c"]),
            first_activity=raw["a"],
            erased=raw.get("x"),
            carry=Carry.from_json(carry) if carry is not None else None,
            refused=frozenset(raw.get("g", ())),
            retired_by=tuple((u, bool(c)) for u, c in raw.get("b", ())),
        )

    @staticmethod
    def first_activity_of(data: bytes) -> int | None:
        """A stored device's `first_activity`, without building the whole device."""
        return orjson.loads(data)["a"]


def chunk_ident(anonymous_id: str, index: int) -> str:
    """The identifier of a device's chunk record `index` (`DeviceChunk`)."""
    return f"{index}:{anonymous_id}"


def chunk_idents(anonymous_id: str, device: Device | None) -> list[str]:
    """The identifiers of all of a stored device's chunk records."""
    count = device.carry.chunks if device is not None and device.carry is not None else 0
    return [chunk_ident(anonymous_id, i) for i in range(count)]


@dataclass(frozen=True, slots=True)
class DeviceChunk:
    """Facts of a folded device's settled history (`Device.carry`), a bounded stretch each."""

    sessions: tuple[SessionFact, ...] = ()
    chats: tuple[ChatFact, ...] = ()

    def to_bytes(self) -> bytes:
        """Serialise for the store."""
        return orjson.dumps({"s": [_session_row(f) for f in self.sessions],
                             "c": [_chat_row(f) for f in self.chats]})  # fmt: skip

    @classmethod
    def from_bytes(cls, data: bytes) -> DeviceChunk:
        """Inverse of `to_bytes`."""
        raw = orjson.loads(data)
        return cls(tuple(SessionFact(*row) for row in raw["s"]),
                   tuple(ChatFact(*row) for row in raw["c"]))  # fmt: skip


Chunk = DeviceChunk | RetiredChunk


def chunk_from_bytes(data: bytes) -> Chunk:
    """A stored chunk record: a folded device's, or one of a user's retired devices'."""
    raw = orjson.loads(data)
    if "s" in raw:
        return DeviceChunk(tuple(SessionFact(*row) for row in raw["s"]),
                           tuple(ChatFact(*row) for row in raw["c"]))  # fmt: skip
    return RetiredChunk.from_json(raw)


def chunk_to_bytes(chunk: Chunk) -> bytes:
    """Serialise a chunk record for the store."""
    return chunk.to_bytes()


@dataclass(frozen=True, slots=True)
class User:
    """One user_id: the devices it was linked on, its e-mail claims and its latest name.

    `erased` is the time of the user's latest erasure (R16) when the user came back after it:
    its events stamped before it are refused.
    """

    devices: tuple[str, ...] = ()
    emails: tuple[EmailClaim, ...] = ()
    name: tuple[int, str, str] | None = None  # (at, event_id, name): the latest wins
    erased: int | None = None
    # Device -> the time of the user's earliest session fact there; a device it lacks is
    # unknown (state written before it was kept) and counts as the earliest of all. It tells
    # whether a folded device's settled history holds anything of this user (R15).
    since: dict[str, int] = field(default_factory=dict)
    # Device -> her settled part there (`SettledPart`), for each folded device whose settled
    # history holds segments of hers (R15).
    past: dict[str, SettledPart] = field(default_factory=dict)
    # The devices she no longer uses, summarised (R15); None: none retired.
    retired: Retired | None = None

    def with_device(self, anonymous_id: str, at: int) -> User:
        """Remember a device the user has a session fact on at `at`.

        A retired device comes back live, its earlier segments of hers kept retired.
        """
        known = anonymous_id in self.devices
        if known and self.since.get(anonymous_id, at) <= at:
            return self
        devices = self.devices if known else tuple(sorted((*self.devices, anonymous_id)))
        since = self.since if known and anonymous_id not in self.since else {
            **self.since, anonymous_id: at}  # fmt: skip
        retired = self.retired
        if not known and retired is not None and retired.has(anonymous_id):
            # Back from retirement: her earliest fact there is not known (it counts as such).
            since = self.since
            returned = {**retired.returned, anonymous_id: retired.point}
            retired = replace(retired, returned=returned)
        return replace(self, devices=devices, since=since, retired=retired)

    def first_on(self, anonymous_id: str) -> int | None:
        """The user's earliest session fact on the device; None when it is not known."""
        return self.since.get(anonymous_id)

    def with_email(self, claim: EmailClaim) -> User:
        """Add an e-mail claim."""
        if claim in self.emails:
            return self
        emails = tuple(sorted((*self.emails, claim)))
        return replace(self, emails=emails)

    def with_name(self, at: int, event_id: str, name: str) -> User:
        """Keep the name of the latest event."""
        candidate = (at, event_id, name)
        if self.name is not None and self.name >= candidate:
            return self
        return replace(self, name=candidate)

    def with_past(self, anonymous_id: str, part: SettledPart | None) -> User:
        """Keep (None: drop) her settled part on a folded device."""
        if self.past.get(anonymous_id) == part:
            return self
        past = {d: p for d, p in self.past.items() if d != anonymous_id}
        if part is not None:
            past[anonymous_id] = part
        return replace(self, past=past)

    def to_bytes(self) -> bytes:
        """Serialise for the store."""
        return orjson.dumps(
            {
                "d": list(self.devices),
                "e": [[c.at, c.event_id, c.email, c.verified] for c in self.emails],
                "n": list(self.name) if self.name else None,
                **({"x": self.erased} if self.erased is not None else {}),
                **({"f": [self.since.get(d) for d in self.devices]} if self.since else {}),
                **(
                    {"p": {d: p.to_json() for d, p in sorted(self.past.items())}}
                    if self.past
                    else {}
                ),
                **({"r": self.retired.to_json()} if self.retired is not None else {}),
            }
        )

    @classmethod
    def from_bytes(cls, data: bytes) -> User:
        """Inverse of `to_bytes`."""
        raw = orjson.loads(data)
        devices = tuple(raw["d"])
        since = {d: at for d, at in zip(devices, raw.get("f", ()), strict=False) if at is not None}
        return cls(
            devices=devices,
            emails=tuple(EmailClaim(*row) for row in raw["e"]),
            name=tuple(raw["n"]) if raw["n"] else None,
            erased=raw.get("x"),
            since=since,
            past={d: SettledPart.from_json(p) for d, p in raw.get("p", {}).items()},
            retired=Retired.from_json(raw["r"]) if "r" in raw else None,
        )


EMAIL_LEADS_KEPT = 100  # devices whose chats an e-mail can match to its user (R7, R15)
EMAIL_CLAIMS_KEPT = 100  # users an e-mail lists as claiming it unverified (R15)


@dataclass(frozen=True, slots=True)
class EmailEntry:
    """Who uses one normalised e-mail.

    Users who verified it (with their first verification), users who claimed it unverified,
    and the devices whose chats carried it: (at, event_id, anonymous_id) of each device's
    first such chat, the `EMAIL_LEADS_KEPT` earliest only. Anyone can type an e-mail into a
    chat, so the leads an e-mail can merge into its user are bounded: a chat from a device
    beyond them stays an unmerged lead. Keeping the earliest (not the latest) means a flood of
    strangers' chats cannot push out the leads already matched, and a device dropped by a late,
    earlier chat is one this record still names, so its timeline is derived again.

    The users who claimed it unverified are kept up to `EMAIL_CLAIMS_KEPT`, the first by
    user_id (no claim time is kept for them): its leads list them as possible duplicates, and
    a claim beyond them changes nothing here. An erased claimant leaves a place another
    claimant does not take back.
    """

    verified: dict[str, tuple[int, str]] = field(default_factory=dict)
    unverified: tuple[str, ...] = ()
    leads: tuple[tuple[int, str, str], ...] = ()

    @property
    def lead_devices(self) -> tuple[str, ...]:
        """The devices whose chats this e-mail may match (R7)."""
        return tuple(device for _, _, device in self.leads)

    def admits(self, anonymous_id: str) -> bool:
        """Whether a chat of this device may be matched to the e-mail's user."""
        return any(device == anonymous_id for _, _, device in self.leads)

    def with_claim(self, user_id: str, claim: EmailClaim) -> EmailEntry:
        """Add a user's claim; a verification keeps the earliest (at, event_id)."""
        if claim.verified:
            first = (claim.at, claim.event_id)
            current = self.verified.get(user_id)
            if current is not None and current <= first:
                return self
            return EmailEntry({**self.verified, user_id: first}, self.unverified, self.leads)
        if user_id in self.unverified:
            return self
        claims = tuple(sorted((*self.unverified, user_id)))[:EMAIL_CLAIMS_KEPT]
        return self if claims == self.unverified else EmailEntry(self.verified, claims, self.leads)

    def with_lead(self, at: int, event_id: str, anonymous_id: str) -> EmailEntry:
        """Remember a device's chat that carried this e-mail (its earliest one counts)."""
        earliest: dict[str, tuple[int, str]] = {}
        for use_at, use_event, device in (*self.leads, (at, event_id, anonymous_id)):
            if device not in earliest or (use_at, use_event) < earliest[device]:
                earliest[device] = (use_at, use_event)
        leads = tuple(sorted((a, e, d) for d, (a, e) in earliest.items()))[:EMAIL_LEADS_KEPT]
        if leads == self.leads:
            return self
        return EmailEntry(self.verified, self.unverified, leads)

    def to_bytes(self) -> bytes:
        """Serialise for the store."""
        return orjson.dumps(
            {
                "v": {user: list(first) for user, first in sorted(self.verified.items())},
                "u": list(self.unverified),
                "l": [list(lead) for lead in self.leads],
            }
        )

    @classmethod
    def from_bytes(cls, data: bytes) -> EmailEntry:
        """Inverse of `to_bytes`."""
        raw = orjson.loads(data)
        return cls(
            verified={user: (first[0], first[1]) for user, first in raw["v"].items()},
            unverified=tuple(raw["u"]),
            leads=tuple((at, event_id, device) for at, event_id, device in raw["l"]),
        )


TOKEN_USES_KEPT = 8  # the earliest uses of a token id; the first of them is the one that counts


@dataclass(frozen=True, slots=True)
class TokenUses:
    """The earliest uses (at, event_id, anonymous_id) of one identity token id (`jti`, R17).

    A token with a `jti` links only the device of its first use (earliest event time, then
    event_id). Keeping the few earliest uses is enough to know it in any arrival order, and
    bounds the record however often a stolen token is replayed: a use later than all kept
    ones can never be the first.
    """

    uses: tuple[tuple[int, str, str], ...] = ()

    @property
    def first_device(self) -> str | None:
        """The device the token is bound to."""
        return self.uses[0][2] if self.uses else None

    def with_use(self, at: int, event_id: str, anonymous_id: str) -> TokenUses:
        """Add a use; only the `TOKEN_USES_KEPT` earliest are kept."""
        use = (at, event_id, anonymous_id)
        if use in self.uses:
            return self
        uses = tuple(sorted((*self.uses, use)))[:TOKEN_USES_KEPT]
        return self if uses == self.uses else TokenUses(uses)

    def devices(self) -> set[str]:
        """The devices of the kept uses (their links depend on this record)."""
        return {device for _, _, device in self.uses}

    def to_bytes(self) -> bytes:
        """Serialise for the store."""
        return orjson.dumps({"u": [list(use) for use in self.uses]})

    @classmethod
    def from_bytes(cls, data: bytes) -> TokenUses:
        """Inverse of `to_bytes`."""
        uses = orjson.loads(data)["u"]
        return cls(tuple((at, event_id, device) for at, event_id, device in uses))


@dataclass(frozen=True, slots=True)
class ErasureMarker:
    """An erased subject (R16), stored under a keyed digest of it: the time of its erasure.

    A user's events stamped before `at` are refused, in live processing and in a replay alike.
    The marker of an e-mail an erased user verified also holds `verified`, the time of her
    first verification, so that a lead typing it before `at` is matched as it was (R7). It
    holds nothing else, so the state keeps no personal data of an erased subject.
    """

    at: int
    verified: int | None = None

    def to_bytes(self) -> bytes:
        """Serialise for the store."""
        if self.verified is None:
            return orjson.dumps({"t": self.at})
        return orjson.dumps({"t": self.at, "v": self.verified})

    @classmethod
    def from_bytes(cls, data: bytes) -> ErasureMarker:
        """Inverse of `to_bytes`."""
        fields = orjson.loads(data)
        return cls(fields["t"], fields.get("v"))
