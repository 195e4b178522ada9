"""Large stored records decoded lately, kept with their bytes (R15).

A user with a long history has records of tens of kilobytes that nearly every one of her
events reads and few change: her retired summary's two chunk records, her published profile
with a thousand entries per list. Decoding them costs more than the rest of the decision. A
record read again with the very bytes it had is given back as decoded then: decoding is a pure
function of the bytes and decoded records are never mutated, so the answer is the same, and
a record that changed has other bytes and is decoded anew. Small records are decoded every
time; keeping them would cost more than it spares. What the processor wrote is kept too
(her profile is rewritten at each of her logins and read at the next; her summary's chunks
when she retires devices), but for user records (`_Working.remember`).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterable

MIN_BYTES = 4096  # smaller records are decoded each time
BUDGET_BYTES = 16 * 1024 * 1024  # the bytes kept, at most; the least recently read go first


class DecodedRecords:
    """Decoded records by key, with the bytes they were decoded from (least recently read out)."""

    def __init__(self, *, min_bytes: int = MIN_BYTES, budget_bytes: int = BUDGET_BYTES) -> None:
        self.min_bytes = min_bytes
        self.budget_bytes = budget_bytes
        self._entries: OrderedDict[str, tuple[bytes, object]] = OrderedDict()
        self._bytes = 0
        self.hits = 0
        self.misses = 0

    def decode(self, key: str, data: bytes, decode: Callable[[bytes], object]) -> object:
        """`decode(data)`, from what was kept when `key` last had these very bytes."""
        if len(data) < self.min_bytes:
            return decode(data)
        entries = self._entries
        kept = entries.get(key)
        if kept is not None and kept[0] == data:
            entries.move_to_end(key)
            self.hits += 1
            return kept[1]
        value = decode(data)  # raises on an unreadable record, which is then not kept
        self.misses += 1
        self.keep(key, data, value)
        return value

    def keep(self, key: str, data: bytes, value: object) -> None:
        """Keep `value` as what `data`, the record `key` now has, decodes to.

        The processor keeps what it wrote, so that the next read of a record it just rewrote
        (her published profile, after each of her logins) is not decoded either: `value` must
        be equal to what decoding `data` gives, as the core's comparisons already require.
        """
        if len(data) < self.min_bytes:
            return
        entries = self._entries
        kept = entries.pop(key, None)
        if kept is not None:
            self._bytes -= len(kept[0])
        entries[key] = (data, value)
        self._bytes += len(data)
        while self._bytes > self.budget_bytes:
            _, (gone, _) = entries.popitem(last=False)
            self._bytes -= len(gone)

    def forget(self, keys: Iterable[str]) -> None:
        """Drop what was kept of these records (deleted or tombstoned: an erasure, R16)."""
        for key in keys:
            kept = self._entries.pop(key, None)
            if kept is not None:
                self._bytes -= len(kept[0])

    def keys(self) -> list[str]:
        """The keys of the records kept, least recently read first."""
        return list(self._entries)

    def __len__(self) -> int:
        return len(self._entries)
