"""A synchronous, in-memory driver of the pure core: the reference the tests compare against.

It keeps every record in dicts and answers the core's `NeedMore` requests from them, so it
applies events exactly as the worker does, minus Kafka and Redis. Fault and replay tests use
its final profiles as the expected outcome of a fault-free run.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from pipeline.core.events import check
from pipeline.core.facts import (
    Chunk,
    Device,
    EmailEntry,
    ErasureMarker,
    Retired,
    RetiredChunk,
    SettledPart,
    TokenUses,
    User,
    retired_idents,
    summary_idents,
)
from pipeline.core.model import Emit, NeedMore, Refusal, Transition, Unchanged, View
from pipeline.core.rules import CoreConfig, apply
from schemas import InputEvent, Profile

TABLES = ("devices", "users", "emails", "contacts", "tokens", "erasures", "chunks")


@dataclass
class Oracle:
    """All state of all workspaces in memory."""

    config: CoreConfig
    devices: dict[tuple[str, str], Device] = field(default_factory=dict)
    users: dict[tuple[str, str], User] = field(default_factory=dict)
    emails: dict[tuple[str, str], EmailEntry] = field(default_factory=dict)
    contacts: dict[tuple[str, str], Profile | None] = field(default_factory=dict)
    tokens: dict[tuple[str, str], TokenUses] = field(default_factory=dict)
    erasures: dict[tuple[str, str], ErasureMarker] = field(default_factory=dict)
    chunks: dict[tuple[str, str], Chunk] = field(default_factory=dict)
    applied: dict[tuple[str, str, str, str], InputEvent] = field(default_factory=dict)
    emitted: list[Emit] = field(default_factory=list)

    def apply(
        self, event: InputEvent, *, record_ms: int | None = None, dedup: bool = True
    ) -> Transition:
        """Apply one event; return its transition (outputs are also kept in `emitted`).

        With `dedup` off the processed-event marker is ignored, to test that the transition
        itself is idempotent.
        """
        ws = event.workspace_id
        marker = (ws, event.topic, event.anonymous_id.strip(), event.event_id)  # R12
        if dedup and marker in self.applied:
            return Transition(Unchanged())
        checked = check(event, self.config, record_ms=record_ms)  # once, as the worker does
        if isinstance(checked, Refusal):
            return Transition(checked)  # refused without any state: nothing written or sent
        view = View(ws)
        while True:
            result = apply(checked, view, self.config)
            if isinstance(result, Transition):
                break
            self._load(view, result)
        for table in TABLES:
            records = getattr(self, table)
            for key, value in getattr(result, table).items():
                if value is None and table != "contacts":  # deleted (an erasure, R16)
                    records.pop((ws, key), None)
                elif table == "users" and value.retired is not None:
                    records[(ws, key)] = User.from_bytes(value.to_bytes())  # as stored: a header
                else:  # a None contact is a tombstone
                    records[(ws, key)] = value
        if result.writes:
            self.applied[marker] = event
        self.emitted.extend(result.emits)
        return result

    def retired(self, workspace_id: str, user_id: str) -> Retired | None:
        """A user's retired summary whole, as her records and chunk records keep it (R15)."""
        user = self.users.get((workspace_id, user_id))
        retired = user.retired if user is not None else None
        if retired is None or retired.inline:
            return retired
        chunks = self.chunks
        every: list[str] = []
        for ident in retired_idents(user_id, retired):
            chunk = chunks[workspace_id, ident]
            assert isinstance(chunk, RetiredChunk)
            every += chunk.ids
        part_ident, devices_ident = summary_idents(user_id)
        part, listed = chunks[workspace_id, part_ident], chunks[workspace_id, devices_ident]
        assert isinstance(part, RetiredChunk) and isinstance(listed, RetiredChunk)
        counted = {a: d.retired_for(user_id) for (ws, a), d in self.devices.items()
                   if ws == workspace_id}  # fmt: skip
        return replace(
            retired,
            ids=tuple(sorted(every)),
            uncounted=tuple(sorted(a for a in every if counted.get(a) is False)),
            part=part.part or SettledPart(),
            devices=listed.devices,
            loaded=True,
        )

    def _load(self, view: View, need: NeedMore) -> None:
        ws = view.workspace_id
        for table in TABLES:
            records, loaded = getattr(self, table), getattr(view, table)
            for key in getattr(need, table):
                loaded[key] = records.get((ws, key))

    def profiles(self, workspace_id: str | None = None) -> dict[str, Profile]:
        """The current profile of every contact (of one workspace, or all), by contact_id."""
        return {
            cid: profile
            for (ws, cid), profile in self.contacts.items()
            if profile is not None and workspace_id in (None, ws)
        }
