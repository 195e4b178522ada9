"""`idp bench`: the worker's throughput and latency through the real broker and Redis.

One run, on fresh topics, consumer groups and Redis namespace:

1. produce N events of a steady-state journey (see `pipeline.tools.journey` for the mix);
2. a bare Faust agent, with the worker's Faust settings and Faust's and aiokafka's own
   consumer, only iterates them: its events/s (the baseline of the ratio); then the same
   agent on the worker's consumer (`pipeline.worker.fetching`, `pipeline.worker.draining`);
3. the worker processes the same N events into empty state: its sustained events/s;
4. steps 2 and 3 twice more (new consumer groups, new state), because this shared machine's
   speed drifts by several percent from run to run: each rate is the best of its three passes;
5. with the last worker caught up, the journey goes on (same population, later times) offered
   at half the worker's rate for a fixed time, and each output is matched to the input that
   caused it: latency percentiles.

Throughput is read from the broker: the consumer group's committed offsets (committed every
0.2 s here), from the first commit seen to the last, so start-up time is not counted.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import subprocess
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import redis.asyncio as aioredis
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError
from rich.console import Console
from rich.table import Table

from pipeline.core import ids
from pipeline.ops.admin import ensure_topics, remove_keys, remove_run, stop_consumer
from pipeline.ops.processes import cpu_seconds, spawn, stop
from pipeline.ops.settings import Settings
from pipeline.ops.topics import topic_specs
from pipeline.state.base import Keys
from pipeline.tools import journey
from pipeline.tools.demo import end_offsets
from schemas.topics import (
    INPUT_TOPICS,
    LOGIN,
    LOGOUT,
    MERGED,
    OUTPUT_TOPICS,
    PROFILES,
    SHUTDOWN,
    SIGNUP,
)

COMMIT_INTERVAL_S = "0.2"
PASSES = 3  # throughput passes of each of the bare agents and the worker
BASELINES = {
    "bare": "bare Faust agent",
    "consumer": "bare agent, worker's consumer",
}
BENCH_SECRETS = {
    "acme": "bench-secret-acme-0123456789abcdef",
    "globex": "bench-secret-globex-0123456789abc",
}


def run_bare_worker(settings: Settings, *, our_consumer: bool = False) -> None:
    """A Faust worker whose agent only iterates the input topics (the benchmark's baselines).

    With Faust's and aiokafka's own consumer, or with `our_consumer`: the worker's fetch policy
    and message loop (`pipeline.worker.fetching`, `pipeline.worker.draining`).
    """
    import faust

    from pipeline.worker.app import faust_app, freeze_heap

    app = faust_app(settings, consumer_patches=our_consumer)
    inputs = app.topic(*(settings.topic(name) for name in INPUT_TOPICS), value_type=bytes)

    @app.agent(inputs, name="drain")  # type: ignore[arg-type] # Faust types agents by StreamT
    async def drain(stream: faust.Stream) -> None:
        async for _ in stream.take_events(settings.batch_size, within=settings.batch_within_s):
            pass

    freeze_heap()  # as for `idp worker`
    worker = faust.Worker(app, loglevel="warning", quiet=True)
    worker.spinner = None  # as for `idp worker`: the same conditions for both
    worker.execute_from_commandline()


@dataclass(frozen=True, slots=True)
class Rate:
    """Events consumed and the time they took."""

    events: int
    seconds: float

    @property
    def per_second(self) -> float:
        """Sustained events per second."""
        return self.events / self.seconds if self.seconds > 0 else 0.0


async def produce(
    bootstrap: str, prefix: str, records: list[journey.Record], *, rate: float | None = None
) -> None:
    """Produce in order, as fast as the client allows or `rate` records a second at most."""
    linger_ms = 20 if rate is None else 0
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=linger_ms,
                                max_batch_size=262144)  # fmt: skip
    await producer.start()
    try:
        started = time.monotonic()
        for n, record in enumerate(records):
            ahead = 0.0 if rate is None else started + n / rate - time.monotonic()
            if ahead > 0:
                await asyncio.sleep(ahead)
            value = record.value if isinstance(record.value, bytes) else orjson.dumps(record.value)
            await producer.send(prefix + record.topic, value, key=record.key.encode(),
                                timestamp_ms=record.timestamp_ms)  # fmt: skip
        await producer.flush()
    finally:
        await producer.stop()


async def committed_offsets(admin: AIOKafkaAdminClient, group: str) -> dict[TopicPartition, int]:
    """The group's committed offset per partition (none while the broker cannot say)."""
    try:
        offsets = await admin.list_consumer_group_offsets(group)
    except KafkaError:
        return {}
    return {tp: meta.offset for tp, meta in offsets.items()}


async def committed(admin: AIOKafkaAdminClient, group: str) -> int:
    """Records the group committed, over all its partitions (0 while the broker cannot say)."""
    return sum(max(offset, 0) for offset in (await committed_offsets(admin, group)).values())


async def measure(
    bootstrap: str, group: str, total: int, *, timeout: float, process: subprocess.Popen
) -> Rate:
    """Poll the group's committed offsets until they reach `total`.

    The rate runs from the first commit seen to the last, so it needs at least two commits.
    """
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    first: tuple[float, int] | None = None
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            if process.poll() is not None:
                message = f"the measured process exited with {process.returncode}"
                raise RuntimeError(message)
            done = await committed(admin, group)
            now = time.monotonic()
            if done > 0 and first is None:
                first = (now, done)
                if done >= total:  # no second reading: no rate
                    message = (f"group {group} consumed all {total} events between two commits "
                               f"({COMMIT_INTERVAL_S} s apart): too few events to measure a "
                               "rate; run with more (--events)")  # fmt: skip
                    raise ValueError(message)
            if done >= total and first is not None:
                return Rate(total - first[1], now - first[0])
            await asyncio.sleep(0.05)
    finally:
        await admin.close()
    message = f"group {group} did not finish {total} events within {timeout:.0f}s"
    raise TimeoutError(message)


def environment(
    settings: Settings, prefix: str, namespace: str, secrets_file: Path, **extra: str
) -> dict[str, str]:
    """The environment of a worker or bare agent that a measurement starts.

    The stack of `settings`, the run's topics, namespace and secrets, offsets committed often
    (rates are read from them) and quiet logs; then `extra`, which may override any of them.
    """
    return {"KAFKA_BOOTSTRAP_SERVERS": settings.kafka_bootstrap_servers,
            "REDIS_URL": settings.redis_url, "IDP_TOPIC_PREFIX": prefix,
            "IDP_STATE_NAMESPACE": namespace, "IDP_SECRETS_FILE": str(secrets_file),
            "IDP_COMMIT_INTERVAL_S": COMMIT_INTERVAL_S, "IDP_LOG_LEVEL": "warning",
            **extra}  # fmt: skip


async def latency(
    bootstrap: str,
    prefix: str,
    records: list[journey.Record],
    rate: float,
    *,
    known_devices: set[tuple[str, str]],
) -> tuple[list[float], list[float]]:
    """Offer `records` at `rate` events/s; return latencies in ms (record time, receive time).

    Sampled: logins, signups and logouts (by the merges and shutdowns they cause) and the
    first visit of each device not in `known_devices` (by its new visitor's profile). Events
    that change nothing published (a page view of a known device, a repeated login) have no
    output to time.
    """
    outputs = [prefix + name for name in OUTPUT_TOPICS]
    start_offsets = await end_offsets(bootstrap, outputs)
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    consumer.assign(list(start_offsets))
    for tp, offset in start_offsets.items():
        consumer.seek(tp, offset)
    sent: dict[str, int] = {}  # cause key -> input record timestamp (ms)
    matched = [time.monotonic()]  # when an output was last matched to its cause
    by_record: list[float] = []
    by_receipt: list[float] = []

    def cause_of(topic: str, key: bytes, value: dict | None) -> str | None:
        if topic in (MERGED, SHUTDOWN) and value is not None:
            return value["cause_event_id"]
        if topic == PROFILES and value is not None:
            return value["contact_id"]  # a new visitor's profile, caused by its first event
        return None

    async def read() -> None:
        async for message in consumer:
            value = orjson.loads(message.value) if message.value else None
            cause = cause_of(message.topic.removeprefix(prefix), message.key, value)
            sent_at = sent.pop(cause, None) if cause else None
            if sent_at is not None:
                by_record.append(message.timestamp - sent_at)
                by_receipt.append(time.time() * 1000 - sent_at)
                matched[0] = time.monotonic()

    # Everything a record needs is prepared before the clock starts, so the offered rate is
    # not bent by encoding; records due together go out together (at most ~1,000 wake-ups a
    # second instead of one per record), each stamped with its own timestamp.
    seen_devices = set(known_devices)
    offered: list[tuple[str, bytes, bytes, str | None, int | None]] = []
    for record in records:
        value = record.value
        if isinstance(value, bytes):
            continue
        device = (value["workspace_id"], value["anonymous_id"])
        cause = None
        if record.topic in (LOGIN, SIGNUP, LOGOUT):
            cause = value["event_id"]
        elif device not in seen_devices:
            cause = ids.visitor_contact_id(*device, ids.ORIGIN)
        seen_devices.add(device)
        offered.append((prefix + record.topic, orjson.dumps(value), record.key.encode(), cause,
                        record.timestamp_ms))  # fmt: skip
    reader = asyncio.create_task(read())
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=1)
    await producer.start()
    try:
        started, index = time.monotonic(), 0
        while index < len(offered):
            due = min(len(offered), int((time.monotonic() - started) * rate) + 1)
            while index < due:
                topic, value, key, cause, event_ms = offered[index]
                stamp = int(time.time() * 1000)
                # The record carries its event's time (R14); latency is timed from `stamp`.
                await producer.send(topic, value, key=key, timestamp_ms=event_ms)
                if cause is not None:
                    sent[cause] = stamp
                index += 1
            await asyncio.sleep(max(0.001, started + index / rate - time.monotonic()))
        await producer.flush()
        # Until the outputs have stopped coming (what is left in `sent` caused none: a repeated
        # login, say), at most 10 s.
        deadline = time.monotonic() + 10
        while sent and time.monotonic() < deadline and time.monotonic() - matched[0] < 2:
            await asyncio.sleep(0.1)
    finally:
        reader.cancel()
        await producer.stop()
        await stop_consumer(consumer)
    return by_record, by_receipt


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0-100)."""
    if not values:
        return float("nan")
    return statistics.quantiles(values, n=1000, method="inclusive")[max(0, int(q * 10) - 1)]


async def run(
    settings: Settings,
    *,
    events: int,
    latency_seconds: float,
    seed: int,
    load: float = 0.5,
    passes: int = PASSES,
) -> dict:
    """The whole benchmark; prints a table and returns the figures."""
    console = Console()
    run_id = uuid.uuid4().hex[:8]
    prefix, namespace = f"bench{run_id}.", f"bench{run_id}"
    bootstrap = settings.kafka_bootstrap_servers
    workdir = Path(tempfile.mkdtemp(prefix="idp-bench-"))
    secrets_file = workdir / "secrets.json"
    secrets_file.write_bytes(orjson.dumps(BENCH_SECRETS))
    await ensure_topics(bootstrap, topic_specs(prefix, settings.partitions))
    steady = journey.SteadyJourney(BENCH_SECRETS, seed=seed)
    records = steady.take(events)
    mix = {topic: sum(r.topic == topic for r in records) for topic in INPUT_TOPICS}
    env = environment(settings, prefix, namespace, secrets_file)
    console.print(f"producing {len(records)} events to {prefix}* ...")
    await produce(bootstrap, prefix, records)
    worker: subprocess.Popen | None = None
    namespaces: list[str] = []
    bare_rates: list[Rate] = []
    consumer_rates: list[Rate] = []
    worker_rates: list[Rate] = []
    try:
        for attempt in range(1, passes + 1):
            for command, name, rates in (("bench-bare", "bare", bare_rates),
                                         ("bench-bare --our-consumer", "consumer",
                                          consumer_rates)):  # fmt: skip
                console.print(f"pass {attempt}/{passes}: {BASELINES[name]} draining them ...")
                group = f"{name}-{run_id}-{attempt}"
                log = workdir / f"{name}{attempt}.log"
                bare = spawn(command, {**env, "IDP_APP_ID": group}, log)
                try:
                    rates.append(
                        await measure(bootstrap, group, len(records), timeout=600, process=bare)
                    )
                finally:
                    stop(bare)
            console.print(f"pass {attempt}/{passes}: the worker processing them ...")
            group, state = f"worker-{run_id}-{attempt}", f"{namespace}-{attempt}"
            namespaces.append(state)
            worker = spawn("worker", {**env, "IDP_APP_ID": group, "IDP_STATE_NAMESPACE": state},
                           workdir / f"worker{attempt}.log")  # fmt: skip
            worker_rates.append(
                await measure(bootstrap, group, len(records), timeout=600, process=worker)
            )
            if attempt < passes:  # the last one stays for the latency phase
                stop(worker)
                worker = None
        bare_rate = max(bare_rates, key=lambda r: r.per_second)
        consumer_rate = max(consumer_rates, key=lambda r: r.per_second)
        worker_rate = max(worker_rates, key=lambda r: r.per_second)
        offered = worker_rate.per_second * load
        later = steady.take(int(offered * latency_seconds))
        console.print(f"offering {len(later)} more events at {offered:.0f}/s for latency ...")
        known = {(r.value["workspace_id"], r.key) for r in records if isinstance(r.value, dict)}
        assert worker is not None
        busy = cpu_seconds(worker.pid), time.monotonic()
        by_record, by_receipt = await latency(bootstrap, prefix, later, offered,
                                              known_devices=known)  # fmt: skip
        busy = cpu_seconds(worker.pid) - busy[0], time.monotonic() - busy[1]
        memory = await memory_by_kind(settings.redis_url, namespaces[-1])
    finally:
        if worker is not None:
            stop(worker)
        await remove_run(settings.kafka_bootstrap_servers, settings.redis_url, prefix, namespace)
        for state in namespaces:
            await remove_keys(settings.redis_url, state)
    figures: dict[str, Any] = {
        "run": run_id,  # topics bench<run>.*, Redis keys bench<run>-*: removed when done
        "events": len(records),
        "mix": mix,
        "bare_passes_events_per_s": [round(r.per_second) for r in bare_rates],
        "consumer_passes_events_per_s": [round(r.per_second) for r in consumer_rates],
        "worker_passes_events_per_s": [round(r.per_second) for r in worker_rates],
        "bare_events_per_s": round(bare_rate.per_second),
        "consumer_events_per_s": round(consumer_rate.per_second),
        "worker_events_per_s": round(worker_rate.per_second),
        "ratio": round(worker_rate.per_second / bare_rate.per_second, 3),
        # Against an agent that costs what the worker's consumer costs: what the worker's own
        # work (decoding, Redis, deciding, sending) leaves of the consumer's rate.
        "ratio_to_consumer": round(worker_rate.per_second / consumer_rate.per_second, 3),
        "offered_events_per_s": round(offered),
        # How busy the worker was meanwhile: at half the peak it is more than half busy, since
        # small batches cost more per event than the backlog's batches of the peak.
        "latency_worker_cpu": round(busy[0] / busy[1], 3),
        "latency_worker_us_per_event": round(busy[0] / max(len(later), 1) * 1e6),
        "latency_samples": len(by_record),
        "latency_ms_record": {q: round(percentile(by_record, q), 1) for q in (50, 90, 99)},
        "latency_ms_received": {q: round(percentile(by_receipt, q), 1) for q in (50, 90, 99)},
        "cpus": os.cpu_count(),
        "event_loop": settings.event_loop,
        "redis_keys": {kind: count for kind, (count, _) in memory.items()},
        "redis_bytes": {kind: total for kind, (_, total) in memory.items()},
    }
    contacts = memory.get("contact", (0, 0))[0]
    state_bytes = sum(total for kind, (_, total) in memory.items() if kind != "evt")
    figures["redis_bytes_per_contact"] = round(state_bytes / contacts) if contacts else None
    table = Table(title=f"idp bench: {len(records)} events, {os.cpu_count()} CPUs, "
                        f"{settings.event_loop} event loop")  # fmt: skip
    table.add_column("measure")
    table.add_column("value", justify="right")
    for name, label in (("bare", BASELINES["bare"]), ("consumer", BASELINES["consumer"]),
                        ("worker", "worker, sustained")):  # fmt: skip
        table.add_row(f"{label} (best pass)", f"{figures[f'{name}_events_per_s']:,} events/s")
        each = " / ".join(f"{r:,}" for r in figures[f"{name}_passes_events_per_s"])
        table.add_row("  passes", each)
    table.add_row("worker / bare Faust agent", f"{figures['ratio']:.0%}")
    table.add_row("worker / bare agent on its consumer", f"{figures['ratio_to_consumer']:.0%}")
    table.add_row("latency offered rate", f"{figures['offered_events_per_s']:,} events/s")
    table.add_row("  worker CPU meanwhile", f"{figures['latency_worker_cpu']:.0%} of a core, "
                  f"{figures['latency_worker_us_per_event']} µs per event")  # fmt: skip
    for q in (50, 90, 99):
        table.add_row(
            f"latency p{q} (record → output record)", f"{figures['latency_ms_record'][q]} ms"
        )
    for q in (50, 90, 99):
        table.add_row(
            f"latency p{q} (record → received downstream)",
            f"{figures['latency_ms_received'][q]} ms",
        )
    table.add_row("latency samples", str(len(by_record)))
    for kind, (count, total) in sorted(memory.items()):
        table.add_row(f"redis {kind} records", f"{count:,} × {total / max(count, 1):,.0f} B")
    if figures["redis_bytes_per_contact"]:
        table.add_row("redis state per contact", f"{figures['redis_bytes_per_contact']:,} B")
    console.print(table)
    console.print("mix: " + ", ".join(f"{k.split('.')[1]} {v}" for k, v in mix.items()))
    print(orjson.dumps(figures, option=orjson.OPT_NON_STR_KEYS).decode())
    return figures


async def memory_by_kind(url: str, namespace: str) -> dict[str, tuple[int, int]]:
    """Per record kind: how many keys and how many bytes (`MEMORY USAGE`, values included)."""
    layout = Keys(namespace)
    client = aioredis.Redis.from_url(url)
    try:
        keys = [key async for key in client.scan_iter(match=layout.everything(), count=1000)]
        totals: dict[str, tuple[int, int]] = {}
        for start in range(0, len(keys), 1000):
            chunk = keys[start : start + 1000]
            pipe = client.pipeline(transaction=False)
            for key in chunk:
                pipe.memory_usage(key, samples=0)
            for key, used in zip(chunk, await pipe.execute(), strict=True):
                parts = layout.parse(key.decode())
                kind = parts.kind if parts is not None else "other"
                count, total = totals.get(kind, (0, 0))
                totals[kind] = (count + 1, total + (used or 0))
        return totals
    finally:
        await client.aclose()
