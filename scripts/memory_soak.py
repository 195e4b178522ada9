"""Memory over a long run: the worker's RSS while it processes 10x the benchmark's events.

Usage: .venv/bin/python scripts/memory_soak.py [EVENTS]   (default 1,000,000; stack must be up)
Prints the worker's resident memory every 5% of the input, then the growth from the 20% mark
(after warm-up) to the end.
"""

from __future__ import annotations

import asyncio
import sys
import time
import uuid
from pathlib import Path

import orjson
from aiokafka.admin import AIOKafkaAdminClient

from pipeline.ops import processes
from pipeline.ops.admin import ensure_topics, remove_run
from pipeline.ops.settings import Settings
from pipeline.ops.topics import topic_specs
from pipeline.tools import bench, journey


def rss_mb(pid: int) -> float:
    """Resident memory of a process, in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def main(events: int) -> None:
    """Produce, process, sample, report."""
    settings = Settings()
    run = uuid.uuid4().hex[:8]
    prefix, namespace = f"mem{run}.", f"mem{run}"
    await ensure_topics(settings.kafka_bootstrap_servers, topic_specs(prefix, settings.partitions))
    secrets = Path(f"/tmp/mem-{run}.json")
    secrets.write_bytes(orjson.dumps(bench.BENCH_SECRETS))
    chunk = 100_000
    for start in range(0, events, chunk):
        size = min(chunk, events - start)
        records = journey.steady(bench.BENCH_SECRETS, events=size, seed=start + 1)
        await bench.produce(settings.kafka_bootstrap_servers, prefix, records)
        print(f"produced {start + len(records):,}", flush=True)
    env = bench.environment(settings, prefix, namespace, secrets,
                            IDP_COMMIT_INTERVAL_S="0.5", IDP_APP_ID=f"mem-{run}")  # fmt: skip
    worker = processes.spawn("worker", env, Path(f"/tmp/mem-{run}.log"))
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap_servers)
    await admin.start()
    samples: list[tuple[int, float]] = []
    next_mark = 0.05
    started = time.monotonic()
    try:
        while True:
            try:
                offsets = await admin.list_consumer_group_offsets(f"mem-{run}")
            except Exception:  # the group does not exist yet
                offsets = {}
            done = sum(max(m.offset, 0) for m in offsets.values())
            if done >= next_mark * events:
                samples.append((done, rss_mb(worker.pid)))
                print(
                    f"{done:>9,} events  RSS {samples[-1][1]:7.1f} MB  "
                    f"({time.monotonic() - started:.0f}s)",
                    flush=True,
                )
                next_mark += 0.05
            if done >= events:
                break
            await asyncio.sleep(0.5)
    finally:
        await admin.close()
        processes.stop(worker)
        await remove_run(settings.kafka_bootstrap_servers, settings.redis_url, prefix, namespace)
    warm = next(rss for done, rss in samples if done >= 0.2 * events)
    print(
        f"RSS after 20%: {warm:.1f} MB; at the end: {samples[-1][1]:.1f} MB; "
        f"growth {samples[-1][1] - warm:+.1f} MB"
    )


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 1_000_000))
