"""Page views of devices a worker knows to be active are decided without reading their records.

A batch reads one key besides: its workspace's count of device erasures (R16).
"""

from __future__ import annotations

from collections.abc import Sequence

import orjson

from pipeline.core.ids import visitor_contact_id
from pipeline.core.model import profile_from_bytes
from pipeline.core.rules import CoreConfig
from pipeline.state.base import Keys, Record
from pipeline.state.memory import MemoryStore
from pipeline.worker.codec import Item, Source, decode
from pipeline.worker.known import KnownDevices
from pipeline.worker.processor import Processor
from tests.support import events as ev

SECRET = "known-devices-secret-0123456789ab"
CONFIG = CoreConfig(secrets={"ws": (SECRET.encode(),)})
T10 = 1795514400000  # 2026-11-24T10:00:00Z in epoch ms
COUNT = "t:{ws}:erased:devices"  # the workspace's count of device erasures


class CountingStore(MemoryStore):
    """The in-memory store, counting the keys read."""

    def __init__(self) -> None:
        super().__init__()
        self.keys_read: list[str] = []

    async def read(self, keys: Sequence[str], *, discard: Sequence[str] = ()) -> list[Record]:
        self.keys_read += keys
        return await super().read(keys, discard=discard)


def page_view(anon: str, ts: str, offset: int = 0) -> Item:
    value = orjson.dumps(ev.page_view("ws", anon, ts))
    decoded = decode(Source("telemetry.page_view", 0, offset, anon.encode(), value))
    assert isinstance(decoded, Item)
    return decoded


def test_the_earliest_activity_learnt_is_kept() -> None:
    known = KnownDevices(10)
    assert known.first_activity("ws", "d1") is None
    known.learn("ws", "d1", T10)
    known.learn("ws", "d1", T10 + 60_000)  # an older read: activity only moves earlier
    assert known.first_activity("ws", "d1") == T10
    known.learn("ws", "d1", T10 - 60_000)
    assert known.first_activity("ws", "d1") == T10 - 60_000
    known.learn("ws", "d2", None)  # a device without activity (a login only) is not known
    assert known.first_activity("ws", "d2") is None
    assert known.first_activity("other", "d1") is None  # workspaces never mix (R13)


def test_the_oldest_learnt_are_forgotten_past_the_limit() -> None:
    known = KnownDevices(10)
    for i in range(11):
        known.learn("ws", f"d{i}", T10 + i)
    assert len(known) == 10
    assert known.first_activity("ws", "d0") is None
    assert known.first_activity("ws", "d10") == T10 + 10
    off = KnownDevices(0)
    off.learn("ws", "d1", T10)
    assert off.first_activity("ws", "d1") is None


async def test_a_known_device_browsing_reads_nothing() -> None:
    store = CountingStore()
    proc = Processor(store, Keys("t"), CONFIG)
    first = await proc.process([page_view("d1", "2026-11-24T10:00:00Z")])
    assert first.tally.applied == 1  # d1's first visit: a new visitor
    store.keys_read.clear()
    later = await proc.process([page_view("d1", "2026-11-24T10:05:00Z", 1),
                                page_view("d1", "2026-11-24T10:00:00Z", 2)])  # fmt: skip
    assert (later.tally.unchanged, later.emits, store.keys_read) == (2, [], [COUNT])


async def test_a_device_another_worker_created_is_learnt_from_the_read() -> None:
    store = CountingStore()
    await Processor(store, Keys("t"), CONFIG).process([page_view("d1", "2026-11-24T10:00:00Z")])
    other = Processor(store, Keys("t"), CONFIG)
    first = await other.process([page_view("d1", "2026-11-24T10:05:00Z", 1)])
    assert first.tally.unchanged == 1 and store.keys_read  # read once ...
    store.keys_read.clear()
    again = await other.process([page_view("d1", "2026-11-24T10:06:00Z", 2)])
    assert again.tally.unchanged == 1 and store.keys_read == [COUNT]  # ... then known


async def test_a_page_view_before_the_known_first_activity_still_counts() -> None:
    """A late page view moves the visitor's start earlier: the cache must not swallow it."""
    store = CountingStore()
    proc = Processor(store, Keys("t"), CONFIG)
    await proc.process([page_view("d1", "2026-11-24T10:00:00Z")])
    late = await proc.process([page_view("d1", "2026-11-24T09:30:00Z", 1)])
    assert late.tally.applied == 1
    contact = visitor_contact_id("ws", "d1", "origin")
    stored = profile_from_bytes(store.records[f"t:{{ws}}:contact:{contact}"].data)
    assert stored.created_at.isoformat() == "2026-11-24T09:30:00+00:00"
    assert proc.known.first_activity("ws", "d1") == T10 - 30 * 60_000


def erase_item(subject: str, ts: str, offset: int = 0) -> Item:
    from pipeline.core.erasure import erase_request

    message = erase_request("ws", subject, SECRET.encode(), event_id=f"erase-{offset}",
                            timestamp=ts)  # fmt: skip
    key = subject.encode()
    decoded = decode(Source("privacy.erase", 0, offset, key, orjson.dumps(message)))
    assert isinstance(decoded, Item)
    return decoded


async def test_a_device_erased_by_another_worker_is_not_decided_from_what_was_learnt() -> None:
    """d1 browses at 10:00 (worker A learns it); worker B erases d1 at 10:30.

    On A, a page view of d1 stamped 10:20 is refused `erased` (before the erasure), and one
    stamped 10:40 begins a new visitor: d1's first visitor is created anew, at 10:40.
    """
    store = CountingStore()
    a, b = Processor(store, Keys("t"), CONFIG), Processor(store, Keys("t"), CONFIG)
    await a.process([page_view("d1", "2026-11-24T10:00:00Z")])
    await a.process([page_view("d1", "2026-11-24T10:05:00Z", 1)])
    erased = await b.process([erase_item("device:d1", "2026-11-24T10:30:00Z")])
    assert erased.tally.applied == 1
    before = await a.process([page_view("d1", "2026-11-24T10:20:00Z", 2)])
    assert before.tally.unchanged == 0 and before.tally.applied == 0
    assert [e.value.reason for e in before.emits if e.topic == "identity.rejected"] == ["erased"]
    after = await a.process([page_view("d1", "2026-11-24T10:40:00Z", 3)])
    assert after.tally.applied == 1
    contact = visitor_contact_id("ws", "d1", "origin")
    stored = profile_from_bytes(store.records[f"t:{{ws}}:contact:{contact}"].data)
    assert stored is not None and stored.created_at.isoformat() == "2026-11-24T10:40:00+00:00"


async def test_the_worker_that_erases_a_device_forgets_it_at_once() -> None:
    """d1 browses at 10:00 and is erased at 10:30 on the same worker.

    Page views are decided at parse (`Processor.browsing`) before the counts of device erasures
    are read again: the worker that committed the erasure must not remember d1 meanwhile, so a
    page view stamped 10:20 goes to the store and is refused `erased`.
    """
    store = CountingStore()
    worker = Processor(store, Keys("t"), CONFIG)
    await worker.process([page_view("d1", "2026-11-24T10:00:00Z")])
    late = page_view("d1", "2026-11-24T10:20:00Z", 1)
    assert worker.browsing(late.event, None)  # learnt: decided in memory
    await worker.process([erase_item("device:d1", "2026-11-24T10:30:00Z")])
    assert not worker.browsing(late.event, None)
    refused = await worker.process([late])
    assert [e.value.reason for e in refused.emits if e.topic == "identity.rejected"] == ["erased"]
