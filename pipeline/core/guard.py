"""The shared-identifier guard (R4): a user_id logged in from too many devices at once.

A generic id ("admin", a demo account, a bug that sends one id for everyone) would otherwise
fuse everybody into one profile. Over a user's verified links in event time, a link from a
device the user has not linked recently is refused when the user already holds `limit`
distinct devices linked within the `window` before it. The verdict is a function of the set of
link facts, not of their arrival order, so a replay reaches the same verdicts (R11, R12).
"""

from __future__ import annotations

from collections import Counter, deque
from collections.abc import Iterable

DEFAULT_DEVICE_LIMIT = 10
DEFAULT_WINDOW_MS = 24 * 3600 * 1000


def refused_links(
    links: Iterable[tuple[int, str, str]],
    *,
    limit: int,
    window_ms: int,
    accepted: Iterable[tuple[int, str]] = (),
) -> frozenset[str]:
    """The event_ids of refused links among (at, event_id, anonymous_id) of one user.

    One pass in time order over the accepted links of the window before each link (a queue,
    and a count per device), so a user's n links cost n log n, not n squared (R15).
    `accepted` are (at, anonymous_id) of links accepted before all of `links` (the latest per
    device suffices): the pass starts from them, as it would have reached them.
    """
    window: deque[tuple[int, str]] = deque(sorted(accepted))  # (at, device) in time order
    devices: Counter[str] = Counter(device for _, device in window)  # ... per device
    refused: set[str] = set()
    for at, event_id, device in sorted(links):
        while window and window[0][0] <= at - window_ms:
            _, gone = window.popleft()
            devices[gone] -= 1
            if not devices[gone]:
                del devices[gone]
        if device not in devices and len(devices) >= limit:
            refused.add(event_id)
        else:
            window.append((at, device))
            devices[device] += 1
    return frozenset(refused)


def accepted_window(
    links: Iterable[tuple[int, str]], *, before: int, window_ms: int
) -> tuple[tuple[int, str], ...]:
    """Where a pass over accepted links (at, anonymous_id) stands on reaching `before`.

    That is (at, anonymous_id) of each device's latest accepted link within the window before
    `before`, as `refused_links` takes them.
    """
    latest: dict[str, int] = {}
    for at, device in links:
        if before - window_ms < at < before and at > latest.get(device, at - 1):
            latest[device] = at
    return tuple(sorted((at, device) for device, at in latest.items()))
