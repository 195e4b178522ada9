"""Inputs in every compression codec Kafka offers are consumed, from aiokafka and librdkafka.

Each producer batches (linger) and compresses; the broker keeps the producer's batches as they
came (`compression.type=producer`), so the worker reads batches in that codec. The batches
are checked on the broker, through a raw fetch, before the worker's outputs are.
"""

from __future__ import annotations

import asyncio
import subprocess
from datetime import UTC, datetime

import orjson
from aiokafka import AIOKafkaProducer
from aiokafka.client import AIOKafkaClient
from aiokafka.protocol.fetch import FetchRequest
from aiokafka.record.memory_records import MemoryRecords
from aiokafka.structs import TopicPartition

from pipeline.ops import stack
from tests.support import events as ev
from tests.support.kafka import Pipeline

WS = "ws-a"
TOPIC = "telemetry.page_view"
CODEC_IDS = {"none": 0, "gzip": 1, "snappy": 2, "lz4": 3, "zstd": 4}
PER_CODEC = 4


def now() -> str:
    """The wall clock in RFC 3339, close to the record timestamp the producer sets (R14)."""
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


async def stored_batches(bootstrap: str, topic: str, partition: int) -> list[tuple[int, int]]:
    """(compression codec id, records) of each batch the partition holds, as the broker has them."""
    client = AIOKafkaClient(bootstrap_servers=bootstrap)
    await client.bootstrap()
    try:
        client.add_topic(topic)
        await client.force_metadata_update()
        node = client.cluster.leader_for_partition(TopicPartition(topic, partition))
        request = FetchRequest(100, 1, 1 << 20, 0, [(topic, [(partition, 0, 1 << 20)])])
        response = await client.send(node, request)
        batches = []
        for _, partitions in response.topics:
            for _, error, _, *data in partitions:
                assert error == 0, error
                records = MemoryRecords(data[-1])
                while records.has_next():
                    found = records.next_batch()
                    batches.append((found.compression_type, found.next_offset - found.base_offset))
        return batches
    finally:
        await client.close()


def devices(pipeline: Pipeline) -> set[str]:
    return {a for p in pipeline.outputs.values("identity.profiles") for a in p["anonymous_ids"]}


async def test_batches_in_every_codec_from_aiokafka_are_consumed(pipeline: Pipeline) -> None:
    pipeline.start_worker()
    topic = pipeline.prefix + TOPIC
    expected: set[str] = set()
    for partition, codec in enumerate(("gzip", "snappy", "lz4", "zstd")):
        producer = AIOKafkaProducer(bootstrap_servers=pipeline.bootstrap, acks="all",
                                    compression_type=codec, linger_ms=200)  # fmt: skip
        await producer.start()
        try:
            for i in range(PER_CODEC):
                anon = f"aiokafka-{codec}-{i}"
                expected.add(anon)
                await producer.send(topic, orjson.dumps(ev.page_view(WS, anon, now())),
                                    key=anon.encode(), partition=partition)  # fmt: skip
            await producer.flush()
        finally:
            await producer.stop()
        assert await stored_batches(pipeline.bootstrap, topic, partition) == [
            (CODEC_IDS[codec], PER_CODEC)
        ]
    await pipeline.wait_for(lambda out: expected <= devices(pipeline), timeout=45,
                            what="a profile for every device, whatever its codec")  # fmt: skip


async def test_batches_in_every_codec_from_librdkafka_are_consumed(pipeline: Pipeline) -> None:
    kcat = stack.install_kcat()  # librdkafka's client, as kcat -z lz4 and other C producers
    pipeline.start_worker()
    topic = pipeline.prefix + TOPIC
    expected: set[str] = set()
    for partition, codec in enumerate(("gzip", "snappy", "lz4", "zstd")):
        lines = []
        for i in range(PER_CODEC):
            anon = f"kcat-{codec}-{i}"
            expected.add(anon)
            lines.append(f"{anon}|".encode() + orjson.dumps(ev.page_view(WS, anon, now())))
        argv = [kcat, "-b", pipeline.bootstrap, "-P", "-t", topic, "-p", str(partition),
                "-z", codec, "-K", "|", "-X", "linger.ms=200"]  # fmt: skip
        result = await asyncio.to_thread(subprocess.run, argv, input=b"\n".join(lines) + b"\n",
                                         capture_output=True, timeout=30, check=False)  # fmt: skip
        assert result.returncode == 0, result.stderr.decode(errors="replace")
        assert await stored_batches(pipeline.bootstrap, topic, partition) == [
            (CODEC_IDS[codec], PER_CODEC)
        ]
    await pipeline.wait_for(lambda out: expected <= devices(pipeline), timeout=45,
                            what="a profile for every device, whatever its codec")  # fmt: skip
