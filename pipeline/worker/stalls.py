"""Input partitions that stop moving while records wait in them: found, logged and counted.

A partition is *stalled* when the broker holds records past what the worker has done (its
committed offset, or its position before the first commit) and that offset has not moved for
`STALL_S`. No healthy worker does that: a busy one moves every partition it is behind on,
since Faust hands over the partitions' records in turn. A stall means a layer of the consumer
keeps a partition's records from the agent, for a cause not known yet (docs/durability.md,
*Known gaps*). The worker logs each stall once, with what each layer holds of the partition
(`describe`), and counts stalled partitions in `idp_partitions_stalled`, so that it is seen and
can be alerted on; it changes nothing itself.
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
        """Record a sample of one partition; True when it has just become stalled."""
        previous = self.seen.get(tp)
        if previous is None or previous[0] != done or done >= end:
            self.seen[tp] = (done, now)
            self.stalled.discard(tp)
            return False
        if tp in self.stalled or now - previous[1] < self.stall_s:
            return False
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
        kafka = consumer._thread._consumer
        fetcher = kafka._fetcher
        state = kafka._subscription.subscription.assignment.state_value(tp)
        position = state.position if state is not None and state.has_valid_position else None
        waiting = fetcher._records.get(tp)
        parts.append(
            f"aiokafka: position {position}, paused {state is not None and state.paused}, "
            f"awaiting reset {state is not None and state.awaiting_reset}, records fetched and "
            f"not taken {type(waiting).__name__ if waiting is not None else None}, requests in "
            f"flight to nodes {sorted(fetcher._in_flight)}, leader "
            f"{kafka._client.cluster.leader_for_partition(tp)}, held at an unreadable batch "
            f"{tp in getattr(fetcher, 'held', {})}"
        )
    except Exception as exc:
        parts.append(f"aiokafka: unreadable ({exc!r})")
    return "; ".join(parts)
