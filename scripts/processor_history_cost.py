"""CPU per event of the processor as one history grows (R15), on the in-memory store.

    .venv/bin/python scripts/processor_history_cost.py SHAPE SIZE [BATCH]

SHAPE is one of `idp bench --history`'s (`pipeline.tools.history.SHAPES`), SIZE the history
length, BATCH the events per batch (default 1). The processor (deciding ahead, the working
copy, the records encoded and decoded) applies SIZE sessions of the shape, then 30 more,
timed with `time.process_time`, five times over. It prints the median CPU per event of those five
stretches of 30 sessions and how many times the core was asked to decide in them (whole
decisions, and those that asked for more records).
It measures the processor without Kafka or Redis (`idp bench --history` measures the worker).
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import time
from collections import Counter

import orjson

from pipeline.core.rules import CoreConfig
from pipeline.state.base import Keys
from pipeline.state.memory import MemoryStore
from pipeline.tools import history
from pipeline.worker import processor
from pipeline.worker.codec import Item, Source, decode

CONFIG = CoreConfig(secrets={history.WS: (history.SECRETS[history.WS].encode(),)})
PROBE = 30  # sessions in each stretch timed after the history
STRETCHES = 5
decisions: Counter[str] = Counter()
_apply = processor.apply


def _counting(event, view, config):  # the core's `apply`
    result = _apply(event, view, config)
    decisions["asked for more" if isinstance(result, processor.NeedMore) else "decided"] += 1
    return result


async def main(shape: str, size: int, batch: int) -> None:
    """Print the CPU per event after `size` sessions of `shape`, in batches of `batch`."""
    processor.apply = _counting
    unit = history.SHAPES[shape][1]
    proc = processor.Processor(MemoryStore(), Keys("cost"), CONFIG)
    offset = 0

    async def run(start: int, end: int) -> int:
        nonlocal offset
        items: list[Item] = []
        for n in range(start, end):
            for record in unit(n):
                offset += 1
                source = Source(record.topic, 0, offset, record.key.encode(),
                                orjson.dumps(record.value), record.timestamp_ms)  # fmt: skip
                decoded = decode(source)
                assert isinstance(decoded, Item), decoded
                items.append(decoded)
        for i in range(0, len(items), batch):
            result = await proc.process(items[i : i + batch])
            proc.forget(result.outbox)
        return len(items)

    await run(0, size)
    decisions.clear()
    costs = []
    for stretch in range(STRETCHES):
        start = size + stretch * PROBE
        started = time.process_time()
        events = await run(start, start + PROBE)
        costs.append((time.process_time() - started) / events * 1000)
    cost = statistics.median(costs)
    spread = f"{min(costs):.2f}-{max(costs):.2f}"
    print(
        f"{shape} N={size} batch={batch}: {cost:.2f} ms per event (stretches {spread}); "
        f"{dict(decisions)}"
    )


if __name__ == "__main__":
    args = sys.argv[1:]
    asyncio.run(main(args[0], int(args[1]), int(args[2]) if len(args) > 2 else 1))
