"""The markers' bookkeeping: a marker below one written or read is a loss, never a race."""

from __future__ import annotations

import asyncio

import pytest

from pipeline.ops.restore import Caught
from pipeline.state.base import Change, Keys, Record
from pipeline.state.changelog import encode
from pipeline.state.memory import MemoryStore
from pipeline.worker.durability import GuardedStore, StateGuard, StateLost, new_epoch
from pipeline.worker.emitter import Emitter
from pipeline.worker.outbox import Outbox
from schemas.topics import STATE_CHANGELOG


def guard() -> StateGuard:
    found = StateGuard(MemoryStore(), Keys("t"), "127.0.0.1:1", "t.state.changelog",
                       auto_restore=True)  # fmt: skip
    found.partitions = [0, 1]
    return found


def test_markers_that_only_grow_are_learnt() -> None:
    g = guard()
    g.check([1, 0, 0])  # the epoch, then the markers: an empty changelog
    g.check([1, 5, 0])
    g.check([1, 7, 3])  # other workers moved them
    assert g.known == {0: 7, 1: 3}


def test_a_marker_below_one_read_before_is_a_loss() -> None:
    g = guard()
    g.check([1, 7, 3])
    with pytest.raises(StateLost, match=r"partition 0 7 -> 0"):
        g.check([1, 0, 3])  # a Redis restarted without its last writes
    assert g.known == {0: 7, 1: 3}  # nothing learnt from a read that lost state
    with pytest.raises(StateLost, match="epoch"):
        g.check([0, 7, 3])  # FLUSHALL, then a marker written again
    assert g.total_loss


def test_delivered_offsets_become_markers_one_past_the_highest() -> None:
    g = guard()
    changes = g.delivered([(0, 4), (1, 9), (0, 2)])
    assert {(c.key, c.version) for c in changes} == {
        ("t:changelog:{t}:0", 5),
        ("t:changelog:{t}:1", 10),
    }
    g.check([1, 3, 3])  # not yet written: a read of the older markers is no loss
    g.confirmed(changes)
    assert g.known == {0: 5, 1: 10}
    with pytest.raises(StateLost):
        g.check([1, 3, 10])


def test_a_markers_key_names_its_partition_and_no_record_key_does() -> None:
    keys = Keys("t")
    assert keys.marker_partition(keys.changelog_marker(3)) == 3
    assert keys.marker_partition(keys.of("ws", "dev", "changelog:3")) is None
    assert keys.marker_partition(keys.changelog_epoch()) is None
    assert keys.parse(keys.changelog_marker(3)) is None  # not a record's key
    assert keys.is_changelog(keys.changelog_epoch()) and keys.is_changelog(keys.changelog_marker(0))


async def test_markers_advance_only_over_state_redis_still_holds() -> None:
    store, keys = MemoryStore(), Keys("t")
    epoch, marker = keys.changelog_epoch(), keys.changelog_marker(0)
    assert not await store.advance(epoch, [(marker, 0, 5)])  # no epoch: Redis lost everything
    await store.apply([Change(epoch, 1, b"")])
    assert await store.advance(epoch, [(marker, 0, 5)])
    assert not await store.advance(epoch, [(marker, 9, 12)])  # below what the caller knew
    assert (await store.read([marker]))[0].version == 5


def test_a_read_sent_before_a_confirmation_is_checked_against_what_was_known_then() -> None:
    g = guard()
    g.check([1, 3, 3])
    floor = dict(g.known)  # a batch's read is sent now...
    g.confirmed(g.delivered([(0, 9)]))  # ...a delivery's markers are confirmed meanwhile...
    g.check([1, 3, 3], floor)  # ...and its reply, older than them, is no loss
    with pytest.raises(StateLost):
        g.check([1, 3, 3])  # a read sent after the confirmation finding them older is one


async def test_a_loss_found_by_several_callers_is_caught_up_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    g = guard()
    calls = []

    async def catch_up(*args: object, from_beginning: bool) -> Caught:
        calls.append(from_beginning)
        await asyncio.sleep(0)  # the others find the same loss meanwhile
        return Caught()

    monkeypatch.setattr("pipeline.worker.durability.catch_up", catch_up)
    with pytest.raises(StateLost):
        g.check([0, 0, 0])  # the epoch is gone
    seen = g.restores
    await asyncio.gather(g.recover(), g.recover(seen), g.recover(seen))
    assert calls == [True] and g.restores == seen + 1  # the whole changelog, once
    assert (await g.store.read([g.keys.changelog_epoch()]))[0].version  # the epoch is back
    await g.recover(seen)  # a loss found before that catch-up ended: nothing more to do
    assert calls == [True]


async def test_a_guarded_read_of_lost_state_raises_instead_of_finding_records_absent() -> None:
    g = guard()
    store = GuardedStore(g.store, g)
    contact = g.keys.of("ws", "contact", "c1")
    await g.store.apply([Change(g.keys.changelog_epoch(), 1, b""), Change(contact, 3, b"{}")])
    assert (await store.read([contact]))[0].version == 3
    await g.store.delete([g.keys.changelog_epoch(), contact])  # FLUSHALL
    with pytest.raises(StateLost):
        await store.read([contact])  # never a contact seemingly deleted


async def test_an_epoch_written_again_by_another_worker_holds_back_this_ones_markers() -> None:
    g = guard()
    epoch, marker = g.keys.changelog_epoch(), g.keys.changelog_marker(0)
    first = new_epoch()
    await g.store.apply([Change(epoch, first, b"")])
    g.check([first, 0, 0])
    assert await g.advance(g.delivered([(0, 4)]))
    await g.store.delete([epoch, marker])  # FLUSHALL, then another worker's catch-up:
    again = new_epoch() - 1  # (within the same millisecond or not, a lower version)
    await g.store.apply([Change(epoch, again, b""), Change(marker, 9, b"")])
    # This worker's batch in flight may be missing from what that catch-up applied.
    assert not await g.advance(g.delivered([(0, 6)]))
    seen = g.restores
    g.check([again, 9, 0])  # a read finds the new epoch: a catch-up this worker did not make
    assert g.restores == seen + 1 and g.epoch == again
    assert await g.advance(g.delivered([(0, 6)]))


async def test_an_outbox_sweep_that_finds_state_lost_catches_up_before_it_sends() -> None:
    g = guard()
    store = GuardedStore(g.store, g)
    contact = g.keys.of("ws", "contact", "c1")
    await g.store.apply([Change(g.keys.changelog_epoch(), 1, b""), Change(contact, 3, b"{}")])
    await store.read([contact])  # the epoch is known
    await g.store.delete([g.keys.changelog_epoch(), contact])  # FLUSHALL
    caught: list[int] = []

    async def recover() -> None:  # the changelog applied: the epoch and the contact are back
        caught.append(1)
        await g.store.apply([Change(g.keys.changelog_epoch(), 1, b""), Change(contact, 3, b"{}")])

    sent: list[tuple] = []

    async def send(topic: str, key: bytes | None, value: bytes | None) -> asyncio.Future:
        sent.append((topic, key, value))
        done: asyncio.Future = asyncio.get_running_loop().create_future()
        done.set_result(None)
        return done

    outbox = Outbox(store, g.keys, send, workspaces=["ws"], recover=recover)
    assert await outbox.sweep(0.0) == 0  # nothing undelivered, and no error
    assert caught == [1]  # caught up once, before reading on
    assert (await store.read([contact]))[0].version == 3
    assert not sent


class FailingOver(MemoryStore):
    """A store whose slots can move to other masters, as a Redis Cluster's on a failover."""

    def __init__(self) -> None:
        super().__init__()
        self.failovers = 0

    @property
    def topology(self) -> int:
        return self.failovers


async def test_slots_moved_to_other_masters_are_a_loss_of_everything_since() -> None:
    inner = FailingOver()
    g = StateGuard(inner, Keys("t"), "127.0.0.1:1", "t.state.changelog", auto_restore=True)
    g.partitions = [0, 1]
    store = GuardedStore(inner, g)
    contact = g.keys.of("ws", "contact", "c1")
    await inner.apply([Change(g.keys.changelog_epoch(), 1, b""), Change(contact, 3, b"{}")])
    assert (await store.read([contact]))[0].version == 3
    inner.failovers += 1  # a master died and its replica took over: the markers look the same
    with pytest.raises(StateLost, match="failover"):
        await store.read([contact])
    assert g.total_loss  # the whole changelog is applied, not its tail from the markers
    assert (await store.read([contact]))[0].version == 3  # once: the next read goes on


class _Message:
    """What the emitter holds of an event: its partition, offset and reference count."""

    def __init__(self, offset: int) -> None:
        self.tp, self.offset, self.refs = ("t.telemetry.page_view", 0), offset, 0

    def incref(self) -> None:
        self.refs += 1


class _Event:
    def __init__(self, offset: int) -> None:
        self.message = _Message(offset)


class _Delivered:
    """The broker's answer to a send (aiokafka's RecordMetadata): where the record went."""

    def __init__(self, offset: int) -> None:
        self.partition, self.offset = 0, offset


async def test_a_batch_committed_before_a_catch_up_applies_its_records_again() -> None:
    # A batch commits, Redis loses it (a failover) and a catch-up ends before the batch's
    # records are on the changelog, before the batch is even sent: the catch-up cannot have
    # them, so once the broker has them the batch applies them again before the markers move.
    g = guard()
    g.partitions = [0]
    contact = g.keys.of("ws", "contact", "c1")
    await g.store.apply([Change(g.keys.changelog_epoch(), 1, b"")])
    g.epoch = 1
    committed_at = g.restores  # the worker's count before the commit
    g.restores += 1  # the catch-up, ended before the batch is sent
    offsets = iter(range(100))

    async def send(topic: str, key: bytes | None, value: bytes | None) -> asyncio.Future:
        done: asyncio.Future = asyncio.get_running_loop().create_future()
        done.set_result(_Delivered(next(offsets)))
        return done

    tasks: list[asyncio.Task] = []
    acked: list[_Event] = []

    async def ack(event: _Event) -> None:
        acked.append(event)

    emitter = Emitter(send, Outbox(g.store, g.keys, send), ack=ack, forget=lambda _: None,
                      in_background=lambda c: tasks.append(asyncio.ensure_future(c)), guard=g)  # fmt: skip
    record = encode(Change(contact, 4, b"{}"), g.keys.prefix())
    event = _Event(7)
    await emitter.emit([event], [(STATE_CHANGELOG, *record)], [], [], restores=committed_at)
    await asyncio.gather(*tasks)
    assert acked == [event]
    assert (await g.store.read([contact]))[0] == Record(4, b"{}")  # applied again
    assert (await g.store.read([g.keys.changelog_marker(0)]))[0].version == 1  # then moved
