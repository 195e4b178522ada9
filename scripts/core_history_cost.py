"""CPU per event of the pure core as one history grows (R15), without Kafka or Redis.

    .venv/bin/python scripts/core_history_cost.py [SHAPES] [SIZES]

SHAPES are `idp bench --history`'s (`pipeline.tools.history.SHAPES`), comma-separated (default
all); SIZES the history lengths (default 10,100,300). For each, the in-memory oracle applies
N sessions of the shape, then 10 more, timed with `time.process_time`: the figure is the CPU
per event of those 10 sessions. It measures what deciding costs, apart from reading and writing
the records (`idp bench --history` measures the worker). `IDP_PROFILE_LIST_LIMIT` sets the
profile list limit, as for the worker (R15; default 1,000).
"""

from __future__ import annotations

import os
import sys
import time

from pipeline.core.oracle import Oracle
from pipeline.core.profiles import DEFAULT_LIST_LIMIT
from pipeline.core.rules import CoreConfig
from pipeline.tools import history
from schemas import INPUT_MODELS

CONFIG = CoreConfig(
    secrets={history.WS: (history.SECRETS[history.WS].encode(),)},
    profile_list_limit=int(os.environ.get("IDP_PROFILE_LIST_LIMIT", DEFAULT_LIST_LIMIT)),
)
PROBE = 10  # sessions timed after the history


def cost_ms(shape: str, size: int) -> float:
    """CPU ms per event of the `PROBE` sessions that follow `size` sessions of `shape`."""
    unit = history.SHAPES[shape][1]
    oracle = Oracle(CONFIG)

    def apply(n: int) -> int:
        records = unit(n)
        for record in records:
            event = INPUT_MODELS[record.topic].model_validate(record.value)
            oracle.apply(event, record_ms=record.timestamp_ms)
        return len(records)

    for n in range(size):
        apply(n)
    started = time.process_time()
    events = sum(apply(n) for n in range(size, size + PROBE))
    return (time.process_time() - started) / events * 1000


def main() -> None:
    """Print one line per shape."""
    shapes = sys.argv[1].split(",") if len(sys.argv) > 1 else list(history.SHAPES)
    sizes = [int(s) for s in sys.argv[2].split(",")] if len(sys.argv) > 2 else [10, 100, 300]
    for shape in shapes:
        figures = "  ".join(f"N={size}: {cost_ms(shape, size):.2f} ms" for size in sizes)
        print(f"{shape:8} {figures}", flush=True)


if __name__ == "__main__":
    main()
