"""The shared-identifier guard (R4): a user_id logged in from too many devices at once.

A generic id ("admin", a demo account, a bug that sends one id for everyone) would otherwise
fuse everybody into one profile. Over a user's verified links in event time, a link from a
device the user has not linked recently is refused when the user already holds `limit`
distinct devices linked within the `window` before it. The verdict is a function of the set of
link facts, not of their arrival order, so a replay reaches the same verdicts (R11, R12).
"""

from __future__ import annotations

from collections.abc import Iterable

DEFAULT_DEVICE_LIMIT = 10
DEFAULT_WINDOW_MS = 24 * 3600 * 1000


def refused_links(
    links: Iterable[tuple[int, str, str]], *, limit: int, window_ms: int
) -> frozenset[str]:
    """The event_ids of refused links among (at, event_id, anonymous_id) of one user."""
    accepted: list[tuple[int, str]] = []  # (at, device) of accepted links, in time order
    refused: set[str] = set()
    for at, event_id, device in sorted(links):
        recent = {d for t, d in accepted if at - window_ms < t <= at}
        if device not in recent and len(recent) >= limit:
            refused.add(event_id)
        else:
            accepted.append((at, device))
    return frozenset(refused)
