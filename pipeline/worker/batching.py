"""Batches for the agent: Faust's takes, gathered into bigger batches while the worker is behind.

`Stream.take_events(n, within)` hands over what reached the stream within `within` of asking
(`IDP_BATCH_WITHIN_S`), at most n events. Reading a backlog, Faust delivered about 90 events
in a take of 5 ms here, so a batch held about 90 events whatever n was; and a batch with a
state change in it (in the steady mix of `idp bench`, nearly every batch) pays two to four
Redis round trips, so more than half of the worker's time went to round trips and per-batch
work.

While records are waiting to be taken (the high watermarks of the batch's partitions are
past its last offsets by at least what the batch can still hold), `gathered` asks for more
takes and hands them over as one batch once it holds n events or `gather_s` has passed. Takes
are added whole, so a batch may hold up to 2n - 1 events. A worker
that keeps up is never that far behind, so its batches, and its latency, stay as they were.

Faust acknowledges a take's events when it is asked for the next take, and commits a
partition's offsets up to its first unacknowledged event. So the earliest event of each
partition in a batch is held (one more reference) from the moment it is received, and let go
only once the caller has processed the batch: nothing of a batch is committed before it is
processed, and a batch interrupted by a crash or a shutdown is read again.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any

# tp -> the partition's high watermark (the offset its next record will get), None if unknown
Highwater = Callable[[Any], int | None]


def should_gather(taken: int, size: int, last: dict[Any, int], highwater: Highwater) -> bool:
    """Ask for another take before processing: enough records wait to fill the batch.

    `last` is the last offset taken of each partition in the batch; what waits in a partition
    is what its high watermark is past that. Partitions are asked until enough is found.
    """
    needed = size - taken
    if needed <= 0:
        return False
    for tp, offset in last.items():
        mark = highwater(tp)
        if mark is not None:
            needed -= max(0, mark - offset - 1)
            if needed <= 0:
                return True
    return False


def _take_in(events: Sequence[Any], held: dict[Any, Any], last: dict[Any, int]) -> None:
    """Hold each partition's earliest event not held yet, and note its last offset taken.

    Later events of a partition wait behind the held one; they come in offset order.
    """
    for event in events:
        message = event.message
        tp = message.tp
        if tp not in held:
            message.incref()
            held[tp] = event
        last[tp] = message.offset


async def gathered(
    takes: AsyncIterator[Sequence[Any]],
    *,
    size: int,
    gather_s: float,
    highwater: Highwater,
    ack: Callable[[Any], Awaitable[object]],
) -> AsyncIterator[list[Any]]:
    """The takes of `takes` (a `Stream.take_events`), gathered while behind (see above).

    `ack` is the stream's: it lets go of a held event. A take asked for and not received by
    the deadline is not lost: it starts the next batch.
    """
    loop = asyncio.get_running_loop()
    ahead: asyncio.Future | None = None
    try:
        while True:
            try:
                batch = list(await (ahead if ahead is not None else anext(takes)))
            except StopAsyncIteration:
                return
            ahead = None
            held: dict[Any, Any] = {}
            last: dict[Any, int] = {}
            _take_in(batch, held, last)
            deadline = loop.time() + gather_s
            while gather_s > 0 and should_gather(len(batch), size, last, highwater):
                ahead = asyncio.ensure_future(anext(takes))
                done, _ = await asyncio.wait((ahead,), timeout=max(0.0, deadline - loop.time()))
                if not done:
                    break  # past the deadline: this batch goes now, that take starts the next
                task, ahead = ahead, None
                try:
                    more = task.result()
                except StopAsyncIteration:
                    break
                _take_in(more, held, last)
                batch += more
            yield batch
            for event in held.values():  # processed: its offsets may be committed
                await ack(event)
    finally:
        if ahead is not None:
            ahead.cancel()
            with contextlib.suppress(BaseException):
                await ahead
