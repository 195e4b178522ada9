"""The edge between Kafka and the pure core: a batch in, state committed, outputs out.

For a batch: prefetch (one round trip) the records the events will most likely need, run the
pure transition of each event in order against a per-workspace working copy, then commit every
workspace's changes by compare-and-set (one round trip). A workspace whose commit lost a race
with another worker is re-read and re-decided; the others keep their result. Outputs are
returned only for committed changes, so nothing is emitted for a decision that did not stick.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import time
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import orjson

from pipeline.core import ids
from pipeline.core.erasure import DEVICE_ERASURES
from pipeline.core.events import Checked, CheckedChat, CheckedPageView, check
from pipeline.core.facts import (
    Device,
    EmailEntry,
    ErasureMarker,
    TokenUses,
    User,
    chunk_from_bytes,
    chunk_to_bytes,
)
from pipeline.core.model import (
    Applied,
    Emit,
    NeedMore,
    Refusal,
    Transition,
    Unchanged,
    View,
    profile_from_bytes,
    profile_to_bytes,
)
from pipeline.core.rules import CoreConfig, apply, browsing, likely_more, likely_needs
from pipeline.state.base import Commit, KeyKind, Keys, Record, Store
from pipeline.state.changelog import changes
from pipeline.state.changelog import encode as encode_change
from pipeline.worker import metrics
from pipeline.worker.codec import Item, Wire, encode_output, rejection
from pipeline.worker.decoded import DecodedRecords
from pipeline.worker.known import KnownDevices
from schemas import InputEvent, PageView
from schemas.topics import OUTPUT_TOPICS, PROFILES, STATE_CHANGELOG

logger = logging.getLogger(__name__)

MAX_ATTEMPTS = 50
KNOWN_DEVICES = 100_000  # devices whose first activity a processor remembers, by default
_MISSING = object()
SPECULATION_ROUNDS = 4


def checked(item: Item, config: CoreConfig) -> Checked | Refusal:
    """The item's event as the core trusts it (`events.check`): checked once, kept on the item.

    A bug in the check refuses the event, as one in the decision does (`decide`).
    """
    result = item.checked
    if result is None:
        try:
            result = check(item.event, config, record_ms=item.source.timestamp_ms)
        except Exception as exc:
            result = _internal_error(item, exc)
        item.checked = result
    return result


def decide(item: Item, view: View, config: CoreConfig) -> Transition | NeedMore:
    """The core's decision; a bug in it refuses this event (recorded) instead of the worker dying.

    The refusal is a recorded failure (`internal_error` on `identity.rejected`, logged with the
    traceback), never a silent success, and the other events of the batch go on.
    """
    event = checked(item, config)
    if isinstance(event, Refusal):
        return Transition(event)
    try:
        return apply(event, view, config)
    except Exception as exc:
        return Transition(_internal_error(item, exc))


def _internal_error(item: Item, exc: Exception) -> Refusal:
    logger.exception("the identity core failed on event %s", item.event.event_id)
    return Refusal("internal_error", f"{type(exc).__name__}: {exc}"[:300])


class ConflictError(RuntimeError):
    """A workspace's commit kept losing races; the batch is retried by the caller."""


@dataclass(slots=True)
class Tally:
    """Accounting of one batch: every input ends applied, unchanged or rejected (by reason)."""

    applied: int = 0
    unchanged: int = 0
    rejected: Counter[str] = field(default_factory=Counter)

    def add(self, other: Tally) -> None:
        """Accumulate another tally."""
        self.applied += other.applied
        self.unchanged += other.unchanged
        self.rejected.update(other.rejected)


@dataclass(slots=True)
class Processed:
    """A batch's result: outputs to send, accounting, and the outbox records holding them."""

    emits: list[Emit]
    tally: Tally
    outbox: list[str]  # delete these once `emits` are delivered
    wires: list[Wire] = field(default_factory=list)  # `emits` as sent, encoded once
    # (workspace_id, contact_id, version) of each profile record the batch committed: what
    # its profile outputs carry, to be checked against the store once they are delivered.
    profiles: list[tuple[str, str, int]] = field(default_factory=list)


def outbox_blob(wires: Sequence[Wire], created_s: float, state: Sequence[str] = ()) -> bytes:
    """The outputs of a committed batch, kept with its state until they are delivered.

    Events (merges, shutdowns) are kept whole; a profile by its contact_id only, since a
    worker that sends the outbox again sends profiles as they are then, never as they were:
    the record costs what the batch's events cost, whatever size their profiles grew to (R15).
    `state`: the keys it wrote, whose changelog records go out with the outputs; a worker
    that sends the outbox again sends those records as they are then (`outbox_state`).
    """
    entries = [
        [
            topic,
            None if key is None else base64.b64encode(key).decode(),
            None if value is None or topic == PROFILES else value.decode(),
        ]
        for topic, key, value in wires
    ]
    if state:
        return orjson.dumps({"created": created_s, "emits": entries, "state": list(state)})
    return orjson.dumps({"created": created_s, "emits": entries})


def outbox_state(blob: bytes) -> list[str]:
    """The state keys an outbox record names (see `outbox_blob`); ValueError if malformed."""
    keys = orjson.loads(blob).get("state") or []
    if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
        raise ValueError("not a list of state keys")
    return keys


def outbox_records(blob: bytes) -> tuple[float, list[Wire]]:
    """(created, [(topic, key, value)]) of an outbox record; ValueError if it is not one."""
    raw = orjson.loads(blob)
    if not isinstance(raw, dict) or not isinstance(raw.get("created"), int | float):
        raise ValueError("not an outbox record")
    records: list[Wire] = []
    for entry in raw.get("emits") or ():
        topic, key, value = entry
        if (
            topic not in OUTPUT_TOPICS
            or not isinstance(key, str | None)
            or not isinstance(value, str | None)
        ):
            raise ValueError(f"not an output: {str(entry)[:80]}")
        records.append((topic, None if key is None else base64.b64decode(key, validate=True),
                        None if value is None else value.encode()))  # fmt: skip
    return raw["created"], records


def event_marker(item: Item) -> str:
    """The identity of an input event (R12), which names its processed-event marker."""
    event = item.event
    return ids.event_identity(item.source.topic, event.anonymous_id.strip(), event.event_id)


def content_digest(item: Item) -> bytes:
    """What an event_id stands for: its topic and its bytes as received.

    A replay of the same record has the same digest; the same event_id with other content is
    a reuse, refused as `event_id_reused`.
    """
    body = item.source.topic.encode() + b"\0" + (item.source.value or b"")
    return hashlib.blake2b(body, digest_size=16).digest()


# The record tables of a View / NeedMore / Transition: (table, key kind, decode, encode).
_TABLES: tuple[tuple[str, KeyKind, Callable, Callable], ...] = (
    ("devices", "dev", Device.from_bytes, Device.to_bytes),
    ("users", "user", User.from_bytes, User.to_bytes),
    ("emails", "email", EmailEntry.from_bytes, EmailEntry.to_bytes),
    ("contacts", "contact", profile_from_bytes, profile_to_bytes),
    ("tokens", "jti", TokenUses.from_bytes, TokenUses.to_bytes),
    ("erasures", "erased", ErasureMarker.from_bytes, ErasureMarker.to_bytes),
    ("chunks", "chunk", chunk_from_bytes, chunk_to_bytes),
)
_KINDS: dict[str, KeyKind] = {table: kind for table, kind, _, _ in _TABLES}
_BY_KIND = {kind: (table, decode) for table, kind, decode, _ in _TABLES}


@dataclass(slots=True)
class _Ahead:
    """A decision made while speculating, and the records it read that earlier decisions wrote.

    It holds when every record it read is the very one it saw: those written by earlier
    events of the batch are the objects their decisions wrote (`basis`), the others are
    still as read from the store.
    """

    transition: Transition
    basis: dict[tuple[str, str], object]

    def holds(self, working: _Working) -> bool:
        view, basis = working.view, self.basis
        for (table, ident), value in basis.items():
            if getattr(view, table).get(ident, _MISSING) is not value:
                return False
        return all(read in basis for read in self.transition.reads if read in working.written)


class _Overlay:
    """A working copy's view with the writes of decisions made ahead, in the batch's order."""

    def __init__(self, view: View) -> None:
        self.view = View(view.workspace_id, **{table: dict(getattr(view, table))
                                              for table, _, _, _ in _TABLES})  # fmt: skip
        self.written: set[tuple[str, str]] = set()

    def absorb(self, transition: Transition) -> None:
        for table, _, _, _ in _TABLES:
            changed = getattr(transition, table)
            if changed:
                getattr(self.view, table).update(changed)
                self.written.update((table, ident) for ident in changed)

    def basis(self, transition: Transition) -> dict[tuple[str, str], object]:
        """What `transition` read of the records written ahead of it."""
        return {(table, ident): getattr(self.view, table)[ident]
                for table, ident in transition.reads if (table, ident) in self.written}  # fmt: skip


class _Working:
    """One workspace's records as read, the decoded view over them, and pending writes."""

    def __init__(self, workspace_id: str, keys: Keys, decoded: DecodedRecords) -> None:
        self.workspace_id = workspace_id
        self.keys = keys
        self.decoded = decoded  # the processor's large records, decoded lately
        self.view = View(workspace_id)
        self.read_versions: dict[str, int] = {}
        self.markers: dict[str, bytes | None] = {}
        self.commit = Commit()
        self.emits: list[Emit] = []
        self.tally = Tally()
        self.written: set[tuple[str, str]] = set()  # (table, key) written by this batch
        self.profile_bytes: dict[int, bytes] = {}  # id(profile) -> its bytes, stored and sent
        self.ahead: dict[int, _Ahead] = {}  # decisions made while speculating, by item
        self.unreadable: set[str] = set()  # keys whose records could not be decoded
        self.outbox: str | None = None  # the key of this batch's outbox record, once written

    def key(self, kind: KeyKind, ident: str) -> str:
        return self.keys.of(self.workspace_id, kind, ident)

    def marker_key(self, marker: str) -> str:
        return self.key("evt", marker)

    def missing(self, need: NeedMore) -> list[str]:
        keys = []
        for table, kind, _, _ in _TABLES:
            loaded = getattr(self.view, table)
            keys += [self.key(kind, i) for i in getattr(need, table) if i not in loaded]
        return keys

    def learn(self, key: str, record: Record) -> None:
        """Take a record read from the store into the view (first read wins).

        A record that cannot be decoded (written by something else, or damaged) is logged,
        counted and kept out of the view: an event that needs it is refused (`unreadable`).
        """
        if key in self.read_versions:
            return
        self.read_versions[key] = record.version
        parts = self.keys.parse(key)
        assert parts is not None, key  # built by `self.key`
        kind, ident = parts.kind, parts.ident
        data = record.data or None  # b"" is a tombstoned contact: absent
        if kind == "evt":
            self.markers[ident] = data
            return
        table, decode = _BY_KIND[kind]  # type: ignore[index] # a kind this store writes
        try:
            value = self.decoded.decode(key, data, decode) if data else None
            getattr(self.view, table)[ident] = value
        except Exception as exc:
            logger.error("unreadable %s record %s (%s: %s)", kind, key, type(exc).__name__, exc)
            metrics.UNREADABLE_RECORDS.labels(kind).inc()
            self.unreadable.add(key)

    def absorb(self, transition: Transition) -> None:
        """Take a writing decision: its writes, and version checks of everything it read.

        Only writing decisions are checked at commit: a decision that changed nothing stays
        right whatever another worker adds meanwhile, because facts only accumulate.
        """
        checks = self.commit.checks
        for table, ident in transition.reads:
            key = self.key(_KINDS[table], ident)
            checks.setdefault(key, self.read_versions.get(key, 0))
        for table, kind, _, encode in _TABLES:
            loaded = getattr(self.view, table)
            for ident, value in getattr(transition, table).items():
                loaded[ident] = value
                # A None contact is a tombstone: stored as empty data, read back as absent;
                # another None record is deleted (an erasure: its key names the subject).
                data = b"" if value is None else encode(value)
                key = self.key(kind, ident)
                self.commit.writes[key] = data
                if value is None and table != "contacts":
                    self.commit.deleting.add(key)
                else:  # written again by a later decision of the batch: kept, not deleted
                    self.commit.deleting.discard(key)
                self.written.add((table, ident))
                if table == "contacts" and value is not None:
                    self.profile_bytes[id(value)] = data
        self.emits.extend(transition.emits)

    def remember(self, decoded: DecodedRecords) -> None:
        """Once committed: keep the records it wrote as decoded, forget the records it deleted.

        A record written is read again at the next event of its subject: her profile after
        each of her logins, her retired summary's chunks after she retires devices. Kept as
        the decision wrote them, which is what decoding their bytes gives, but for a user's:
        the one written holds her retired summary, the record only its header (`Retired`).
        Nothing of a deleted or tombstoned record stays in memory (R16).
        """
        writes, view = self.commit.writes, self.view
        for table, ident in self.written:
            key = self.key(_KINDS[table], ident)
            if not writes[key]:
                decoded.forget([key])
            elif table != "users":
                decoded.keep(key, writes[key], getattr(view, table)[ident])

    def profile_versions(self) -> list[tuple[str, str, int]]:
        """(workspace, contact_id, version) of each profile record this commit wrote."""
        return [
            (self.workspace_id, ident, self.commit.checks.get(self.key("contact", ident), 0) + 1)
            for table, ident in sorted(self.written)
            if table == "contacts"
        ]

    def coalesce(self) -> None:
        """Keep each contact's last profile of the batch only (a tombstone counts).

        `identity.profiles` is compacted: a consumer needs a contact's latest state, and a
        contact that changed with many events of one batch (a device's burst of sessions) would
        otherwise be sent, and kept in the outbox record, once per event (R15).
        """
        last = {emit.key: i for i, emit in enumerate(self.emits) if emit.topic == PROFILES}
        if len(last) < sum(emit.topic == PROFILES for emit in self.emits):
            self.emits = [emit for i, emit in enumerate(self.emits)
                          if emit.topic != PROFILES or last[emit.key] == i]  # fmt: skip

    def encoded(self) -> list[Wire]:
        """The outputs as sent; a profile is encoded once for its record and its message."""
        wires: list[Wire] = []
        for emit in self.emits:
            data = self.profile_bytes.get(id(emit.value)) if emit.topic == PROFILES else None
            if data is not None and emit.key is not None:
                key = emit.key if isinstance(emit.key, bytes) else emit.key.encode()
                wires.append((emit.topic, key, data))
            else:
                wires.append(encode_output(emit))
        return wires

    def mark_processed(self, item: Item, digest: bytes) -> None:
        marker = event_marker(item)
        key = self.marker_key(marker)
        self.commit.checks.setdefault(key, self.read_versions.get(key, 0))
        self.markers[marker] = digest
        self.commit.writes[key] = digest
        self.commit.expiring.add(key)


class Processor:
    """Applies batches of decoded events to the state in a Store."""

    def __init__(
        self,
        store: Store,
        keys: Keys,
        config: CoreConfig,
        *,
        known_devices: int = KNOWN_DEVICES,
        changelog_ttl_s: int | None = None,
    ) -> None:
        """A processor of the state in `store`, under `keys`.

        With `changelog_ttl_s` (the store's expiry of processed-event markers), each batch's
        state changes go out on the state changelog with its outputs; None: no changelog.
        """
        self.store = store
        self.changelog_ttl_s = changelog_ttl_s
        self.keys = keys
        self.config = config
        self.known = KnownDevices(known_devices)
        self.decoded = DecodedRecords()
        self.conflicts = 0  # workspace commits redone after losing a race
        # Outbox records of commits whose outputs a call that raised did not return: a commit
        # whose reply was lost (applied or not), or one applied before a later attempt of the
        # same batch failed. The caller sends them from there (`Outbox.redeliver`).
        self.unsent: list[str] = []
        self._discard: list[str] = []  # delivered outbox records, deleted with the next read

    def forget(self, outbox: Sequence[str]) -> None:
        """These outbox records were delivered: delete them with the next batch's first read.

        That spares a round trip per batch. Until then a crash leaves them to be sent again,
        which is a duplicate, never a loss; `flush` deletes them when no batch comes.
        """
        self._discard += outbox

    async def flush(self) -> None:
        """Delete now the delivered outbox records still waiting for a batch."""
        discard, self._discard = self._discard, []
        try:
            await self.store.delete(discard)
        except BaseException:
            self._discard[:0] = discard
            raise

    async def process(self, items: Sequence[Item]) -> Processed:
        """Apply `items` (in order per workspace); return the outputs to emit and the tally.

        The outputs of every workspace that commits are written in the same commit as an
        outbox record (`<ns>:{ws}:outbox:<id>`): if the worker dies before they are delivered,
        the state is already applied, so a replay would emit nothing; the outbox is what a
        worker sends again (`drain_outbox`).
        """
        tally = Tally()
        await self._confirm_known(items)
        groups = self._browsing_known(items, tally)
        emits: list[Emit] = []
        wires: list[Wire] = []
        outbox: list[str] = []
        profiles: list[tuple[str, str, int]] = []
        if not groups:
            return Processed(emits, tally, outbox, wires)
        pending, prefetch = self._browsing_stored(groups, await self._prefetch(groups), tally)
        try:
            return await self._attempts(pending, prefetch, tally, emits, wires, outbox, profiles)
        except BaseException:
            # Workspaces committed by an earlier attempt have their outputs only in `wires`,
            # which this call no longer returns, and in their outbox records: processing the
            # batch again finds them applied and emits nothing for them.
            if outbox:
                logger.warning("a batch failed after %d workspace commit(s): their outputs are "
                               "sent from the outbox", len(outbox))  # fmt: skip
            self.unsent += outbox
            raise

    async def _attempts(
        self,
        pending: dict[str, list[Item]],
        prefetch: dict[str, list[tuple[str, Record]]],
        tally: Tally,
        emits: list[Emit],
        wires: list[Wire],
        outbox: list[str],
        profiles: list[tuple[str, str, int]],
    ) -> Processed:
        """Decide and commit `pending` until no workspace conflicts; fills the lists given."""
        for attempt in range(MAX_ATTEMPTS):
            if not pending:
                return Processed(emits, tally, outbox, wires, profiles)
            if attempt:
                prefetch = await self._prefetch(pending)
            prepared = []
            for ws, group in pending.items():
                working = _Working(ws, self.keys, self.decoded)
                for key, record in prefetch[ws]:
                    working.learn(key, record)
                prepared.append((working, group))
            await self._speculate(prepared)
            workings = [await self._decide(working, group) for working, group in prepared]
            for working in workings:
                working.coalesce()
            sent = {id(working): working.encoded() for working in workings}
            logged = self.changelog_ttl_s is not None
            for working in workings:
                if working.commit.writes and (working.emits or logged):
                    state = sorted(working.commit.writes) if logged else ()
                    key = working.outbox = self.keys.outbox(working.workspace_id, uuid.uuid4().hex)
                    working.commit.checks[key] = 0
                    working.commit.writes[key] = outbox_blob(sent[id(working)], time.time(), state)
            # A group that wrote nothing needs no commit: its decisions changed no state.
            writing = [w for w in workings if w.commit.writes]
            try:
                committed = await self.store.commit([w.commit for w in writing])
            except BaseException:
                # The commits may have been applied with their replies lost (Redis went away
                # meanwhile): processing again would then find nothing to do, so their
                # outputs are only in these outbox records, for the caller to send.
                self.unsent += [w.outbox for w in writing if w.outbox is not None]
                raise
            outcomes = dict(zip(map(id, writing), committed, strict=True))
            results = [outcomes.get(id(w), True) for w in workings]
            retry: dict[str, list[Item]] = {}
            for working, done in zip(workings, results, strict=True):
                if done:
                    self._learn_devices(working)
                    working.remember(self.decoded)
                    emits.extend(working.emits)
                    wires.extend(sent[id(working)])
                    if logged and working.commit.writes:
                        wires.extend(self._changelog(working.commit))
                    tally.add(working.tally)
                    if working.outbox is not None:
                        outbox.append(working.outbox)
                    profiles += working.profile_versions()
                else:
                    retry[working.workspace_id] = pending[working.workspace_id]
            self.conflicts += len(retry)
            if retry:
                logger.debug("commit conflict on %d workspace(s), attempt %d", len(retry), attempt)
            pending = retry
        message = f"workspaces {sorted(pending)} kept conflicting after {MAX_ATTEMPTS} attempts"
        raise ConflictError(message)

    def _changelog(self, commit: Commit) -> list[Wire]:
        """The changelog records of an applied commit, as wires sent with its outputs."""
        assert self.changelog_ttl_s is not None
        now_ms, prefix = int(time.time() * 1000), self.keys.prefix()
        return [
            (STATE_CHANGELOG, *encode_change(change, prefix))
            for change in changes(commit, self.keys, now_ms=now_ms, ttl_s=self.changelog_ttl_s)
        ]

    def browsing(self, event: InputEvent, record_ms: int | None) -> bool:
        """Whether `event` is a page view of a device known active no later than it.

        Such an event changes nothing: `rules.browsing` decides it in memory, from the first
        activity this worker learnt earlier, which stays right whatever happened since (see
        `pipeline.worker.known`): no Redis, no working copy. The caller counts it as unchanged.
        """
        if type(event) is not PageView:
            return False
        first = self.known.first_activity(event.workspace_id, event.anonymous_id.strip())
        if first is None:
            return False
        try:
            return browsing(event, first, self.config, record_ms=record_ms)
        except Exception:
            return False

    async def _confirm_known(self, items: Sequence[Item]) -> None:
        """Read the batch's workspaces' counts of device erasures before `browsing` (R16).

        A device erased since this worker learnt its first activity must not have its page
        views decided from it; see `pipeline.worker.known`. One read per batch that has page
        views of remembered devices, none otherwise (a workspace's first count comes with its
        first `_prefetch`).
        """
        first_activity = self.known.first_activity
        workspaces = sorted({
            item.event.workspace_id for item in items
            if type(item.event) is PageView
            and first_activity(item.event.workspace_id, item.event.anonymous_id.strip()) is not None
        })  # fmt: skip
        if not workspaces:
            return
        keys = [self.keys.of(ws, "erased", DEVICE_ERASURES) for ws in workspaces]
        for workspace_id, record in zip(workspaces, await self.store.read(keys), strict=True):
            self._confirm(workspace_id, record)

    async def refresh_erasures(self) -> None:
        """Read the counts of device erasures of every workspace remembered (one round trip).

        The agent calls it before a batch at most every `known.ERASURE_CHECK_S`: page views of
        remembered devices are decided at parse, before `process` sees them.
        """
        workspaces = self.known.counted_workspaces()
        if workspaces:
            keys = [self.keys.of(ws, "erased", DEVICE_ERASURES) for ws in workspaces]
            for workspace_id, record in zip(workspaces, await self.store.read(keys), strict=True):
                self._confirm(workspace_id, record)

    def _confirm(self, workspace_id: str, record: Record) -> None:
        try:
            count = ErasureMarker.from_bytes(record.data).at if record.data else 0
        except Exception:
            count = -1  # unreadable: forget what was learnt, and read it again next time
        self.known.confirm(workspace_id, count)

    def _browsing_known(self, items: Sequence[Item], tally: Tally) -> dict[str, list[Item]]:
        """Count the page views `browsing` decides in memory as unchanged; group the rest."""
        groups: dict[str, list[Item]] = {}
        browsing = self.browsing
        for item in items:
            event = item.event
            if browsing(event, item.source.timestamp_ms):
                tally.unchanged += 1
                continue
            groups.setdefault(event.workspace_id, []).append(item)
        return groups

    def _learn_devices(self, working: _Working) -> None:
        """Remember the first activity of the devices a committed change wrote.

        An erasure (R16) is the one change that retracts facts: the devices a batch with an
        erasure wrote are forgotten first, so no page view is decided from what it removed.
        """
        devices, known = working.view.devices, self.known
        erasing = any(table == "erasures" for table, _ in working.written)
        for table, ident in working.written:
            if table != "devices":
                continue
            device = devices.get(ident)
            if erasing or device is None:
                known.forget(working.workspace_id, ident)
            if device is not None:
                known.learn(working.workspace_id, ident, device.first_activity)

    async def _prefetch(self, groups: dict[str, list[Item]]) -> dict[str, list[tuple[str, Record]]]:
        """Read in one round trip what the events will most likely need.

        Per workspace, (key, record) of each event's device, in the order of its events (a
        page view of a device already active needs nothing else), then of what the core
        expects the events to ask for (`rules.likely_needs`) and of their processed-event
        markers.
        """
        of = self.keys.of
        keys: dict[str, list[str]] = {}
        for workspace_id, group in groups.items():
            devices = [of(workspace_id, "dev", item.event.anonymous_id.strip()) for item in group]
            extra: set[str] = set()
            for item in group:
                extra |= self._likely(workspace_id, item)
            if not self.known.counted(workspace_id):
                extra.add(of(workspace_id, "erased", DEVICE_ERASURES))
            keys[workspace_id] = devices + sorted(extra)
        discard, self._discard = self._discard, []
        try:
            records = iter(
                await self.store.read([k for ks in keys.values() for k in ks], discard=discard)
            )
        except BaseException:
            self._discard[:0] = discard
            raise
        read = {ws: [(key, next(records)) for key in ks] for ws, ks in keys.items()}
        for workspace_id, pairs in read.items():
            if not self.known.counted(workspace_id):
                count = self.keys.of(workspace_id, "erased", DEVICE_ERASURES)
                self._confirm(workspace_id, next(r for k, r in pairs if k == count))
        return read

    def _likely(self, workspace_id: str, item: Item) -> set[str]:
        """Keys an event will most likely need besides its device, and its marker.

        A page view read from the store is one of a device this worker does not know yet,
        which is most often a device's first visit (a restarted worker's first page view of
        each device is the exception: it reads two records too many, once); so its device
        is taken to be new, and its first visitor's contact is read with it. A chat needs
        that contact whether its device is new or not.
        """
        of = self.keys.of
        event = checked(item, self.config)
        if isinstance(event, Refusal):
            return set()  # refused without any state: it reads nothing
        try:
            hint = likely_needs(event, self.config, new_device=True)
        except Exception:
            logger.exception("likely_needs failed on event %s", item.event.event_id)
            return set()
        keys = {of(workspace_id, "evt", event_marker(item))}
        for table, kind, _, _ in _TABLES:
            keys.update(of(workspace_id, kind, ident) for ident in getattr(hint, table))
        return keys

    def _browsing_stored(
        self,
        groups: dict[str, list[Item]],
        prefetch: dict[str, list[tuple[str, Record]]],
        tally: Tally,
    ) -> tuple[dict[str, list[Item]], dict[str, list[tuple[str, Record]]]]:
        """Count page views of devices the records just read show active as unchanged.

        Most events of a busy site are these page views. The core decides them from the
        device's first activity alone (`rules.browsing`) and its answer holds whatever the rest
        of the batch or another worker does, so they skip the working copy, the checks and the
        commit. Returned: the other events, with the records read for them.
        """
        rest: dict[str, list[Item]] = {}
        rest_records: dict[str, list[tuple[str, Record]]] = {}
        config = self.config
        for workspace_id, group in groups.items():
            read = prefetch[workspace_id]
            others, records = [], []
            for item, (key, record) in zip(group, read, strict=False):
                if record.data and isinstance(item.event, PageView):
                    try:
                        first = Device.first_activity_of(record.data)
                        self.known.learn(workspace_id, item.event.anonymous_id.strip(), first)
                        event = checked(item, config)
                        unchanged = not isinstance(event, Refusal) and browsing(
                            event, first, config
                        )
                    except Exception:
                        unchanged = False
                    if unchanged:
                        tally.unchanged += 1
                        continue
                others.append(item)
                records.append((key, record))
            if others:
                rest[workspace_id] = others
                rest_records[workspace_id] = records + read[len(group) :]
        return rest, rest_records

    async def _speculate(self, workings: list[tuple[_Working, list[Item]]]) -> None:
        """Load what the batch's events will ask for, a few rounds of one round trip each.

        The core is pure, so running it ahead over the whole batch tells which records each
        event needs; loading them for all events at once spares a round trip per event. Each
        round decides a workspace's events in order, each against the records read plus what
        the events before it decided ahead (`_Ahead`), so that a decision kept for an event
        is most often the one it gets: a login after its device's first page view in the same
        batch is decided once, not ahead and again. An event waits while an earlier event of
        its device still waits for records. Events whose needs depend on an earlier event of
        the same batch still get them one by one later.
        """
        undecided = {id(working): set(map(id, group)) for working, group in workings}
        for round_ in range(SPECULATION_ROUNDS):
            wanted: list[tuple[_Working, str]] = []
            for working, group in workings:
                waiting = undecided[id(working)]
                if not waiting:
                    continue
                keys: set[str] = set()
                overlay = _Overlay(working.view)
                blocked: set[str | None] = set()  # devices with an event still waiting
                for item in group:
                    ahead = working.ahead.get(id(item))
                    if ahead is not None:
                        overlay.absorb(ahead.transition)
                        continue
                    if id(item) not in waiting:
                        continue
                    device = getattr(checked(item, self.config), "anonymous_id", None)
                    if device is not None and device in blocked:  # an erasure has none
                        continue
                    if round_ == 0:
                        # What it needs is known without deciding it twice: a first page
                        # view or chat of a device, or what the loaded records point to.
                        hinted = self._first_visit_needs(working, item) or self._more_needs(
                            working, item
                        )
                        if hinted:
                            keys.update(hinted)
                            blocked.add(device)
                            continue
                    result = decide(item, overlay.view, self.config)
                    if isinstance(result, NeedMore):
                        keys.update(working.missing(result))
                        blocked.add(device)
                        continue
                    working.ahead[id(item)] = _Ahead(result, overlay.basis(result))
                    overlay.absorb(result)
                    waiting.discard(id(item))
                    marker = event_marker(item)
                    if result.writes and marker not in working.markers:
                        keys.add(working.marker_key(marker))
                wanted += [(working, key) for key in sorted(keys)]
            if not wanted:
                return
            records = await self.store.read([key for _, key in wanted])
            for (working, key), record in zip(wanted, records, strict=True):
                working.learn(key, record)

    def _first_visit_needs(self, working: _Working, item: Item) -> list[str]:
        """Missing keys a page view or chat on a device without a record will ask for."""
        event = checked(item, self.config)
        if not isinstance(event, CheckedPageView | CheckedChat):
            return []
        if working.view.devices.get(event.anonymous_id, _MISSING) is not None:
            return []  # the device exists (or was not loaded): no hint
        try:
            hint = likely_needs(event, self.config, new_device=True)
        except Exception:
            return []
        keys = working.missing(hint)
        marker = event_marker(item)
        if keys and marker not in working.markers:
            keys.append(working.marker_key(marker))
        return keys

    def _more_needs(self, working: _Working, item: Item) -> list[str]:
        """Missing keys the records loaded so far say the event will ask for (`likely_more`)."""
        event = checked(item, self.config)
        if isinstance(event, Refusal):
            return []
        try:
            hint = likely_more(event, working.view, self.config)
        except Exception:
            logger.exception("likely_more failed on event %s", item.event.event_id)
            return []
        return working.missing(hint)

    async def _decide(self, working: _Working, group: list[Item]) -> _Working:
        workspace_id = working.workspace_id
        for item in group:
            outcome = await self._decide_one(working, item)
            if isinstance(outcome, Refusal):
                working.tally.rejected[outcome.reason] += 1
                working.emits.append(
                    rejection(
                        item.source,
                        outcome.reason,
                        outcome.detail,
                        workspace_id=workspace_id,
                        input_event_id=item.event.event_id,
                    )
                )
            elif isinstance(outcome, Applied):
                working.tally.applied += 1
            else:
                working.tally.unchanged += 1
        return working

    async def _decide_one(self, working: _Working, item: Item) -> Applied | Unchanged | Refusal:
        ahead = working.ahead.pop(id(item), None)
        if ahead is not None and ahead.holds(working):
            return await self._keep(working, item, ahead.transition)
        while True:
            result = decide(item, working.view, self.config)
            if isinstance(result, Transition):
                break
            keys = working.missing(result)
            if working.unreadable.intersection(keys):
                return Refusal("unreadable_state", "a stored record this event needs cannot be "
                               "read (see the worker's log)")  # fmt: skip
            if not keys:
                message = f"the core asked for records it already has: {result}"
                raise RuntimeError(message)
            for key, record in zip(keys, await self.store.read(keys), strict=True):
                working.learn(key, record)
        return await self._keep(working, item, result)

    async def _keep(
        self, working: _Working, item: Item, result: Transition
    ) -> Applied | Unchanged | Refusal:
        """Keep a decision: refuse a reused event_id, absorb the writes, mark the event."""
        if not result.writes:
            return result.outcome  # nothing changes, so a repeat or a reuse can do no harm
        marker = event_marker(item)
        if marker not in working.markers:
            key = working.marker_key(marker)
            working.learn(key, (await self.store.read([key]))[0])
        seen = working.markers[marker]
        digest = content_digest(item)
        if seen is not None:
            if seen == digest:
                return Unchanged()  # applied before: it changed the state it now finds
            return Refusal("event_id_reused", "this event_id was processed with other content")
        working.absorb(result)
        working.mark_processed(item, digest)
        return result.outcome
