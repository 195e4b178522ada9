"""Figures of docs/clusters.md: the steady mix on the local cluster mode.

Run `idp stack up --redis-cluster 3 --brokers 3` first, then
`.venv/bin/python scripts/cluster_bench.py [--events N]`. On fresh topics (replicated three
times) and namespaces, each pass produces N events of the steady mix (`journey.steady`) and
measures the worker(s) consuming them from the consumer group's committed offsets, as
`idp bench` does:

1. scaling: one workspace per master's worth of load spread (two workspaces), 1 then 2 worker
   processes, the ratio of their rates;
2. WAIT: one worker, commits waiting for a replica (`IDP_REDIS_WAIT_REPLICAS=1`, the default)
   against not waiting (0);
3. one workspace: all its state on one master; that master's CPU (its redis-server process,
   from /proc) over the pass gives the events/s one master sustains at 100 % of a core.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
import uuid
from pathlib import Path

import orjson
from redis.asyncio.cluster import RedisCluster

from pipeline.ops import stack
from pipeline.ops.admin import ensure_topics, remove_keys, remove_run
from pipeline.ops.processes import cpu_seconds, spawn, stop
from pipeline.ops.settings import Settings
from pipeline.ops.topics import topic_specs
from pipeline.state.base import Keys
from pipeline.tools import journey
from pipeline.tools.bench import BENCH_SECRETS, environment, measure, produce


async def master_pid(url: str, workspace: str) -> tuple[int, int]:
    """(port, pid) of the master serving the workspace's slot, in the local cluster mode."""
    client = RedisCluster.from_url(url)
    try:
        await client.initialize()
        slot = await client.cluster_keyslot(Keys("idp").of(workspace, "dev", "x"))
        port = int(client.nodes_manager.get_node_from_slot(slot).port)
    finally:
        await client.aclose()
    pid = stack._read_pid(stack.cluster_dir() / f"redis-{port}" / "redis.pid")
    assert pid is not None, f"no pid file for the Redis node on {port}"
    return port, pid


async def one_pass(
    settings: Settings, secrets: dict[str, str], *, events: int, workers: int, home: Path,
    extra: dict[str, str] | None = None, watch_pids: tuple[int, ...] = (),
) -> tuple[float, list[float]]:  # fmt: skip
    """(events/s, CPU fraction of each watched process over the pass) for one configuration."""
    tag = uuid.uuid4().hex[:8]
    prefix, namespace = f"cb{tag}.", f"cb{tag}"
    secrets_file = home / f"secrets-{tag}.json"
    secrets_file.write_bytes(orjson.dumps(secrets))
    bootstrap = settings.kafka_bootstrap_servers
    await ensure_topics(bootstrap, topic_specs(prefix, settings.partitions))
    await produce(bootstrap, prefix, journey.steady(secrets, events=events, seed=1))
    env = environment(settings, prefix, namespace, secrets_file, IDP_APP_ID=f"cb-{tag}",
                      IDP_PARTITIONS=str(settings.partitions), **(extra or {}))  # fmt: skip
    processes = [spawn("worker", env, home / f"worker-{tag}-{i}.log") for i in range(workers)]
    try:
        before = [cpu_seconds(pid) for pid in watch_pids]
        start = time.monotonic()
        rate = await measure(bootstrap, f"cb-{tag}", events, timeout=240, process=processes[0])
        wall = time.monotonic() - start
        cpu = [(cpu_seconds(pid) - b) / wall for pid, b in zip(watch_pids, before, strict=True)]
    finally:
        for process in processes:
            stop(process)
        await remove_run(bootstrap, settings.redis_url, prefix, namespace)
        await remove_keys(settings.redis_url, namespace)
    return rate.events / rate.seconds, cpu


async def main(events: int) -> None:
    """Run the passes and print their figures."""
    settings = Settings(
        kafka_bootstrap_servers=stack.cluster_bootstrap(3), redis_url=stack.cluster_redis_url()
    )
    home = Path(tempfile.mkdtemp(prefix="cluster-bench-"))
    print(f"steady mix, {events} events a pass, {settings.partitions} partitions, RF 3")

    one, _ = await one_pass(settings, BENCH_SECRETS, events=events, workers=1, home=home)
    print(f"1 worker: {one:,.0f} ev/s", flush=True)
    two, _ = await one_pass(settings, BENCH_SECRETS, events=events, workers=2, home=home)
    print(f"scaling: 1 worker {one:,.0f} ev/s, 2 workers {two:,.0f} ev/s, ratio {two / one:.2f}")

    nowait, _ = await one_pass(settings, BENCH_SECRETS, events=events, workers=1, home=home,
                               extra={"IDP_REDIS_WAIT_REPLICAS": "0"})  # fmt: skip
    print(f"WAIT: 1 worker without WAIT {nowait:,.0f} ev/s, with WAIT 1 {one:,.0f} ev/s "
          f"({(one - nowait) / nowait:+.1%})")  # fmt: skip

    workspace = {"acme": BENCH_SECRETS["acme"]}
    port, pid = await master_pid(settings.redis_url, "acme")
    rate, (cpu,) = await one_pass(settings, workspace, events=events, workers=2, home=home,
                                  watch_pids=(pid,))  # fmt: skip
    print(f"one workspace: {rate:,.0f} ev/s with its master (port {port}) at {cpu:.1%} of a "
          f"core: {rate / cpu:,.0f} ev/s at 100 %")  # fmt: skip


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=60_000)
    asyncio.run(main(parser.parse_args().events))
