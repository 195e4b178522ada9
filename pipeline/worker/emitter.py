"""Sending a batch's outputs, and holding its offsets until the broker has them.

Faust's attached sends wait for the next offset commit (seconds), which is latency; sending
directly is not, but then the offsets must not be committed before delivery. Faust commits a
partition only up to its first unacknowledged offset, so holding back the batch's earliest event
of each partition (one extra reference, released when the broker has acknowledged the batch's
outputs) holds back the whole batch: nothing of it or after it in that partition is committed
before its outputs are durable. The outbox in Redis covers the same window a second way.

Two workers can commit versions of one profile in one order and have the broker receive them in
the other (each sends after its own commit), which would leave the compacted topic on the older
one. So once a batch's outputs are delivered, the versions of the profiles it sent are compared
with the store, and any that changed meanwhile is sent again as it is now: whichever send was
stale, its sender sends the newer version after it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from pipeline.state.changelog import decode
from pipeline.worker import metrics
from pipeline.worker.codec import Wire
from pipeline.worker.durability import GuardedStore, StateGuard, StateLost
from pipeline.worker.outbox import Outbox, Send
from schemas.topics import STATE_CHANGELOG

logger = logging.getLogger(__name__)


class Held(Protocol):
    """What the emitter needs of an event: its message's partition, offset and reference."""

    @property
    def message(self) -> Any:  # Faust's Message: tp, offset, incref()
        """The Kafka message the event came in."""


@dataclass(slots=True)
class Delivery:
    """One batch's outputs on their way: what to release once the broker has them."""

    held: list[Any]  # the earliest event of each partition, its reference taken
    futures: list[Awaitable[object]]
    outbox: list[str]
    profiles: list[tuple[str, str, int]]
    logged: list[int] = field(default_factory=list)  # indexes of its changelog records
    records: list[tuple[bytes, bytes | None]] = field(default_factory=list)  # and those records
    restores: int = 0  # the guard's count of catch-ups when the batch was sent


class Emitter:
    """Sends outputs at once, and acknowledges a batch's events when they are delivered."""

    def __init__(
        self,
        send: Send,
        outbox: Outbox,
        *,
        ack: Callable[[Any], Awaitable[object]],
        forget: Callable[[Sequence[str]], None],
        in_background: Callable[[Coroutine[object, object, None]], None],
        guard: StateGuard | None = None,
    ) -> None:
        self.guard = guard  # with a changelog: moves its markers once records are delivered
        self.send = send
        self.outbox = outbox
        # Profiles are sent again as Redis holds them: with a changelog, only as read with the
        # markers, so that a profile Redis lost (FLUSHALL) is never sent as deleted.
        self.current = outbox
        if guard is not None:
            store = outbox.store
            guarded = store if isinstance(store, GuardedStore) else GuardedStore(store, guard)
            self.current = Outbox(guarded, outbox.keys, outbox.send)
        self.ack = ack
        self.forget = forget
        self.in_background = in_background

    async def emit(
        self,
        events: Sequence[Held],
        wires: Sequence[Wire],
        outbox: list[str],
        profiles: list[tuple[str, str, int]] | None = None,
        *,
        restores: int | None = None,
    ) -> Delivery | None:
        """Send `wires`; release the batch's held events in the background once delivered.

        `restores`: the guard's count of catch-ups before the batch was committed (default:
        now). A catch-up that ended after that may have read the changelog's ends before
        these records were on it, the batch committed before the loss it caught up.
        """
        if not wires:
            return None
        if restores is None:  # before any wait
            restores = self.guard.restores if self.guard is not None else 0
        earliest: dict = {}
        for event in events:
            message = event.message
            held = earliest.get(message.tp)
            if held is None or message.offset < held.message.offset:
                earliest[message.tp] = event
        delivery = Delivery(list(earliest.values()), [], outbox, profiles or [])
        for event in delivery.held:
            event.message.incref()
        for topic, key, value in wires:
            if topic == STATE_CHANGELOG:
                delivery.logged.append(len(delivery.futures))
                delivery.records.append((key or b"", value))
            delivery.futures.append(await self.send(topic, key, value))
        delivery.restores = restores
        metrics.OUTBOX_IN_FLIGHT.inc()
        self.in_background(self.release(delivery))
        return delivery

    async def release(self, delivery: Delivery) -> None:
        """Await the delivery (sending again from the outbox if refused), then acknowledge."""
        fresh = True
        try:
            sent = await asyncio.gather(*delivery.futures)
            if self.guard is not None and delivery.logged:
                await self.advance(self.guard, delivery, [sent[i] for i in delivery.logged])
        except Exception:  # sent again from the outbox; the batch stays held
            logger.exception("output delivery failed; sending them again from the outbox")
            await self.outbox.redeliver(delivery.outbox)  # sends the profiles as they are now
        else:
            fresh = await self.refresh(delivery.profiles)
        finally:
            metrics.OUTBOX_IN_FLIGHT.dec()
        for event in delivery.held:
            await self.ack(event)
        if fresh:
            self.forget(delivery.outbox)  # delivered: nothing to send again
        # Else the outbox records stay: the sweep sends their profiles as they are then.

    async def advance(
        self, guard: StateGuard, delivery: Delivery, delivered: Sequence[Any]
    ) -> None:
        """Move the changelog's markers past these delivered records (RecordMetadata).

        Only over state Redis holds: when it lost state since the batch was committed (the
        markers do not move, `StateGuard.advance`), Redis is caught up with the changelog
        first (or this waits for the catch-up under way). A catch-up that ended after the
        batch was committed may have read the changelog's ends before its records were on it, so
        they are then applied again (`Store.apply` keeps a newer version) before the markers
        say Redis has them. While Redis is away, this tries again: the batch stays held.
        """
        markers = guard.delivered((m.partition, m.offset) for m in delivered)
        prefix = guard.keys.prefix()
        delay = 0.5
        while True:
            restores = guard.restores
            try:
                if restores != delivery.restores:
                    again = [decode(k, v, prefix) for k, v in delivery.records]
                    await self.outbox.store.apply(again)
                    delivery.restores = restores
                if await guard.advance(markers):
                    return
            except Exception as exc:
                logger.warning("could not move the state changelog's markers (%s); retrying in "
                               "%.1fs", exc, delay)  # fmt: skip
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
                continue
            logger.warning("Redis lost state since a batch was committed: its changelog "
                           "records wait for the catch-up")  # fmt: skip
            await self.caught_up(guard, restores)

    async def caught_up(self, guard: StateGuard, since: int) -> None:
        """Catch Redis up with the changelog, unless a catch-up ended since `since`."""
        delay = 0.5
        while True:
            try:
                await guard.recover(since)
                return
            except Exception as exc:  # Kafka or Redis away
                logger.warning("could not compare Redis with the state changelog (%s: %s); "
                               "retrying in %.1fs", type(exc).__name__, exc, delay)  # fmt: skip
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    async def refresh(self, profiles: Sequence[tuple[str, str, int]]) -> bool:
        """Send again, as they are now, the delivered profiles another commit changed since.

        False if that could not be checked (Redis or the broker away).
        """
        by_workspace: dict[str, tuple[list[str], list[int]]] = {}
        for workspace_id, contact_id, version in profiles:
            contacts, versions = by_workspace.setdefault(workspace_id, ([], []))
            contacts.append(contact_id)
            versions.append(version)
        try:
            for workspace_id, (contacts, versions) in by_workspace.items():
                while True:
                    restores = self.guard.restores if self.guard is not None else 0
                    try:
                        await self.current.send_current(workspace_id, contacts, sent=versions)
                        break
                    except StateLost:  # read as Redis lost them: read again once caught up
                        assert self.guard is not None
                        await self.caught_up(self.guard, restores)
        except Exception as exc:  # left to the outbox sweep
            logger.warning("could not check the delivered profiles against the store (%s); "
                           "the outbox sweep sends them", exc)  # fmt: skip
            return False
        return True
