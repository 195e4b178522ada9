"""A synchronous, in-memory driver of the pure core: the reference the tests compare against.

It keeps every record in dicts and answers the core's `NeedMore` requests from them, so it
applies events exactly as the worker does, minus Kafka and Redis. Fault and replay tests use
its final profiles as the expected outcome of a fault-free run.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from pipeline.core.events import check
from pipeline.core.facts import Device, DeviceChunk, EmailEntry, ErasureMarker, TokenUses, User
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
    chunks: dict[tuple[str, str], DeviceChunk] = field(default_factory=dict)
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
                else:  # a None contact is a tombstone
                    records[(ws, key)] = value
        if result.writes:
            self.applied[marker] = event
        self.emitted.extend(result.emits)
        return result

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
