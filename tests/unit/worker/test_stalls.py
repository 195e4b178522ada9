"""Which input partitions count as stalled: behind their end, offset unmoved for a minute."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from pipeline.worker.stalls import StallWatch, describe, fetch_again

TP = ("telemetry.logout", 2)


def test_a_partition_behind_its_end_and_unmoved_is_reported_each_stall_time() -> None:
    watch = StallWatch(stall_s=60)
    assert not watch.observe(TP, 0, 6, now=0)
    assert not watch.observe(TP, 0, 6, now=59)
    assert watch.observe(TP, 0, 6, now=60)
    assert not watch.observe(TP, 0, 6, now=100)
    assert watch.observe(TP, 0, 6, now=120)  # still stalled a minute later: again
    assert watch.stalled == {TP}


def test_a_partition_that_moves_or_is_at_its_end_is_not_stalled() -> None:
    watch = StallWatch(stall_s=60)
    for now, done in ((0, 0), (40, 1), (80, 2), (120, 3)):  # slow, but moving
        assert not watch.observe(TP, done, 10, now=now)
    idle = ("telemetry.signup", 0)
    for now in (0, 60, 600):  # nothing to read
        assert not watch.observe(idle, 4, 4, now=now)
    assert watch.stalled == set()


def test_a_stalled_partition_that_moves_again_is_no_longer_counted() -> None:
    watch = StallWatch(stall_s=60)
    watch.observe(TP, 0, 6, now=0)
    assert watch.observe(TP, 0, 6, now=61)
    assert not watch.observe(TP, 3, 6, now=62)
    assert watch.stalled == set()
    assert not watch.observe(TP, 3, 6, now=100)
    assert watch.observe(TP, 3, 6, now=122)  # stalled again, reported again
    assert watch.stalled == {TP}


def test_partitions_no_longer_assigned_are_forgotten() -> None:
    watch = StallWatch(stall_s=60)
    other = ("telemetry.login", 1)
    watch.observe(TP, 0, 6, now=0)
    watch.observe(other, 0, 6, now=0)
    watch.observe(TP, 0, 6, now=60)
    watch.keep({other})
    assert watch.stalled == set() and set(watch.seen) == {other}


def test_what_cannot_be_read_of_a_consumer_is_named_not_raised() -> None:
    faust_only = SimpleNamespace(flow_active=True, _active_partitions={TP},
                                 _paused_partitions=set(), _buffered_partitions={TP})  # fmt: skip
    text = describe(faust_only, TP)
    assert text.startswith("Faust: flow active True, partition active True, paused False, "
                           "paused for buffer pressure True; aiokafka: unreadable (")  # fmt: skip


class Seeking(SimpleNamespace):
    """Faust's consumer as `fetch_again` uses it: its partition sets, and seeks recorded."""

    async def seek(self, tp: Any, offset: int) -> None:
        self.seeks.append((tp, offset))


async def test_a_stalled_partition_faust_left_out_is_put_back_and_fetched_again() -> None:
    consumer = Seeking(_active_partitions=set(), _paused_partitions=set(),
                       _buffered_partitions={TP}, seeks=[])  # fmt: skip
    await fetch_again(consumer, TP, 4)
    assert consumer._active_partitions == {TP} and consumer._buffered_partitions == set()
    assert consumer.seeks == [(TP, 4)]


async def test_a_partition_faust_paused_stays_paused_and_is_fetched_again() -> None:
    consumer = Seeking(_active_partitions=set(), _paused_partitions={TP},
                       _buffered_partitions=set(), seeks=[])  # fmt: skip
    await fetch_again(consumer, TP, 0)
    assert consumer._active_partitions == set() and consumer.seeks == [(TP, 0)]
