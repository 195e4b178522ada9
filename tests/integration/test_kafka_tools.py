"""Kafka's own command-line tools, run by `idp stack kafka-tool` against the real broker."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import uuid

import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient

from pipeline.ops.admin import ensure_topics
from pipeline.ops.topics import TopicSpec
from tests.support.kafka import PROJECT_ROOT

pytestmark = pytest.mark.integration


async def idp_kafka_tool(*args: str, timeout: float = 45.0) -> subprocess.CompletedProcess:
    argv = [sys.executable, "-m", "pipeline.cli", "stack", "kafka-tool", *args]
    return await asyncio.to_thread(
        subprocess.run,
        argv,
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


async def test_kafka_topics_lists_and_the_console_consumer_reads_what_was_produced(
    servers: tuple[str, str],
) -> None:
    bootstrap, _ = servers
    topic = f"tools{uuid.uuid4().hex[:10]}.check"
    await ensure_topics(bootstrap, [TopicSpec(topic, 1, {})])
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        await producer.send_and_wait(topic, b'{"hello": "tools"}', key=b"device-1")
        listed = await idp_kafka_tool("kafka-topics", "--bootstrap-server", bootstrap, "--list")
        assert listed.returncode == 0, listed.stderr
        assert topic in listed.stdout.split()

        consumed = await idp_kafka_tool(
            "kafka-console-consumer", "--bootstrap-server", bootstrap, "--topic", topic,
            "--from-beginning", "--max-messages", "1", "--timeout-ms", "30000",
            "--property", "print.key=true", "--property", "key.separator=|",
        )  # fmt: skip
        assert consumed.returncode == 0, consumed.stderr
        assert consumed.stdout.strip().splitlines() == ['device-1|{"hello": "tools"}']

        offsets = await idp_kafka_tool("kafka-get-offsets", "--bootstrap-server", bootstrap,
                                       "--topic", topic)  # fmt: skip
        assert offsets.returncode == 0, offsets.stderr
        assert offsets.stdout.split() == [f"{topic}:0:1"]
    finally:
        await producer.stop()
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
        await admin.start()
        try:
            await admin.delete_topics([topic])
        finally:
            await admin.close()


async def test_an_unknown_tool_name_fails_with_the_known_names() -> None:
    result = await idp_kafka_tool("kafka-no-such-tool")
    assert result.returncode == 1
    assert "unknown Kafka tool 'kafka-no-such-tool'" in result.stderr
    assert "kafka-consumer-groups" in result.stderr
