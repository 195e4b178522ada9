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
    links: Iterable[tuple[int, str, str]], *, limit: int, window_ms: int
) -> frozenset[str]:
    """The event_ids of refused links among (at, event_id, anonymous_id) of one user.

    One pass in time order over the accepted links of the window before each link (a queue,
    and a count per device), so a user's n links cost n log n, not n squared (R15).
    """
    window: deque[tuple[int, str]] = deque()  # (at, device) of accepted links, in time order
    devices: Counter[str] = Counter()  # accepted links per device within the window
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
