"""Faust's message loop without four tasks per record, and without a second's stall after a pause.

Faust's consumer hands each fetched record to the streams from `Consumer._drain_messages`, a
loop that awaits `wait_first(callback(message), suspend_flow.wait())` for every record: so
that a rebalance (which sets `suspend_flow`) can interrupt a delivery that is blocked, each
record gets four tasks (the delivery, the flow event, the service's stopped and crashed
events), an `asyncio.wait` and three cancellations. That is most of what a Faust agent costs
per record at a moderate rate. Offered 5,000 events/s, a bare agent spent 111 µs of CPU per
event with Faust's loop and 56 µs with this one; the worker at 6,000/s 142-154 µs and 92-99
µs (README, *Measured*).

`install` replaces that method with a copy that changes two things:

1. A record's delivery is run inline, as a plain call, and completes there when it does not
   have to wait (the stream's buffer has room, flow is not suspended, which is nearly always).
   Only a delivery that does wait is raced against `suspend_flow` as Faust does, by the same
   `wait_first`, so a rebalance interrupts it exactly as before (`run_inline`).
2. While a partition is paused because its stream's buffer is under pressure, the loop asks
   for records with a 10 ms timeout instead of Faust's 1 s. Faust takes the paused partition
   out of the set it passes to the fetch; when the buffer drains it puts the partition back,
   but a fetch already waiting for records of the *other* partitions (a backlog's small
   topics, long exhausted) keeps waiting for its full second. Faust's own loop suspends at
   every record, so its buffers rarely reach that pressure; a loop that delivers a fetch
   at once does, and stalled for a second at a time until this change.

Everything else (offsets, gaps, commits every n acks, the yield every 100 records, the flags)
is Faust 0.15's code as it was. `tests/unit/test_draining.py` fails if a release of Faust
changes the method this replaces, so that a change is read before it is overwritten.
"""

from __future__ import annotations

import asyncio
import hashlib
import inspect
import types
from collections.abc import AsyncIterator, Coroutine, Generator
from typing import Any, cast

from faust.transport import consumer as faust_consumer
from mode import Service

PAUSED_TIMEOUT_S = 10 / 1000  # a fetch's wait while a partition is paused for buffer pressure
STOCK_TIMEOUT_S = 1.0  # Faust's
_STOCK = faust_consumer.Consumer._drain_messages


@types.coroutine
def _resume(coroutine: Coroutine, yielded: Any) -> Generator[Any, Any, Any]:
    """Go on running `coroutine`, which yielded `yielded` at its first step: `yield from`, late.

    `run_inline` advances this generator to its first, bare `yield` before a task takes it, so
    that a task cancelled before its first step still passes the cancellation on.
    """
    started = False
    while True:
        try:
            sent = yield (yielded if started else None)
        except GeneratorExit:
            coroutine.close()
            raise
        except BaseException as exc:  # a cancellation, passed on as it came
            try:
                yielded = coroutine.throw(exc)
            except StopIteration as stop:
                return stop.value
            started = True
            continue
        if not started:  # the task's first step: wait for what the coroutine is waiting for
            started = True
            continue
        try:
            yielded = coroutine.send(sent)
        except StopIteration as stop:
            return stop.value


def run_inline(coroutine: Coroutine) -> asyncio.Future | None:
    """Run `coroutine` until it first waits: None if it finished, else a task finishing it.

    An exception it raises without waiting is raised here.
    """
    try:
        yielded = coroutine.send(None)
    except StopIteration:
        return None
    rest = _resume(coroutine, yielded)
    next(rest)
    return asyncio.ensure_future(rest)


async def _drain_messages(self: faust_consumer.Consumer, fetcher: Service) -> None:
    """`Consumer._drain_messages` of Faust 0.15, with the two changes of the module's docstring."""
    callback = self.callback
    getmany = self.getmany
    consumer_should_stop = cast(Service, self)._stopped.is_set
    fetcher_should_stop = cast(Service, fetcher)._stopped.is_set
    get_read_offset = self._read_offset.__getitem__
    set_read_offset = self._read_offset.__setitem__
    set_flag = self.diag.set_flag
    unset_flag = self.diag.unset_flag
    commit_every = self._commit_every
    acks_enabled_for = self.app.topics.acks_enabled_for
    paused = self._buffered_partitions  # partitions paused for buffer pressure
    fetching = faust_consumer.CONSUMER_FETCHING
    yield_every = 100
    num_since_yield = 0
    sleep = asyncio.sleep
    try:
        while not (consumer_should_stop() or fetcher_should_stop()):
            set_flag(fetching)
            timeout = PAUSED_TIMEOUT_S if paused else STOCK_TIMEOUT_S
            records = cast(AsyncIterator, getmany(timeout=timeout))
            await self.sleep(0)  # Faust: getmany may return at once, again and again
            if self.should_stop:
                continue
            async for tp, message in records:
                num_since_yield += 1
                if num_since_yield > yield_every:
                    await sleep(0)
                    num_since_yield = 0
                offset = message.offset
                r_offset = get_read_offset(tp)
                if r_offset is None or offset >= r_offset:
                    gap = offset - (r_offset or 0)
                    if gap > 1 and r_offset and acks_enabled_for(message.topic):
                        await self._add_gap(tp, r_offset + 1, offset)
                    if commit_every is not None and self._n_acked >= commit_every:
                        self._n_acked = 0
                        await self.commit()
                    waiting = run_inline(callback(message))  # type: ignore[arg-type]
                    if waiting is not None:  # blocked: let a rebalance interrupt it, as Faust does
                        await self.wait_first(waiting, self.suspend_flow.wait())
                    set_read_offset(tp, offset)
            unset_flag(fetching)
    except self.consumer_stopped_errors:
        if self.transport.app.should_stop:
            self.log.info("Broker stopped consumer, shutting down...")
            return
        raise
    except asyncio.CancelledError:
        if self.transport.app.should_stop:
            self.log.info("Consumer shutting down for user cancel.")
            return
        raise
    except Exception as exc:
        self.log.exception("Drain messages raised: %r", exc)
        raise
    finally:
        unset_flag(fetching)


# The digest of Faust 0.15.3's `Consumer._drain_messages`, which `drain_messages` copies.
# Another digest means another Faust: read its method, carry its changes over, then update.
FAUST_DRAIN_MESSAGES = "44a2500309e83c63"


def stock_source_digest() -> str:
    """A digest of the Faust method this replaces, as the installed release has it."""
    return hashlib.sha256(inspect.getsource(_STOCK).encode()).hexdigest()[:16]


def compatible() -> str | None:
    """None if the installed Faust's method is the one `drain_messages` copies, else why."""
    digest = stock_source_digest()
    if digest != FAUST_DRAIN_MESSAGES:
        return f"Faust's Consumer._drain_messages has changed (digest {digest})"
    return None


drain_messages = _drain_messages  # the worker's transport's method (`pipeline.worker.transport`)
