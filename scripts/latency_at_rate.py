"""Latency and CPU of one worker at a fixed offered rate, as `idp bench` measures it, alone.

    .venv/bin/python scripts/latency_at_rate.py RATE [SECONDS] [ENV=VALUE ...]

On fresh topics and a fresh Redis namespace of the running stack (`idp stack up`): 30,000
events of the benchmark's journey are drained first (so devices are known, as in a steady
state), then the journey goes on at RATE events/s for SECONDS (10). Prints the worker's CPU
(% of a core, µs per offered event) and the latency percentiles of `idp bench`. ENV=VALUE
pairs are given to the worker (e.g. IDP_FETCH_GATHER_MS=5), to compare settings quickly.
Its topics and keys are removed at the end.
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
import time
import uuid
from pathlib import Path

import orjson

from pipeline.ops import processes
from pipeline.ops.admin import ensure_topics, remove_run
from pipeline.ops.settings import Settings
from pipeline.ops.topics import topic_specs
from pipeline.tools import bench, journey

WARM_EVENTS = 30_000


async def main(rate: float, seconds: float, extra: dict[str, str]) -> None:
    """Drain the warm-up events, then offer `rate` events/s and print what it cost."""
    settings = Settings()
    run_id = uuid.uuid4().hex[:8]
    prefix, namespace = f"lat{run_id}.", f"lat{run_id}"
    workdir = Path(tempfile.mkdtemp(prefix="idp-latency-"))
    secrets_file = workdir / "secrets.json"
    secrets_file.write_bytes(orjson.dumps(bench.BENCH_SECRETS))
    bootstrap = settings.kafka_bootstrap_servers
    await ensure_topics(bootstrap, topic_specs(prefix, settings.partitions))
    steady = journey.SteadyJourney(bench.BENCH_SECRETS, seed=7)
    warm = steady.take(WARM_EVENTS)
    await bench.produce(bootstrap, prefix, warm)
    env = bench.environment(settings, prefix, namespace, secrets_file,
                            IDP_APP_ID=f"lat-{run_id}", **extra)  # fmt: skip
    worker = processes.spawn("worker", env, workdir / "worker.log")
    try:
        await bench.measure(bootstrap, f"lat-{run_id}", len(warm), timeout=600, process=worker)
        later = steady.take(int(rate * seconds))
        known = {(r.value["workspace_id"], r.key) for r in warm if isinstance(r.value, dict)}
        cpu, started = processes.cpu_seconds(worker.pid), time.monotonic()
        by_record, _ = await bench.latency(bootstrap, prefix, later, rate, known_devices=known)
        cpu, took = processes.cpu_seconds(worker.pid) - cpu, time.monotonic() - started
        figures = " / ".join(f"{bench.percentile(by_record, q):.0f}" for q in (50, 90, 99))
        print(f"{rate:.0f} events/s for {seconds:.0f} s {' '.join(sys.argv[3:])}: worker "
              f"{cpu / took:.0%} of a core, {cpu / len(later) * 1e6:.0f} µs per event; "
              f"latency p50 / p90 / p99 {figures} ms ({len(by_record)} samples)")  # fmt: skip
    finally:
        processes.stop(worker)
        await remove_run(bootstrap, settings.redis_url, prefix, namespace)


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    pairs = dict(arg.split("=", 1) for arg in sys.argv[3:])
    seconds = float(sys.argv[2]) if len(sys.argv) > 2 else 10.0
    asyncio.run(main(float(sys.argv[1]), seconds, pairs))
