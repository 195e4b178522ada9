"""A batch the worker cannot read holds its one partition; the others flow; the worker lives.

The worker here cannot decode zstd: a `cramjam` module placed first on its PYTHONPATH fails
to import, as on a machine where aiokafka was installed without its codec extras. Nothing
in the product is switched for the test.
"""

from __future__ import annotations

import asyncio
import re
import socket
import subprocess
import sys
import time
import urllib.request
from datetime import UTC, datetime
from pathlib import Path

import orjson
from aiokafka import AIOKafkaProducer

from tests.support import events as ev
from tests.support.kafka import PROJECT_ROOT, Pipeline

WS = "ws-a"
TOPIC = "telemetry.page_view"


def now() -> str:
    """The wall clock in RFC 3339, close to the record timestamp the producer sets (R14)."""
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def metrics_text(port: int) -> str:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as response:
            return response.read().decode()
    except OSError:
        return ""


async def eventually(condition, *, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await asyncio.to_thread(condition):
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def devices(pipeline: Pipeline) -> set[str]:
    return {a for p in pipeline.outputs.values("identity.profiles") for a in p["anonymous_ids"]}


async def produce(bootstrap: str, topic: str, partition: int, anonymous_ids: list[str], *,
                  compression: str | None = None) -> None:  # fmt: skip
    """Page views of these devices into one partition, as one batch (linger, sent together)."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all",
                                compression_type=compression, linger_ms=100)  # fmt: skip
    await producer.start()
    try:
        for anon in anonymous_ids:
            value = orjson.dumps(ev.page_view(WS, anon, now()))
            await producer.send(topic, value, key=anon.encode(), partition=partition)
        await producer.flush()
    finally:
        await producer.stop()


async def test_an_unreadable_batch_holds_its_partition_while_the_others_flow(
    pipeline: Pipeline, tmp_path: Path
) -> None:
    hidden = tmp_path / "no-codecs"
    hidden.mkdir()
    (hidden / "cramjam.py").write_text('raise ImportError("cramjam is hidden from this worker")\n')
    port = free_port()
    worker = pipeline.start_worker({"PYTHONPATH": str(hidden), "IDP_METRICS_PORT": str(port)})
    topic = pipeline.prefix + TOPIC
    bootstrap = pipeline.bootstrap

    await produce(bootstrap, topic, 0, ["p0-before"])  # offset 0
    await produce(bootstrap, topic, 0, ["p0-zstd-1", "p0-zstd-2", "p0-zstd-3"],
                  compression="zstd")  # offsets 1..3, one batch  # fmt: skip
    await produce(bootstrap, topic, 0, ["p0-after"])  # offset 4
    for partition in (1, 2, 3):
        await produce(bootstrap, topic, partition, [f"p{partition}-a", f"p{partition}-b"])

    flowing = {"p0-before"} | {f"p{p}-{s}" for p in (1, 2, 3) for s in "ab"}
    await pipeline.wait_for(lambda out: flowing <= devices(pipeline), timeout=45,
                            what="profiles of every readable partition")  # fmt: skip

    log = tmp_path / "worker-0.log"
    await eventually(
        lambda: f"unreadable record batch in {topic} partition 0 at offset 1 "
        "(offsets 1..3, codec zstd)" in log.read_text(errors="replace"),
        timeout=20, what="the log line naming topic, partition and offset",
    )  # fmt: skip
    text = log.read_text(errors="replace")
    assert "UnsupportedCodecError" in text
    assert f"--topic {topic}:0 --reset-offsets --to-offset 4 --execute" in text
    labels = f'partition="0",topic="{topic}"'
    await eventually(
        lambda: f"idp_unreadable_batches_total{{{labels}}} 1.0" in metrics_text(port),
        timeout=20, what="the unreadable batch counted on /metrics",
    )  # fmt: skip
    assert f"idp_partition_held_at_offset{{{labels}}} 1.0" in metrics_text(port)
    assert worker.poll() is None, pipeline.worker_log()
    # Held, not skipped: nothing of the batch, nor after it in partition 0, was processed.
    assert not devices(pipeline) & {"p0-zstd-1", "p0-zstd-2", "p0-zstd-3", "p0-after"}

    # The operator skips it as the log says: every worker stopped, the group moved past it.
    pipeline.stop_workers()
    command = re.search(r"To skip the batch, stop every worker of the group and run: (.*)", text)
    assert command is not None
    argv = command.group(1).split()
    assert argv[:3] == ["idp", "stack", "kafka-tool"]
    reset = await asyncio.to_thread(
        subprocess.run, [sys.executable, "-m", "pipeline.cli", *argv[1:]], cwd=PROJECT_ROOT,
        capture_output=True, text=True, timeout=45, check=False,
    )  # fmt: skip
    assert reset.returncode == 0, reset.stdout + reset.stderr
    assert re.search(rf"{re.escape(topic)}\s+0\s+4", reset.stdout), reset.stdout
    pipeline.start_worker({"PYTHONPATH": str(hidden)})
    await pipeline.wait_for(lambda out: "p0-after" in devices(pipeline), timeout=45,
                            what="partition 0 flowing again past the skipped batch")  # fmt: skip
    assert not devices(pipeline) & {"p0-zstd-1", "p0-zstd-2", "p0-zstd-3"}
