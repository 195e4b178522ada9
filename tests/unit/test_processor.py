"""The edge's batch logic on the in-memory store: replays, reused event_ids, core failures."""

from __future__ import annotations

import orjson
import pytest

from pipeline import processor as processor_module
from pipeline.codec import Item, Source, decode
from pipeline.core.rules import CoreConfig
from pipeline.processor import Processor
from pipeline.state.base import Keys
from pipeline.state.memory import MemoryStore
from tests.support import events as ev

SECRET = "processor-secret-0123456789abcdef0"
CONFIG = CoreConfig(secrets={"ws": (SECRET.encode(),)})


def item(event: dict, offset: int = 0, topic: str = "telemetry.page_view") -> Item:
    decoded = decode(Source(topic, 0, offset, b"k", orjson.dumps(event)))
    assert isinstance(decoded, Item)
    return decoded


async def test_a_replayed_batch_changes_nothing_and_emits_nothing() -> None:
    proc = Processor(MemoryStore(), Keys("t"), CONFIG)
    batch = [item(ev.page_view("ws", "d1", "2026-11-24T10:00:00Z")),
             item(ev.login("ws", "d1", "2026-11-24T10:01:00Z", "u1", SECRET), 1, "telemetry.login")]  # fmt: skip
    first = await proc.process(batch)
    assert (
        first.tally.applied == 2 and len(first.emits) == 4
    )  # visitor, merged, visitor merged away, user
    (outbox,) = first.outbox  # the outputs are kept with the state until delivered
    _, kept = processor_module.outbox_records(proc.store.records[outbox].data)
    assert [topic for topic, _, _ in kept] == [e.topic for e in first.emits]
    await proc.store.delete([outbox])
    records = dict(proc.store.records)
    again = await proc.process(batch)
    assert (again.tally.applied, again.tally.unchanged, again.emits, again.outbox) == (0, 2, [], [])
    assert proc.store.records == records


async def test_an_event_id_reused_with_other_content_is_refused() -> None:
    proc = Processor(MemoryStore(), Keys("t"), CONFIG)
    first = ev.page_view("ws", "d1", "2026-11-24T10:00:00Z")
    await proc.process([item(first)])
    result = await proc.process([item({**first, "anonymous_id": "d2"}, 1)])
    assert result.tally.rejected == {"event_id_reused": 1}
    assert [e.value.reason for e in result.emits] == ["event_id_reused"]


async def test_a_failing_core_refuses_that_event_only(monkeypatch: pytest.MonkeyPatch) -> None:
    real_apply = processor_module.apply

    def flaky(event, view, config, *, record_ms=None):
        if event.anonymous_id == "poison":
            raise KeyError("a bug")
        return real_apply(event, view, config, record_ms=record_ms)

    monkeypatch.setattr(processor_module, "apply", flaky)
    proc = Processor(MemoryStore(), Keys("t"), CONFIG)
    result = await proc.process([item(ev.page_view("ws", "poison", "2026-11-24T10:00:00Z")),
                                 item(ev.page_view("ws", "d1", "2026-11-24T10:00:00Z"), 1)])  # fmt: skip
    assert result.tally.rejected == {"internal_error": 1} and result.tally.applied == 1
    assert {e.topic for e in result.emits} == {"identity.rejected", "identity.profiles"}
