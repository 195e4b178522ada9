"""Devices this worker knows to be active, so that their page views skip Redis altogether.

Most events of a busy site are page views of devices seen before, and such a page view changes
nothing (`rules.browsing`): the core decides it from the device's first activity alone. That
number only ever moves earlier, because facts accumulate and are never retracted, so a value
learnt once stays an upper bound of the truth, whatever other workers commit later: if it is
at or before a page view's time, so is the device's real first activity. Values are learnt
only from records read from the store or committed to it, never from a decision still pending.

The one retraction is an erasure (R16): erasing a device removes its facts, so the first
activity learnt before it is wrong afterwards (a page view stamped before the erasure must be
refused, one after it begins a new visitor). An erasure of a device, on whichever worker,
increments the workspace's count of device erasures; the worker reads the counts it holds at
most every `ERASURE_CHECK_S` before a batch (one round trip, `Processor.refresh_erasures`), and
a batch that reaches the store reads its workspaces' counts too; a workspace's devices are
forgotten when its count changed. So an erasure reaches every other worker's memory within
about half a second; the worker that commits an erasure forgets the devices it wrote at once
(`forget`), before it sends the erasure's outputs. The state is otherwise never deleted under
a running worker (replays use a namespace of their own). Bounded: past `limit` devices the
oldest-learnt tenth is forgotten, and a forgotten device is read from Redis once more on its
next page view.
"""

from __future__ import annotations

from itertools import islice


class KnownDevices:
    """(workspace_id, anonymous_id) -> earliest activity (epoch ms), at most `limit` of them."""

    __slots__ = ("_erasures", "_first", "limit")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._first: dict[tuple[str, str], int] = {}
        self._erasures: dict[str, int] = {}  # workspace_id -> its count of device erasures

    def workspaces(self) -> set[str]:
        """The workspaces of the devices remembered."""
        return {workspace_id for workspace_id, _ in self._first}

    def counted_workspaces(self) -> list[str]:
        """The workspaces whose count of device erasures this worker holds."""
        return sorted(self._erasures)

    def counted(self, workspace_id: str) -> bool:
        """Whether the workspace's count of device erasures was read yet."""
        return workspace_id in self._erasures

    def confirm(self, workspace_id: str, erasures: int) -> None:
        """Take the workspace's count of device erasures; forget its devices if it changed.

        The first count of a workspace forgets them too: they were learnt before any count
        (the processor reads it with the workspace's first batch, so there are none).
        """
        if self._erasures.get(workspace_id) != erasures:
            self._first = {k: v for k, v in self._first.items() if k[0] != workspace_id}
        self._erasures[workspace_id] = erasures

    def __len__(self) -> int:
        return len(self._first)

    def first_activity(self, workspace_id: str, anonymous_id: str) -> int | None:
        """The device's earliest activity as last learnt (an upper bound), or None if unknown."""
        return self._first.get((workspace_id, anonymous_id))

    def forget(self, workspace_id: str, anonymous_id: str) -> None:
        """Drop a device whose first activity an erasure this worker committed moved (R16)."""
        self._first.pop((workspace_id, anonymous_id), None)

    def learn(self, workspace_id: str, anonymous_id: str, first_activity: int | None) -> None:
        """Remember a first activity read from, or committed to, the store."""
        if first_activity is None or self.limit <= 0:
            return
        key = (workspace_id, anonymous_id)
        known = self._first.get(key)
        if known is not None and known <= first_activity:
            return  # an older read: what we know is already as early
        self._first[key] = first_activity
        if len(self._first) > self.limit:
            for old in list(islice(self._first, max(1, self.limit // 10))):
                del self._first[old]
