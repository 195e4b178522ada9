"""Gathering takes into batches: when, up to what, and which events are held until processed.

The stream here is a stand-in for Faust's `take_events` (pure control flow); the gathering
against the real broker and a real worker is in tests/integration/test_batching.py.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest

from pipeline.worker.batching import gathered, should_gather


@dataclass
class Message:
    tp: str
    offset: int
    refcount: int = 1  # Faust's own reference, let go by `take_events` on the next take

    def incref(self) -> None:
        self.refcount += 1


@dataclass
class Event:
    message: Message


@dataclass
class Takes:
    """Takes of events in partitions "a" and "b", acked as Faust acks them: on the next take."""

    takes: list[list[Event]]
    log: list[str] = field(default_factory=list)
    blocked: asyncio.Event | None = None  # takes after the first wait for this

    async def __aiter__(self) -> AsyncIterator[list[Event]]:
        previous: list[Event] = []
        for index, take in enumerate(self.takes):
            if index and self.blocked is not None:
                await self.blocked.wait()
            for event in previous:  # what `take_events` does once asked for the next take
                event.message.refcount -= 1
            self.log.append(f"take {index}")
            previous = take
            yield take


def events(tp: str, offsets: range) -> list[Event]:
    return [Event(Message(tp, offset)) for offset in offsets]


async def ack(event: Event) -> None:
    event.message.refcount -= 1


@pytest.mark.parametrize(
    ("taken", "last", "marks", "expected"),
    [
        (90, {"a": 89}, {"a": 500}, True),  # 410 waiting: enough to fill the batch of 500
        (90, {"a": 89}, {"a": 499}, False),  # 409: a caught-up worker does not wait for more
        (90, {"a": 89, "b": 7}, {"a": 300, "b": 208}, True),  # 210 + 200, across partitions
        (90, {"a": 89}, {"b": 10_000}, False),  # only the batch's partitions count
        (90, {"a": 89}, {}, False),  # high watermarks not known yet: nothing known waiting
        (500, {"a": 499}, {"a": 10_000}, False),  # full
    ],
)
def test_takes_are_gathered_only_when_enough_waits_to_fill_the_batch(
    taken: int, last: dict[str, int], marks: dict[str, int], expected: bool
) -> None:
    assert should_gather(taken, 500, last, marks.get) is expected


async def test_behind_takes_are_gathered_up_to_the_size_and_held_until_processed() -> None:
    takes = Takes([events("a", range(0, 90)), events("a", range(90, 180)),
                   events("b", range(0, 90)), events("a", range(180, 270))])  # fmt: skip
    marks = {"a": 10_000, "b": 10_000}  # far behind
    batches = gathered(aiter(takes), size=250, gather_s=1.0, highwater=marks.get, ack=ack)
    first = await anext(batches)
    # Three takes (270 events), the third one crossing the size; the fourth is not asked for.
    assert [e.message.offset for e in first[:3]] == [0, 1, 2] and len(first) == 270
    assert takes.log == ["take 0", "take 1", "take 2"]
    head_a, head_b = first[0].message, first[180].message
    # Faust let go of the first two takes, but each partition's earliest event is still held:
    # nothing of the batch can be committed while it is being processed.
    assert (head_a.refcount, head_b.refcount) == (1, 2)
    assert all(e.message.refcount == 0 for e in first[1:90])
    second = await anext(batches)  # the caller is done with the first batch
    assert (head_a.refcount, head_b.refcount) == (0, 0)
    assert [e.message.offset for e in second] == list(range(180, 270))
    await batches.aclose()


async def test_a_caught_up_worker_gets_each_take_as_it_comes() -> None:
    takes = Takes([events("a", range(0, 30)), events("a", range(30, 60))])
    marks = {"a": 30}  # nothing past the first take
    batches = gathered(aiter(takes), size=500, gather_s=1.0, highwater=marks.get, ack=ack)
    first = await anext(batches)
    assert len(first) == 30 and takes.log == ["take 0"]  # not waiting for the next take
    await batches.aclose()


async def test_past_the_deadline_the_batch_goes_and_the_late_take_starts_the_next() -> None:
    takes = Takes([events("a", range(0, 90)), events("a", range(90, 180))],
                  blocked=asyncio.Event())  # fmt: skip
    marks = {"a": 10_000}
    batches = gathered(aiter(takes), size=500, gather_s=0.01, highwater=marks.get, ack=ack)
    first = await anext(batches)
    assert len(first) == 90  # the second take did not come within 10 ms
    assert takes.blocked is not None
    takes.blocked.set()
    second = await anext(batches)
    assert [e.message.offset for e in second] == list(range(90, 180))  # nothing lost
    assert first[0].message.refcount == 0  # the first batch was processed: let go
    await batches.aclose()


async def test_a_batch_whose_processing_fails_stays_held() -> None:
    takes = Takes([events("a", range(0, 90)), events("a", range(90, 180))])
    marks = {"a": 10_000}

    async def process() -> Message:
        async for batch in gathered(aiter(takes), size=500, gather_s=1.0,
                                    highwater=marks.get, ack=ack):  # fmt: skip
            head = batch[0].message
            raise RuntimeError(head)
        raise AssertionError("no batch")

    with pytest.raises(RuntimeError) as failure:
        await process()
    head = failure.value.args[0]
    assert head.refcount == 1  # never committed: read again after a restart
