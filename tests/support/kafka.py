"""A running pipeline for one integration test: its own topics, group, namespace and worker."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import redis.asyncio as aioredis
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import UnknownTopicOrPartitionError

from pipeline.ops.admin import stop_consumer
from pipeline.tools.demo import end_offsets
from schemas.time import parse_timestamp, to_epoch_ms
from schemas.topics import INPUT_TOPICS, OUTPUT_TOPICS

PROJECT_ROOT = Path(__file__).resolve().parents[2]
SEND_ROUNDS = 5  # rounds of sending again the records a broker's failure refused


@dataclass
class Output:
    topic: str
    key: bytes | None
    value: dict[str, Any] | None  # None: a tombstone on the compacted profiles topic
    partition: int
    offset: int


@dataclass
class OutputLog:
    """Everything the output topics received, read continuously in the background."""

    records: list[Output] = field(default_factory=list)

    def of(self, topic: str) -> list[Output]:
        return [r for r in self.records if r.topic == topic]

    def values(self, topic: str) -> list[dict[str, Any]]:
        return [r.value for r in self.of(topic) if r.value is not None]

    def latest_profiles(self) -> dict[str, dict[str, Any]]:
        """The compacted view: last profile per contact_id, tombstoned contacts removed."""
        latest = {r.key.decode(): r.value for r in self.of("identity.profiles")}
        return {cid: value for cid, value in latest.items() if value is not None}


class Pipeline:
    """Produce inputs, run `idp worker` as a subprocess, and await outputs."""

    def __init__(self, *, bootstrap: str, redis_url: str, prefix: str, app_id: str,
                 namespace: str, secrets_file: Path, log_dir: Path) -> None:  # fmt: skip
        self.bootstrap = bootstrap
        self.redis_url = redis_url
        self.prefix = prefix
        self.app_id = app_id
        self.namespace = namespace
        self.secrets_file = secrets_file
        self.log_dir = log_dir
        self.outputs = OutputLog()
        self.workers: list[subprocess.Popen] = []
        self.expected_exits: set[int] = set()  # pids of workers a test kills or makes exit
        self.resent = 0  # records `send_many` sent again after a failed delivery
        self._producer: AIOKafkaProducer | None = None
        self._consumer: AIOKafkaConsumer | None = None
        self._reader: asyncio.Task | None = None

    @property
    def env(self) -> dict[str, str]:
        return {
            **os.environ,
            "KAFKA_BOOTSTRAP_SERVERS": self.bootstrap,
            "REDIS_URL": self.redis_url,
            "IDP_TOPIC_PREFIX": self.prefix,
            "IDP_APP_ID": self.app_id,
            "IDP_STATE_NAMESPACE": self.namespace,
            "IDP_SECRETS_FILE": str(self.secrets_file),
            "IDP_PARTITIONS": "4",
        }

    async def start(self, *, timeout: float = 30.0) -> None:
        """Start the producer and the reader of the output topics, within `timeout` seconds.

        A topic created moments ago may not be in every broker's metadata yet, and on a loaded
        machine a consumer's start can stall on such a broker: each attempt is bounded, and a
        stalled or refused one is abandoned and made again until `timeout`.
        """
        self._producer = AIOKafkaProducer(bootstrap_servers=self.bootstrap, acks="all")
        await asyncio.wait_for(self._producer.start(), timeout)
        topics = [self.prefix + name for name in OUTPUT_TOPICS]
        deadline = time.monotonic() + timeout
        while True:
            self._consumer = AIOKafkaConsumer(
                *topics, bootstrap_servers=self.bootstrap, auto_offset_reset="earliest",
                enable_auto_commit=False, group_id=None, metadata_max_age_ms=1000,
                request_timeout_ms=10000,
            )  # fmt: skip
            try:
                await asyncio.wait_for(self._consumer.start(), max(5.0, timeout / 3))
                break
            except (UnknownTopicOrPartitionError, TimeoutError) as exc:
                try:
                    await asyncio.wait_for(stop_consumer(self._consumer), 10)
                except TimeoutError:
                    pass  # abandoned: its connections close with the loop
                if time.monotonic() > deadline:
                    raise TimeoutError(f"the output topics' reader did not start: {exc!r}") from exc
                await asyncio.sleep(0.2)
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        assert self._consumer is not None
        async for message in self._consumer:
            self.outputs.records.append(
                Output(message.topic.removeprefix(self.prefix), message.key,
                       None if message.value is None else orjson.loads(message.value),
                       message.partition, message.offset)
            )  # fmt: skip

    def start_worker(self, extra_env: dict[str, str] | None = None) -> subprocess.Popen:
        index = len(self.workers)
        log = (self.log_dir / f"worker-{index}.log").open("wb")
        process = subprocess.Popen(
            [sys.executable, "-m", "pipeline.cli", "worker"], cwd=PROJECT_ROOT,
            env={**self.env, **(extra_env or {})}, stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        self.workers.append(process)
        return process

    def worker_log(self, index: int = 0) -> str:
        """The worker's whole log: a line looked for may lie before a later traceback."""
        path = self.log_dir / f"worker-{index}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    async def send(
        self,
        topic: str,
        value: dict[str, Any] | bytes,
        *,
        key: str | None = None,
        timestamp_ms: int | None = None,
    ) -> None:
        """Produce one record; its timestamp is the event's own unless given (R14)."""
        assert self._producer is not None
        if isinstance(value, dict):
            key = key if key is not None else str(value.get("anonymous_id", ""))
            value = orjson.dumps(value)
        await self._producer.send_and_wait(
            self.prefix + topic, value, key=key.encode() if key is not None else None,
            timestamp_ms=timestamp_ms if timestamp_ms is not None else record_time(value),
        )  # fmt: skip

    async def send_many(self, messages: list[tuple[str, bytes, bytes | None]]) -> None:
        """Produce (topic, value, key) messages in order, then wait until all are written.

        Each record is stamped with its event's time, as a product's backend would (R14).
        """
        assert self._producer is not None
        todo = list(messages)
        for _ in range(SEND_ROUNDS):
            sent = [(message, await self._producer.send(
                self.prefix + message[0], message[1], key=message[2],
                timestamp_ms=record_time(message[1]))) for message in todo]  # fmt: skip
            results = await asyncio.gather(*(f for _, f in sent), return_exceptions=True)
            # A broker killed mid-send can fail a batch after aiokafka's retries: send those
            # records again (any order of a journey's events gives the same profiles), never
            # lose them silently as `flush` alone would.
            todo = [m for (m, _), r in zip(sent, results, strict=True) if isinstance(r, Exception)]
            if not todo:
                return
            self.resent += len(todo)
        raise AssertionError(f"{len(todo)} records could not be produced in {SEND_ROUNDS} rounds")

    async def wait_for(self, condition: Callable[[OutputLog], bool], *, timeout: float = 30.0,
                       what: str = "outputs") -> None:  # fmt: skip
        """Await a condition on the outputs; fail with the worker log if it never holds."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if condition(self.outputs):
                return
            for index, worker in enumerate(self.workers):
                if worker.pid in self.expected_exits:
                    continue
                if worker.poll() is not None and worker.returncode not in (
                    0,
                    -signal.SIGTERM,
                    -signal.SIGKILL,
                ):
                    raise AssertionError(
                        f"worker {index} exited {worker.returncode}:\n{self.worker_log(index)[-5000:]}"
                    )
            await asyncio.sleep(0.05)
        raise AssertionError(
            f"timed out after {timeout}s waiting for {what}; outputs so far: "
            f"{[(r.topic, r.value) for r in self.outputs.records][-20:]}\n"
            f"worker log:\n{self.worker_log()[-5000:]}"
        )

    def stop_workers(self) -> None:
        for worker in self.workers:
            if worker.poll() is None:
                worker.send_signal(signal.SIGTERM)
        for worker in self.workers:
            try:
                worker.wait(timeout=30)
            except subprocess.TimeoutExpired:
                worker.kill()
                worker.wait()

    async def close(self) -> None:
        self.stop_workers()
        if self._reader is not None:
            self._reader.cancel()
        if self._consumer is not None:
            await stop_consumer(self._consumer)
        if self._producer is not None:
            await self._producer.stop()


INPUTS = INPUT_TOPICS


def record_time(value: bytes | None) -> int | None:
    """The record timestamp a producer on the product's backend gives an event: its own time.

    None (the producer's clock) for a value without a readable timestamp.
    """
    try:
        stamp = orjson.loads(value or b"").get("timestamp")
        return None if stamp is None else to_epoch_ms(parse_timestamp(stamp))
    except (orjson.JSONDecodeError, AttributeError, ValueError, TypeError):
        return None


async def read_topics(bootstrap: str, topics: list[str], prefix: str) -> OutputLog:
    """Everything the topics hold now, from the beginning to their current end."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    log = OutputLog()
    try:
        partitions = []
        for topic in topics:
            await consumer._client.force_metadata_update()
            partitions += [
                TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())
            ]
        ends = await consumer.end_offsets(partitions)
        wanted = {tp: end for tp, end in ends.items() if end > 0}
        consumer.assign(list(wanted))
        await consumer.seek_to_beginning(*wanted)
        while wanted:
            batch = await consumer.getmany(timeout_ms=1000)
            for tp, messages in batch.items():
                for message in messages:
                    if message.offset < wanted.get(tp, -1):
                        value = None if message.value is None else orjson.loads(message.value)
                        log.records.append(Output(message.topic.removeprefix(prefix), message.key, value,
                                                  message.partition, message.offset))  # fmt: skip
                if messages and messages[-1].offset + 1 >= wanted.get(tp, 0):
                    wanted.pop(tp, None)
        return log
    finally:
        await stop_consumer(consumer)


async def unconsumed(bootstrap: str, group: str, topics: list[str]) -> list[str]:
    """The partitions of `topics` whose end the group's committed offset is short of.

    Each as "topic:partition committed/end" (committed -1: none), for a failure's report.
    """
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        committed = await admin.list_consumer_group_offsets(group)
    finally:
        await admin.close()
    behind = []
    for tp, end in (await end_offsets(bootstrap, topics)).items():
        offset = committed[tp].offset if tp in committed else -1
        if max(offset, 0) < end:
            behind.append(f"{tp.topic}:{tp.partition} {offset}/{end}")
    return behind


async def assert_run_removed(bootstrap: str, redis_url: str, run: str, what: str) -> None:
    """A run's Redis keys and topics (both named `run...`) are gone; deleting topics takes a
    moment, so they are awaited for 30 s."""
    client = aioredis.Redis.from_url(redis_url)
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        assert [k async for k in client.scan_iter(match=f"{run}*", count=1000)] == []
        deadline = asyncio.get_running_loop().time() + 30
        while [t for t in await admin.list_topics() if t.startswith(run)]:
            assert asyncio.get_running_loop().time() < deadline, f"the {what} topics stayed"
            await asyncio.sleep(0.2)
    finally:
        await admin.close()
        await client.aclose()
