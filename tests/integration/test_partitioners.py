"""Producers that partition differently: the same identities come out (issue: producers).

librdkafka's default partitioner (`consistent_random`: CRC32 of the key) and the Java client's
(murmur2 of the key) put one anonymous_id on different partitions of equally partitioned
topics. Here page views and chats go where a Java producer puts them, signups, logins and
logouts where a librdkafka one does, and two workers of one consumer group read them: a
device's events then reach both workers. State lives in Redis with compare-and-set commits,
so the final profiles must equal the oracle's all the same (docs/producers.md).
"""

from __future__ import annotations

import subprocess
import time
import uuid
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import orjson
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.partitioner import murmur2

from pipeline.core.model import profile_from_bytes
from pipeline.core.oracle import Oracle
from pipeline.core.rules import CoreConfig
from pipeline.ops import stack
from pipeline.ops.admin import ensure_topics
from pipeline.ops.topics import TopicSpec
from pipeline.state.base import Keys
from pipeline.state.redis_store import RedisStore
from pipeline.tools import journey
from schemas.time import format_timestamp, parse_timestamp, to_epoch_ms
from schemas.topics import CHAT_START, LOGIN, LOGOUT, MERGED, PAGE_VIEW, SHUTDOWN, SIGNUP
from tests.integration.conftest import SECRETS
from tests.support import events as ev
from tests.support.kafka import OutputLog, Pipeline, read_topics

WS = "ws-a"
JAVA_TOPICS = (PAGE_VIEW, CHAT_START)
LIBRDKAFKA_TOPICS = (SIGNUP, LOGIN, LOGOUT)
# Many small commits: more chances for the two workers to decide the same contact at once.
SMALL_BATCHES = {"IDP_BATCH_SIZE": "20"}


def murmur2_partition(key: bytes, partitions: int) -> int:
    """The Java client's default partitioner for a key (aiokafka's and librdkafka's `murmur2`)."""
    return (murmur2(key) & 0x7FFFFFFF) % partitions


def crc32_partition(key: bytes, partitions: int) -> int:
    """librdkafka's default partitioner (`consistent_random`) for a non-empty key."""
    return zlib.crc32(key) % partitions


def mixed_partition(topic: str, key: bytes, partitions: int) -> int:
    """Page views and chats from a Java backend, session events from a librdkafka one."""
    if topic in JAVA_TOPICS:
        return murmur2_partition(key, partitions)
    return crc32_partition(key, partitions)


def event_ms(record: journey.Record) -> int:
    return to_epoch_ms(parse_timestamp(record.value["timestamp"]))


def recent_journey(people: int, seed: int, *, ends_before_s: int = 120) -> list[journey.Record]:
    """A generated journey (no junk, no identity tokens) moved so it ends just before now.

    Every record is produced stamped with its event's own time, which must be recent: the
    input topics keep 7 days, and the lateness bounds (R14) are measured against the record's
    timestamp. The journey's events keep their order and spacing.
    """
    records = journey.generate({WS: SECRETS[WS]}, people=people, seed=seed, junk_ratio=0)
    shift_ms = int(time.time() * 1000) - ends_before_s * 1000 - max(map(event_ms, records))
    shift = timedelta(milliseconds=shift_ms)
    moved = []
    for record in records:
        assert isinstance(record.value, dict) and "identity_token" not in record.value
        at = parse_timestamp(record.value["timestamp"]) + shift
        moved.append(journey.Record(record.topic, record.key,
                                    {**record.value, "timestamp": format_timestamp(at)}))  # fmt: skip
    return moved


@dataclass(frozen=True)
class Expected:
    """What the oracle publishes for a journey: final profiles, merge and shutdown event_ids."""

    profiles: dict[str, dict[str, Any]]
    merges: set[str]
    shutdowns: set[str]


def expected(records: list[journey.Record]) -> Expected:
    """The oracle applied to the records, each with its record timestamp (its event's time)."""
    oracle = Oracle(CoreConfig(secrets={ws: (s.encode(),) for ws, s in SECRETS.items()}))
    for record in records:
        oracle.apply(ev.model_of(record.topic, record.value), record_ms=event_ms(record))
    profiles = {
        cid: orjson.loads(orjson.dumps(p.model_dump(mode="json")))
        for cid, p in oracle.profiles().items()
    }
    final = {(cid, p["merged_into"]) for cid, p in profiles.items() if p["merged_into"]}
    # The merges that count are those the final profiles imply (R12); output event_ids are
    # deterministic, so the pipeline must announce exactly these, and every shutdown.
    merges = {e.value.event_id for e in oracle.emitted if e.topic == MERGED
              and (e.value.from_contact_id, e.value.into_contact_id) in final}  # fmt: skip
    shutdowns = {e.value.event_id for e in oracle.emitted if e.topic == SHUTDOWN}
    assert len(merges) == len(final) and shutdowns  # the journey has merges and logouts
    return Expected(profiles, merges, shutdowns)


async def produce(
    bootstrap: str,
    prefix: str,
    records: list[journey.Record],
    partition_of: Callable[[str, bytes, int], int] | None = None,
) -> dict[tuple[str, str], int]:
    """Produce the records stamped with their event time; return (topic, key) -> partition.

    `partition_of(topic, key, partitions)` picks each record's partition, as another client's
    partitioner would; None leaves it to aiokafka's (Java's murmur2).
    """
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=True)
    await producer.start()
    placed: dict[tuple[str, str], int] = {}
    try:
        counts = {
            t: len(await producer.partitions_for(prefix + t)) for t in {r.topic for r in records}
        }
        pending = []
        for record in records:
            key = record.key.encode()
            partition = (
                None
                if partition_of is None
                else partition_of(record.topic, key, counts[record.topic])
            )
            pending.append((record, await producer.send(
                prefix + record.topic, orjson.dumps(record.value), key=key, partition=partition,
                timestamp_ms=event_ms(record))))  # fmt: skip
        for record, future in pending:
            placed[(record.topic, record.key)] = (await future).partition
    finally:
        await producer.stop()
    return placed


def assignments(pipeline: Pipeline, index: int) -> list[set[tuple[str, int]]]:
    """Every input-partition assignment worker `index` logged, as (logical topic, partition)."""
    found = []
    for line in full_log(pipeline, index).splitlines():
        if "assigned" in line and "input partitions:" in line:
            names = line.split("input partitions:", 1)[1].split()
            found.append({(name.rsplit(":", 1)[0].removeprefix(pipeline.prefix),
                           int(name.rsplit(":", 1)[1])) for name in names})  # fmt: skip
    return found


def full_log(pipeline: Pipeline, index: int) -> str:
    path = pipeline.log_dir / f"worker-{index}.log"
    return path.read_text(errors="replace") if path.exists() else ""


async def settle(pipeline: Pipeline, want: Expected, *, timeout: float = 60) -> None:
    """Await the oracle's final profiles and every merge and shutdown it announces."""

    def announced(out: OutputLog, topic: str) -> set[str]:
        return {v["event_id"] for v in out.values(topic)}

    def complete(out: OutputLog) -> bool:
        return (out.latest_profiles() == want.profiles and want.merges <= announced(out, MERGED)
                and want.shutdowns <= announced(out, SHUTDOWN))  # fmt: skip

    try:
        await pipeline.wait_for(complete, timeout=timeout, what="the oracle's final profiles")
    except AssertionError:
        got = pipeline.outputs.latest_profiles()
        differing = {c: (got.get(c), want.profiles.get(c)) for c in set(got) | set(want.profiles)
                     if got.get(c) != want.profiles.get(c)}  # fmt: skip
        missing = (want.merges - announced(pipeline.outputs, MERGED)) | (
            want.shutdowns - announced(pipeline.outputs, SHUTDOWN)
        )
        logs = "\n".join(full_log(pipeline, i)[-3000:] for i in range(len(pipeline.workers)))
        raise AssertionError(
            f"{len(differing)} of {len(want.profiles)} contacts differ, e.g. "
            f"{list(differing.items())[:2]}; never announced: {sorted(missing)[:5]}\n"
            f"{await history(pipeline, sorted(differing)[:3])}\n{logs}"
        ) from None


async def history(pipeline: Pipeline, contact_ids: list[str]) -> str:
    """For a failure report: each contact's published versions, and its record in Redis now."""
    store = RedisStore.from_url(pipeline.redis_url, marker_ttl_s=3600)
    lines = []
    try:
        for cid in contact_ids:
            (stored,) = await store.read([Keys(pipeline.namespace).of(WS, "contact", cid)])
            now = profile_from_bytes(stored.data).model_dump(mode="json") if stored.data else None
            lines.append(f"{cid} in Redis: {now}")
            for r in pipeline.outputs.of("identity.profiles"):
                if r.key.decode() == cid:
                    lines.append(f"  published at {r.partition}/{r.offset}: {r.value}")
    finally:
        await store.close()
    return "\n".join(lines)


def test_murmur2_is_the_java_clients() -> None:
    # Kafka's own vectors for Utils.murmur2 (clients/.../utils/UtilsTest.java), as signed ints.
    java = {b"21": -973932308, b"foobar": -790332482, b"a-little-bit-long-string": -985981536,
            b"a-little-bit-longer-string": -1486304829, b"abc": 479470107}  # fmt: skip
    assert {k: murmur2(k) & 0xFFFFFFFF for k in java} == {
        k: v & 0xFFFFFFFF for k, v in java.items()
    }


async def test_librdkafka_partitions_as_computed_here(servers: tuple[str, str]) -> None:
    """kcat's default partitioner is `crc32_partition`; with murmur2_random it is Java's."""
    bootstrap, _ = servers
    kcat = stack.install_kcat()
    base = f"partitioners-{uuid.uuid4().hex[:10]}"
    topics = {name: f"{base}.{name}" for name in ("consistent_random", "murmur2_random")}
    await ensure_topics(bootstrap, [TopicSpec(t, 4, {}) for t in topics.values()])
    keys = [f"anon-{i}-a" for i in range(64)]
    try:
        for partitioner, topic in topics.items():
            lines = "".join(f"{key}\t{{}}\n" for key in keys).encode()
            subprocess.run([kcat, "-b", bootstrap, "-P", "-t", topic, "-K", "\t",
                            "-X", f"partitioner={partitioner}"],
                           input=lines, check=True, timeout=60)  # fmt: skip
        log = await read_topics(bootstrap, list(topics.values()), "")
    finally:
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
        await admin.start()
        try:
            await admin.delete_topics(list(topics.values()))
        finally:
            await admin.close()
    placed = {(r.topic, r.key.decode()): r.partition for r in log.records}
    assert {k: placed[(topics["consistent_random"], k)] for k in keys} == {
        k: crc32_partition(k.encode(), 4) for k in keys
    }
    assert {k: placed[(topics["murmur2_random"], k)] for k in keys} == {
        k: murmur2_partition(k.encode(), 4) for k in keys
    }


async def test_two_workers_read_differently_partitioned_topics(pipeline: Pipeline) -> None:
    records = recent_journey(people=250, seed=61)
    want = expected(records)
    for _ in range(2):
        pipeline.start_worker(SMALL_BATCHES)

    def both_own_some(_: OutputLog) -> bool:
        latest = [assignments(pipeline, i)[-1:] for i in (0, 1)]
        return all("Worker]: Ready" in full_log(pipeline, i) for i in (0, 1)) and all(
            last and 0 < len(last[0]) < 5 * 4 for last in latest
        )

    await pipeline.wait_for(both_own_some, timeout=90, what="both workers owning partitions")
    placed = await produce(pipeline.bootstrap, pipeline.prefix, records, mixed_partition)

    # The partitioning really differs: most devices with both kinds of events have their page
    # views and chats on another partition number than their signups, logins and logouts.
    java = {key: p for (topic, key), p in placed.items() if topic in JAVA_TOPICS}
    librdkafka = {key: p for (topic, key), p in placed.items() if topic in LIBRDKAFKA_TOPICS}
    both = set(java) & set(librdkafka)
    differ = {key for key in both if java[key] != librdkafka[key]}
    assert len(both) >= 80 and len(differ) >= 0.6 * len(both), (len(both), len(differ))

    await settle(pipeline, want)

    # And the two workers each decided some of those devices' events: with the partitions they
    # owned at the end, many devices had events on both workers.
    owner = {tp: index for index in (0, 1) for tp in assignments(pipeline, index)[-1]}
    workers_of: dict[str, set[int]] = {}
    for (topic, key), partition in placed.items():
        workers_of.setdefault(key, set()).add(owner[(topic, partition)])
    split = {key for key in both if len(workers_of[key]) == 2}
    assert len(split) >= 0.25 * len(both), (len(both), len(split))
    print(
        f"\n{len(records)} events, {len(want.profiles)} profiles; of {len(both)} devices with "
        f"both kinds of events, {len(differ)} partitioned differently, {len(split)} on both workers"
    )
    assert len(want.profiles) >= 250 and all(w.poll() is None for w in pipeline.workers)
