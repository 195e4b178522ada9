"""Folding a device's long history into chunk records behind a carry (R15).

A device's record would otherwise hold every session it ever had, and every event of the device
would read, decode and derive all of them. Once a device has `2 * size` session facts in its
record, the oldest are moved into chunk records (`DeviceChunk`) and the record keeps a `Carry`:
the state the device was in where its kept facts begin (`timeline.fold`'s state there, with
the chats of that segment). Deriving the device from its carry gives the segments from there on
exactly as the whole history gives them, so what an event derives and reads stays bounded.

Nothing is lost or approximated: the chunk records are read back (`rules._Resolver.unfold`)
whenever an event may change what lies behind the carry (an event stamped before it, a change
of a guard verdict, a token's first use or an e-mail's verification that reaches a settled
fact, an erasure), and the device is then folded again from its whole history.

Cuts fall every `size` session facts counted from the device's first, moved forward past facts
that share a time, so a device folded step by step and one folded from its whole history have
the same chunks. A cut keeps `size` facts or more after it, and falls `margin` (the allowed
lateness, 24 h) or more before the device's latest session fact: facts arriving that late, or
out of order across the input topics within that time, land after the carry and never need the
chunks. A device with `4 * size` facts inside the margin (a hostile burst) is cut anyway.
"""

from __future__ import annotations

from pipeline.core.facts import Carry, Device, DeviceChunk, SessionFact
from pipeline.core.timeline import fold, start_segment

DEFAULT_FOLD_SESSIONS = 32  # session facts per chunk record; a record keeps 32 to 63


def needs_folding(device: Device, size: int, margin: int) -> bool:
    """Whether the device's record holds session facts to fold."""
    return len(device.sessions) >= 2 * size and bool(cuts(device.sessions, size, margin))


def cuts(sessions: tuple[SessionFact, ...], size: int, margin: int = 0) -> list[int]:
    """Where chunks end: every `size` facts, moved past equal times.

    A cut keeps `size` facts or more after it, and falls `margin` ms or more before the latest
    fact unless `4 * size` facts come after it.
    """
    found: list[int] = []
    start, n = 0, len(sessions)
    latest = sessions[-1].at if sessions else 0
    while True:
        end = start + size
        while end < n and sessions[end].at == sessions[end - 1].at:
            end += 1
        if n - end < size:
            return found
        if sessions[end].at > latest - margin and n - end < 4 * size:
            return found
        found.append(end)
        start = end


def fold_device(
    workspace_id: str,
    anonymous_id: str,
    device: Device,
    refused: frozenset[str],
    size: int,
    margin: int = 0,
) -> tuple[Device, dict[int, DeviceChunk]]:
    """The device with its older session facts folded, and the new chunk records by index.

    `device` is a record (folded already or not) or a whole, unfolded device; `refused` the
    links the guard and the token rule refused among its facts (as `timeline.derive` takes
    them). A whole device is folded from its first fact: its chunks are numbered from 0.
    """
    sessions = device.sessions
    found = cuts(sessions, size, margin)
    if not found:
        return device, {}
    carry = device.carry
    current = start_segment(workspace_id, anonymous_id, carry)
    if carry is None:
        base, pool, low = 0, device.chats, None
    else:
        base, pool, low = carry.chunks, (*carry.chats, *device.chats), carry.key
    chunks: dict[int, DeviceChunk] = {}
    start, key = 0, 0
    for n, end in enumerate(found):
        key = 2 * sessions[end].at
        _, _, _, current = fold(workspace_id, anonymous_id, current, sessions[start:end], refused)
        chats = tuple(c for c in device.chats
                      if 2 * c.at < key and (low is None or 2 * c.at >= low))  # fmt: skip
        chunks[base + n] = DeviceChunk(sessions[start:end], chats)
        start, low = end, key
    begins = current.start_key
    kept = tuple(c for c in pool if 2 * c.at < key and (begins is None or begins <= 2 * c.at))
    parts = carry is None or carry.parts  # a carry without parts is folded on without them
    folded = Carry(key, current.kind, current.contact_id, begins, current.session,
                   current.user_id, kept, base + len(found), parts)  # fmt: skip
    recent = tuple(c for c in device.chats if 2 * c.at >= key)
    kept_record = Device(sessions[start:], recent, device.first_activity, device.erased, folded,
                         device.refused, device.retired_by)  # fmt: skip
    return kept_record, chunks
