"""The worker's loop in parts, deterministically: decoding, the outbox, the emitter, retries.

In-memory store and a fake producer (pure unit tests); the same behaviour through the real
broker and Redis is in tests/integration/test_faults.py and test_partitioners.py.
"""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import orjson

from pipeline.core import ids
from pipeline.core.rules import CoreConfig
from pipeline.state.base import Commit, Keys
from pipeline.state.memory import MemoryStore
from pipeline.worker.codec import Item, Source, decode
from pipeline.worker.decoding import decode_batch
from pipeline.worker.emitter import Emitter
from pipeline.worker.outbox import Outbox
from pipeline.worker.processor import Processor
from tests.support import events as ev

SECRET = "loop-secret-0123456789abcdef0123456"
CONFIG = CoreConfig(secrets={"ws": (SECRET.encode(),)})
KEYS = Keys("t")


class FakeProducer:
    """Records what is sent; every send is delivered at once unless `refuse` is set."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes | None, bytes | None]] = []
        self.refuse = 0  # refuse this many sends

    async def send(self, topic: str, key: bytes | None, value: bytes | None) -> asyncio.Future:
        future = asyncio.get_running_loop().create_future()
        if self.refuse:
            self.refuse -= 1
            future.set_exception(ConnectionError("broker away"))
        else:
            self.sent.append((topic, key, value))
            future.set_result(None)
        return future

    def profiles(self) -> dict[str, dict | None]:
        """The compacted view: last value sent per contact."""
        return {k.decode(): orjson.loads(v) if v else None
                for t, k, v in self.sent if t == "identity.profiles"}  # fmt: skip


def item(event: dict, topic: str, offset: int = 0) -> Item:
    decoded = decode(Source(topic, 0, offset, event["anonymous_id"].encode(), orjson.dumps(event),
                            None))  # fmt: skip
    assert isinstance(decoded, Item)
    return decoded


def message(topic: str, value: bytes, offset: int, partition: int = 0) -> SimpleNamespace:
    return SimpleNamespace(topic=topic, partition=partition, offset=offset, key=b"k", value=value,
                           timestamp=1795514400.0)  # fmt: skip


def test_a_batch_decodes_into_items_rejections_and_browsing_page_views() -> None:
    view = orjson.dumps(ev.page_view("ws", "d1", "2026-11-24T10:00:00Z"))
    messages = [message("p.telemetry.page_view", view, 0),
                message("p.telemetry.page_view", b"not json", 1),
                message("p.telemetry.page_view", view, 2)]  # fmt: skip
    logical = {"p.telemetry.page_view": "telemetry.page_view"}
    decoded = decode_batch(messages, logical, lambda event, stamp: False)
    assert [i.source.offset for i in decoded.items] == [0, 2]
    assert decoded.items[0].source.timestamp_ms == 1795514400000
    (rejected,) = decoded.rejected
    assert (rejected.value.reason, rejected.value.source_topic) == (
        "invalid_json",
        "p.telemetry.page_view",
    )
    assert decoded.topics == {"telemetry.page_view": 3}
    in_memory = decode_batch(messages, logical, lambda event, stamp: True)
    assert (in_memory.browsing, len(in_memory.items), len(in_memory.rejected)) == (2, 0, 1)


async def test_the_outbox_sends_events_as_they_were_and_profiles_as_they_are_now() -> None:
    store, producer = MemoryStore(), FakeProducer()
    processor = Processor(store, KEYS, CONFIG)
    login = ev.login("ws", "d1", "2026-11-24T10:00:00Z", "u1", SECRET)
    first = await processor.process([item(ev.page_view("ws", "d1", "2026-11-24T09:59:00Z"),
                                          "telemetry.page_view"),
                                     item(login, "telemetry.login", 1)])  # fmt: skip
    (entry,) = first.outbox  # never delivered: the worker died
    user = ids.user_contact_id("ws", "u1")
    later = ev.login("ws", "d2", "2026-11-24T11:00:00Z", "u1", SECRET, name="Ursula")
    second = await processor.process([item(later, "telemetry.login", 2)])
    processor.forget(second.outbox)  # this one was delivered
    await processor.flush()
    sent = await Outbox(store, KEYS, producer.send).drain(0.0)
    assert sent == len(first.wires)
    topics = [t for t, _, _ in producer.sent]
    assert topics.count("identity.merged") == 1
    assert producer.profiles()[user]["name"] == "Ursula"  # the profile as it is now
    assert entry not in store.records


async def test_an_unreadable_outbox_record_is_skipped() -> None:
    store, producer = MemoryStore(), FakeProducer()
    await store.commit([Commit(writes={KEYS.outbox("ws", "junk"): b"\xff"})])
    assert await Outbox(store, KEYS, producer.send).drain(0.0) == 0
    assert producer.sent == [] and KEYS.outbox("ws", "junk") in store.records


def held_events(*offsets: tuple[int, int]) -> list[SimpleNamespace]:
    events = []
    for partition, offset in offsets:
        msg = SimpleNamespace(tp=("t", partition), offset=offset, refs=0)
        msg.incref = lambda m=msg: setattr(m, "refs", m.refs + 1)
        events.append(SimpleNamespace(message=msg))
    return events


async def test_the_emitter_holds_the_earliest_event_of_each_partition_until_delivered() -> None:
    store, producer = MemoryStore(), FakeProducer()
    acked: list = []
    tasks: list[asyncio.Task] = []

    async def ack(event) -> None:
        acked.append(event)

    forgotten: list = []
    emitter = Emitter(producer.send, Outbox(store, KEYS, producer.send), ack=ack,
                      forget=forgotten.extend,
                      in_background=lambda c: tasks.append(asyncio.ensure_future(c)))  # fmt: skip
    events = held_events((0, 7), (0, 5), (1, 3))
    await emitter.emit(events, [("identity.merged", b"k", b"{}")], ["outbox-1"])
    assert [e.message.offset for e in events if e.message.refs] == [5, 3]
    await asyncio.gather(*tasks)
    assert sorted(e.message.offset for e in acked) == [3, 5]
    assert forgotten == ["outbox-1"]


async def test_a_profile_delivered_after_a_newer_commit_is_sent_again_as_it_is_now() -> None:
    # Two workers commit one user's profile in turn (v1, then v2) and their sends reach the
    # broker in the other order; the stale sender finds the newer version and sends it last.
    store = MemoryStore()
    one, two = Processor(store, KEYS, CONFIG), Processor(store, KEYS, CONFIG)
    first = await one.process([item(ev.login("ws", "d1", "2026-11-24T10:00:00Z", "u1", SECRET),
                                    "telemetry.login")])  # fmt: skip
    second = await two.process([item(ev.login("ws", "d2", "2026-11-24T11:00:00Z", "u1", SECRET,
                                              name="Ursula"), "telemetry.login", 1)])  # fmt: skip
    producer, tasks = FakeProducer(), []

    async def ack(event) -> None:
        return None

    emitter = Emitter(producer.send, Outbox(store, KEYS, producer.send), ack=ack,
                      forget=lambda entries: None,
                      in_background=lambda c: tasks.append(asyncio.ensure_future(c)))  # fmt: skip
    await emitter.emit([], second.wires, second.outbox, second.profiles)
    await asyncio.gather(*tasks)
    await emitter.emit([], first.wires, first.outbox, first.profiles)  # the stale one, last
    await asyncio.gather(*tasks)
    user = ids.user_contact_id("ws", "u1")
    assert producer.profiles()[user]["name"] == "Ursula"
    assert producer.profiles()[user]["anonymous_ids"] == ["d1", "d2"]


async def test_a_refused_delivery_is_sent_again_from_the_outbox() -> None:
    store, producer = MemoryStore(), FakeProducer()
    processor = Processor(store, KEYS, CONFIG)
    done = await processor.process([item(ev.page_view("ws", "d1", "2026-11-24T10:00:00Z"),
                                         "telemetry.page_view")])  # fmt: skip
    producer.refuse = 1
    tasks: list[asyncio.Task] = []

    async def ack(event) -> None:
        return None

    outbox = Outbox(store, KEYS, producer.send)
    emitter = Emitter(producer.send, outbox, ack=ack, forget=processor.forget,
                      in_background=lambda c: tasks.append(asyncio.ensure_future(c)))  # fmt: skip
    original = outbox.redeliver
    outbox.redeliver = lambda entries: original(entries, first_delay_s=0)  # type: ignore[method-assign]
    await emitter.emit(held_events((0, 1)), done.wires, done.outbox, done.profiles)
    await asyncio.gather(*tasks)
    assert [t for t, _, _ in producer.sent] == ["identity.profiles"]
    assert not [k for k in store.records if k.startswith("t:outbox:")]


class RacingStore(MemoryStore):
    """Another worker commits to a record just before this one's first commit."""

    def __init__(self, key: str) -> None:
        super().__init__()
        self.key, self.raced = key, False

    async def commit(self, commits):
        if not self.raced:
            self.raced = True
            version = self.records.get(self.key)
            await super().commit([Commit(checks={self.key: version.version if version else 0},
                                         writes={self.key: self.records[self.key].data})])  # fmt: skip
        return await super().commit(commits)


async def test_a_lost_compare_and_set_is_decided_again() -> None:
    store = MemoryStore()
    warm = Processor(store, KEYS, CONFIG)
    await warm.process(
        [item(ev.page_view("ws", "d1", "2026-11-24T10:00:00Z"), "telemetry.page_view")]
    )
    racing = RacingStore(KEYS.of("ws", "dev", "d1"))
    racing.records = dict(store.records)
    processor = Processor(racing, KEYS, CONFIG)
    chat = ev.chat_start("ws", "d1", "2026-11-24T10:05:00Z", "conv-1")
    result = await processor.process([item(chat, "telemetry.chat_start", 1)])
    assert processor.conflicts == 1  # lost once, re-read and decided again
    assert result.tally.applied == 1
    (profile,) = [e.value for e in result.emits if e.topic == "identity.profiles"]
    assert (profile.type, profile.conversation_ids) == ("lead", ["conv-1"])
