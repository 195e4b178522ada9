"""Input partitions that stop moving while records wait in them: found, logged, fetched again.

A partition is *stalled* when the broker holds records past the consumer's position (or, before
it has one, past the committed offset) and that offset has not moved for `STALL_S`; one held at
an unreadable batch is not (`worker.fetching` logs and shows it). No healthy worker does that: a
busy one moves every partition it is behind on, since Faust hands over the partitions' records
in turn. A stall means a layer of the consumer keeps a partition's records from the agent; the
one cause known is handled where it arises (`transport.seek_to_committed`), this is the net for
others (docs/durability.md, *A partition left unread*). Each minute a partition stays stalled
the worker logs it, with what each layer holds of it (`describe`), and fetches it again from
where it stands (`fetch_again`): what it had fetched and not handed over is dropped and asked
for anew, which is always safe (nothing before the offset is skipped). `idp_partitions_stalled`
counts the partitions stalled now, `idp_partition_stalls_total` the stalls found, for alerts.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

logger = logging.getLogger(__name__)

STALL_S = 60.0


@dataclass
class StallWatch:
    """The offset each partition was last seen at, since when, and the stalls reported."""

    stall_s: float = STALL_S
    seen: dict[Any, tuple[int, float]] = field(default_factory=dict)  # tp -> (done, since)
    stalled: set[Any] = field(default_factory=set)

    def observe(self, tp: Any, done: int, end: int, now: float) -> bool:
        """Record a sample of one partition; True when it has been stalled for `stall_s` more."""
        previous = self.seen.get(tp)
        if previous is None or previous[0] != done or done >= end:
            self.seen[tp] = (done, now)
            self.stalled.discard(tp)
            return False
        if now - previous[1] < self.stall_s:
            return False
        self.seen[tp] = (done, now)  # reported again if it stays so another `stall_s`
        self.stalled.add(tp)
        return True

    def keep(self, assigned: set[Any]) -> None:
        """Forget the partitions no longer assigned."""
        for tp in set(self.seen) - assigned:
            del self.seen[tp]
        self.stalled &= assigned


def describe(consumer: Any, tp: Any) -> str:
    """What Faust's consumer and the aiokafka consumer under it hold of `tp`, for the log.

    Read from the worker's thread while the consumer thread runs: a snapshot that may be a
    moment old, and only what cannot be read is left out.
    """
    parts = []
    try:
        active = consumer._active_partitions
        parts.append(
            f"Faust: flow active {consumer.flow_active}, partition active "
            f"{active is None or tp in active}, paused {tp in consumer._paused_partitions}, "
            f"paused for buffer pressure {tp in consumer._buffered_partitions}"
        )
    except Exception as exc:  # a private shape that changed: say so, do not fail
        parts.append(f"Faust: unreadable ({exc!r})")
    try:
        kafka = _kafka(consumer)
        state = _state(consumer, tp)
        waiting = kafka._fetcher._records.get(tp)
        parts.append(
            f"aiokafka: position {position(consumer, tp)}, paused "
            f"{state is not None and state.paused}, awaiting reset "
            f"{state is not None and state.awaiting_reset}, records fetched and not taken "
            f"{type(waiting).__name__ if waiting is not None else None}, requests in flight to "
            f"nodes {sorted(kafka._fetcher._in_flight)}, leader "
            f"{kafka._client.cluster.leader_for_partition(tp)}, held at an unreadable batch "
            f"{held(consumer, tp)}"
        )
    except Exception as exc:
        parts.append(f"aiokafka: unreadable ({exc!r})")
    return "; ".join(parts)


def _kafka(consumer: Any) -> Any:
    """The aiokafka consumer under Faust's (in its consumer thread)."""
    return consumer._thread._consumer


def _state(consumer: Any, tp: Any) -> Any:
    """The state aiokafka keeps of an assigned partition (None: not assigned, or not started)."""
    try:
        return _kafka(consumer)._subscription.subscription.assignment.state_value(tp)
    except Exception:  # not started, or assigned anew meanwhile
        return None


def held(consumer: Any, tp: Any) -> bool:
    """Whether the worker's fetcher holds `tp` at an unreadable batch (`worker.fetching`)."""
    try:
        return tp in _kafka(consumer)._fetcher.held
    except Exception:  # the stock fetcher, or not started
        return False


def position(consumer: Any, tp: Any) -> int | None:
    """The position aiokafka has for `tp` (None: not reset yet, or not assigned), at once.

    Faust's `position` waits until aiokafka has one, which a stalled reset never gives.
    """
    state = _state(consumer, tp)
    return state.position if state is not None and state.has_valid_position else None


async def fetch_again(consumer: Any, tp: Any, offset: int) -> None:
    """Fetch `tp` again from `offset`, and make sure Faust takes its records.

    The seek drops what aiokafka fetched and did not hand over and asks for the partition
    anew; a partition that Faust left out of its active set without pausing it is put back.
    """
    active = consumer._active_partitions
    if active is not None and tp not in active and tp not in consumer._paused_partitions:
        consumer._buffered_partitions.discard(tp)
        active.add(tp)
    await consumer.seek(tp, offset)
