"""Kafka is the system of record: a lost Redis loses no identity (SPEC §3, docs/durability.md).

Each test runs a worker against a Redis server of its own (started here from the project's
`redis-server`, on a port and in a folder of its own, so that losing it touches nothing else),
loses that Redis's state mid-stream, and ends with the final profiles of the in-memory oracle,
every merge and shutdown announced (duplicates counted): FLUSHALL, under one worker and under
two; SIGKILL with persistence off and a restart empty; the data folder deleted while stopped. `idp restore` rebuilds a
namespace from the changelog alone, refuses a non-empty one, and is idempotent.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from pipeline.ops import stack
from pipeline.ops.admin import ensure_topics, remove_run
from pipeline.ops.topics import topic_specs
from pipeline.state.base import Keys
from schemas.topics import INPUT_TOPICS
from tests.integration.conftest import KEEP
from tests.integration.test_faults import SLOW, scenario, settle
from tests.support.kafka import PROJECT_ROOT, Pipeline


@dataclass
class OwnRedis:
    """A redis-server of one test: its port, folder and whether it persists (AOF)."""

    port: int
    home: Path
    persist: bool
    process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.home.mkdir(parents=True, exist_ok=True)
        argv = [stack.install_redis(), "--port", str(self.port), "--bind", "127.0.0.1",
                "--dir", str(self.home), "--save", "",
                "--appendonly", "yes" if self.persist else "no"]  # fmt: skip
        self.process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        stack.wait_until(lambda: stack.port_open(stack.Endpoint("127.0.0.1", self.port)),
                         timeout=30, what=f"redis on {self.port}")  # fmt: skip

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(sig)
            self.process.wait(timeout=30)
        self.process = None


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture
def own_redis(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[OwnRedis]:
    server = OwnRedis(free_port(), tmp_path / "redis", persist=getattr(request, "param", True))
    server.start()
    yield server
    server.stop(signal.SIGKILL)


@pytest.fixture
async def durable(
    servers: tuple[str, str], own_redis: OwnRedis, secrets_file: Path, tmp_path: Path
) -> AsyncIterator[Pipeline]:
    """A fresh pipeline whose state lives in `own_redis`."""
    bootstrap = servers[0]
    run = uuid.uuid4().hex[:10]
    prefix = f"d{run}."
    await ensure_topics(bootstrap, topic_specs(prefix, 4, retention_ms=KEEP))
    pipe = Pipeline(bootstrap=bootstrap, redis_url=own_redis.url, prefix=prefix,
                    app_id=f"idp-{run}", namespace=f"d{run}", secrets_file=secrets_file,
                    log_dir=tmp_path)  # fmt: skip
    await pipe.start()
    yield pipe
    await pipe.close()
    await remove_run(bootstrap, own_redis.url, prefix, f"d{run}")


async def half_then_progress(pipe: Pipeline, messages: list, profiles: dict) -> None:
    await pipe.send_many(messages[: len(messages) // 2])
    await pipe.wait_for(lambda out: len(out.latest_profiles()) >= len(profiles) // 4,
                        timeout=90, what="some progress")  # fmt: skip


def stop(worker: subprocess.Popen) -> None:
    worker.send_signal(signal.SIGTERM)
    worker.wait(timeout=60)


async def flush_all(url: str) -> None:
    client = aioredis.Redis.from_url(url)
    try:
        await client.flushall()
    finally:
        await client.aclose()


async def keys_of(url: str, namespace: str) -> list[bytes]:
    client = aioredis.Redis.from_url(url)
    try:
        return [k async for k in client.scan_iter(match=Keys(namespace).everything(), count=1000)]
    finally:
        await client.aclose()


async def test_redis_flushed_mid_stream_loses_no_identity(
    durable: Pipeline, own_redis: OwnRedis
) -> None:
    messages, profiles, merges, logouts = scenario(seed=700)
    durable.start_worker(SLOW)
    await half_then_progress(durable, messages, profiles)
    await flush_all(own_redis.url)
    await durable.send_many(messages[len(messages) // 2 :])
    await settle(durable, profiles, merges, logouts, "Redis flushed mid-stream")
    assert "catching up with the state changelog" in durable.worker_log(0)


@pytest.mark.parametrize("own_redis", [False], indirect=True, ids=["persistence off"])
async def test_redis_killed_without_persistence_restarts_empty(
    durable: Pipeline, own_redis: OwnRedis
) -> None:
    messages, profiles, merges, logouts = scenario(seed=701)
    durable.start_worker(SLOW)
    await half_then_progress(durable, messages, profiles)
    own_redis.stop(signal.SIGKILL)
    await durable.send_many(messages[len(messages) // 2 :])  # the worker waits for Redis
    own_redis.start()  # empty: nothing was persisted
    await settle(durable, profiles, merges, logouts, "Redis killed, persistence off")


async def test_redis_data_folder_deleted_while_stopped(
    durable: Pipeline, own_redis: OwnRedis
) -> None:
    messages, profiles, merges, logouts = scenario(seed=702)
    worker = durable.start_worker(SLOW)
    await half_then_progress(durable, messages, profiles)
    stop(worker)
    own_redis.stop()
    shutil.rmtree(own_redis.home)
    own_redis.start()
    durable.start_worker(SLOW)  # a new worker finds Redis empty and the changelog not
    await durable.send_many(messages[len(messages) // 2 :])
    await settle(durable, profiles, merges, logouts, "Redis data folder deleted")
    assert "behind the state changelog" in durable.worker_log(1)


def idp_restore(pipe: Pipeline, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "pipeline.cli", "restore", *args], cwd=PROJECT_ROOT,
        env={**os.environ, **pipe.env}, capture_output=True, text=True, timeout=120,
    )  # fmt: skip


async def test_idp_restore_rebuilds_a_namespace_from_the_changelog_alone(
    durable: Pipeline, own_redis: OwnRedis
) -> None:
    messages, profiles, merges, logouts = scenario(seed=703)
    worker = durable.start_worker(SLOW)
    await durable.send_many(messages)
    await settle(durable, profiles, merges, logouts, "before a restore")
    stop(worker)
    live = durable.env["IDP_STATE_NAMESPACE"]
    copy = f"{live}-restored"
    done = idp_restore(durable, "--from-empty", "--namespace", copy)
    assert done.returncode == 0, done.stderr
    assert "keys written or deleted" in done.stdout
    client = aioredis.Redis.from_url(own_redis.url)
    try:

        async def records(namespace: str) -> dict[bytes, dict]:
            found = {}
            for key in await keys_of(own_redis.url, namespace):
                relative = key[len(namespace) + 1 :]
                if relative.startswith((b"outbox:", b"changelog:")):
                    continue
                found[relative] = await client.hgetall(key)
            return found

        original, restored = await records(live), await records(copy)
        assert original and restored == original  # every record, in its version
        # Idempotent; and it refuses a namespace that holds keys unless told.
        again = idp_restore(durable, "--namespace", copy)
        assert again.returncode == 0 and "nothing to restore" in again.stdout, again.stdout
        refused = idp_restore(durable, "--from-empty", "--namespace", copy)
        assert refused.returncode == 2 and "holds" in refused.stderr
        forced = idp_restore(durable, "--force", "--namespace", copy)
        assert forced.returncode == 0 and " 0 keys written" in forced.stdout, forced.stdout
    finally:
        for key in await keys_of(own_redis.url, copy):
            await client.delete(key)
        await client.aclose()


async def test_a_worker_without_auto_restore_refuses_until_idp_restore(
    durable: Pipeline, own_redis: OwnRedis
) -> None:
    messages, profiles, merges, logouts = scenario(seed=704)
    worker = durable.start_worker(SLOW)
    await half_then_progress(durable, messages, profiles)
    stop(worker)
    await flush_all(own_redis.url)
    durable.start_worker({**SLOW, "IDP_AUTO_RESTORE": "false"})
    await durable.send_many(messages[len(messages) // 2 :])
    for _ in range(600):  # the refusal is logged once the worker has compared
        if "IDP_AUTO_RESTORE is off: run idp restore" in durable.worker_log(1):
            break
        await asyncio.sleep(0.1)
    else:
        raise AssertionError(
            "the worker never said why it does not process\n" + durable.worker_log(1)
        )
    assert not await keys_of(own_redis.url, durable.env["IDP_STATE_NAMESPACE"])  # decided nothing
    done = idp_restore(durable)
    assert done.returncode == 0, done.stderr
    await settle(durable, profiles, merges, logouts, "refused, then idp restore")


def assigned(pipe: Pipeline, index: int) -> int:
    """How many input partitions the worker's latest assignment holds (0: none yet)."""
    lines = [line for line in pipe.worker_log(index).splitlines() if "input partitions" in line]
    return int(lines[-1].split("assigned ")[1].split(" ")[0]) if lines else 0


async def both_assigned(pipe: Pipeline) -> None:
    """Await two workers each holding some, not all, of the input partitions."""
    everything = 4 * len(INPUT_TOPICS)  # the `durable` fixture's topics have 4 partitions
    await pipe.wait_for(lambda _: all(0 < assigned(pipe, i) < everything for i in (0, 1)),
                        timeout=60, what="the two workers sharing the partitions")  # fmt: skip


# Both workers find the loss and catch up, one while the other commits, or one finds the epoch
# written again by the other: either way a batch of each committed before the loss and
# delivered after a catch-up read the changelog's ends applies its own records again.
async def test_redis_flushed_under_two_workers_loses_no_identity(
    durable: Pipeline, own_redis: OwnRedis
) -> None:
    messages, profiles, merges, logouts = scenario(seed=705)
    durable.start_worker(SLOW)
    durable.start_worker(SLOW)
    await both_assigned(durable)
    await half_then_progress(durable, messages, profiles)
    await flush_all(own_redis.url)
    await durable.send_many(messages[len(messages) // 2 :])
    await settle(durable, profiles, merges, logouts, "Redis flushed under two workers")
    # Each caught Redis up, or found it caught up by the other (its batches in flight then
    # applied their own records again).
    for index in (0, 1):
        log = durable.worker_log(index)
        assert "catching up with the state changelog" in log or "by another worker" in log, log
