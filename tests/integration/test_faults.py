"""Faults through the real broker and Redis: the same identities come out (issue: faults).

The oracle is the pure core applied in memory to the same input: after each fault the final
published profiles must equal its final profiles, every merge they imply must have been
announced on identity.merged, and every logout must have produced a shutdown. Duplicates
(the same output event_id more than once) are allowed (at-least-once) and reported.
"""

from __future__ import annotations

import asyncio
import os
import signal
from collections import Counter

import orjson
import pytest

from pipeline.core.oracle import Oracle
from pipeline.core.rules import CoreConfig
from pipeline.ops import stack
from pipeline.tools import journey
from tests.integration.conftest import KEEP, SECRETS
from tests.support import events as ev
from tests.support.kafka import OutputLog, Pipeline

WS = "ws-a"
PEOPLE = 300
SLOW = {"IDP_BATCH_SIZE": "40", "IDP_COMMIT_INTERVAL_S": "0.5", "IDP_SESSION_TIMEOUT_S": "6"}


def scenario(
    seed: int, *, secrets: dict[str, str] | None = None, people: int = PEOPLE
) -> tuple[list[tuple[str, bytes, bytes]], dict, set, set]:
    """Input messages, and what a fault-free run gives: profiles, merge and shutdown event_ids.

    The journey spans `secrets`' workspaces (by default WS alone).
    """
    secrets = secrets or {WS: SECRETS[WS]}
    records = journey.generate(secrets, people=people, seed=seed, junk_ratio=0)
    oracle = Oracle(CoreConfig(secrets={ws: (s.encode(),) for ws, s in secrets.items()}))
    for record in records:
        oracle.apply(ev.model_of(record.topic, record.value))
    profiles = {
        cid: orjson.loads(orjson.dumps(p.model_dump(mode="json")))
        for cid, p in oracle.profiles().items()
    }
    final = {(cid, p["merged_into"]) for cid, p in profiles.items() if p["merged_into"]}
    # The event_ids a fault-free run announces for the final state: every merge the final
    # profiles imply, and every shutdown. They are deterministic, so a faulty run must have them.
    merges = {e.value.event_id for e in oracle.emitted if e.topic == "identity.merged"
              and (e.value.from_contact_id, e.value.into_contact_id) in final}  # fmt: skip
    shutdowns = {e.value.event_id for e in oracle.emitted if e.topic == "identity.shutdown"}
    assert len(merges) == len(final) and shutdowns  # one announcement per merge; some logouts
    messages = [(r.topic, orjson.dumps(r.value), r.key.encode()) for r in records]
    return messages, profiles, merges, shutdowns


def report(name: str, out: OutputLog) -> None:
    ids = Counter(
        r.value["event_id"] for r in out.records if r.value and r.topic != "identity.profiles"
    )
    duplicates = sum(n - 1 for n in ids.values() if n > 1)
    print(f"\n{name}: {len(out.records)} output records, {duplicates} duplicated event_ids")


async def settle(pipeline: Pipeline, profiles: dict, merges: set, logouts: set, name: str) -> None:
    def announced(topic: str) -> set[str]:
        return {m["event_id"] for m in pipeline.outputs.values(topic)}

    # Everything a fault-free run publishes, eventually: outputs of a commit whose reply was lost
    # are re-sent from its outbox record after a back-off, possibly after later batches have
    # already published the final profiles.
    def complete(out: OutputLog) -> bool:
        return (out.latest_profiles() == profiles and merges <= announced("identity.merged")
                and logouts <= announced("identity.shutdown"))  # fmt: skip

    try:
        await pipeline.wait_for(
            complete,
            timeout=180,
            what="the final profiles, merges and shutdowns of a fault-free run",
        )
    except AssertionError:
        got = pipeline.outputs.latest_profiles()
        differing = {
            c: (got.get(c), profiles.get(c))
            for c in set(got) | set(profiles)
            if got.get(c) != profiles.get(c)
        }
        logs = "\n".join(pipeline.worker_log(i)[-3000:] for i in range(len(pipeline.workers)))
        missing = (merges - announced("identity.merged")) | (
            logouts - announced("identity.shutdown")
        )
        raise AssertionError(
            f"{len(differing)} contacts differ, e.g. {list(differing.items())[:3]}; "
            f"merges and shutdowns never announced: {sorted(missing)[:5]}\n{logs}"
        ) from None
    report(name, pipeline.outputs)


async def until(condition, *, timeout: float, what: str) -> None:
    for _ in range(int(timeout * 20)):
        if condition():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.mark.parametrize("run", [1, 2])
async def test_worker_dies_between_commit_and_delivery(pipeline: Pipeline, run: int) -> None:
    messages, profiles, merges, logouts = scenario(seed=100 + run)
    crashing = pipeline.start_worker({**SLOW, "IDP_FAULT_EXIT_AFTER_COMMITS": str(2 + run)})
    pipeline.expected_exits.add(crashing.pid)
    await pipeline.send_many(messages)
    await until(lambda: crashing.poll() is not None, timeout=60, what="the injected exit")
    assert crashing.returncode == 86  # it died with committed state and undelivered outputs
    pipeline.start_worker(SLOW)
    await settle(pipeline, profiles, merges, logouts, f"exit after commit, run {run}")


@pytest.mark.parametrize("run", [1, 2])
async def test_sigkill_mid_stream_and_restart(pipeline: Pipeline, run: int) -> None:
    messages, profiles, merges, logouts = scenario(seed=200 + run)
    victim = pipeline.start_worker(SLOW)
    await pipeline.send_many(messages)
    await pipeline.wait_for(lambda out: len(out.latest_profiles()) >= len(profiles) // (2 + run),
                            timeout=60, what="some progress")  # fmt: skip
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    pipeline.start_worker(SLOW)
    await settle(pipeline, profiles, merges, logouts, f"SIGKILL, run {run}")


@pytest.mark.parametrize("run", [1, 2])
async def test_two_workers_one_killed(pipeline: Pipeline, run: int) -> None:
    messages, profiles, merges, logouts = scenario(seed=300 + run)
    survivor = pipeline.start_worker(SLOW)
    victim = pipeline.start_worker(SLOW)
    await pipeline.send_many(messages)
    await pipeline.wait_for(lambda out: len(out.latest_profiles()) >= len(profiles) // 3,
                            timeout=60, what="some progress")  # fmt: skip
    victim.send_signal(signal.SIGKILL)
    await settle(pipeline, profiles, merges, logouts, f"two workers, one killed, run {run}")
    assert survivor.poll() is None


@pytest.mark.parametrize("run", [1, 2])
async def test_redis_restarted_mid_stream(
    pipeline: Pipeline, servers: tuple[str, str], run: int
) -> None:
    if "REDIS_URL" in os.environ:
        pytest.fail("this test restarts the project's own Redis; unset REDIS_URL to run it")
    messages, profiles, merges, logouts = scenario(seed=400 + run)
    worker = pipeline.start_worker(SLOW)
    half = len(messages) // 2
    await pipeline.send_many(messages[:half])
    await pipeline.wait_for(
        lambda out: len(out.latest_profiles()) >= 10, timeout=60, what="some progress"
    )
    assert stack.stop_redis()  # SIGTERM: Redis writes its AOF and exits
    await pipeline.send_many(messages[half:])  # the worker stops consuming while Redis is gone
    stack.start_redis(servers[1])
    await settle(pipeline, profiles, merges, logouts, f"Redis restarted, run {run}")
    assert worker.poll() is None


@pytest.mark.parametrize("run", [1, 2])
async def test_broker_restarted_mid_stream(
    servers: tuple[str, str], secrets_file, tmp_path, monkeypatch: pytest.MonkeyPatch, run: int
) -> None:
    """On a broker of its own (the shared one holds thousands of partitions and restarts slowly)."""
    import uuid

    from pipeline.ops.admin import ensure_topics
    from pipeline.ops.topics import topic_specs

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / f"kafka-{stack.KAFKA_VERSION}").symlink_to(stack.kafka_lib().parent)  # the jars
    monkeypatch.setenv("IDP_RUN_DIR", str(run_dir))
    bootstrap = "127.0.0.1:19092"
    await asyncio.to_thread(stack.start_kafka, bootstrap)
    tag = uuid.uuid4().hex[:10]
    pipe = Pipeline(bootstrap=bootstrap, redis_url=servers[1], prefix=f"t{tag}.", app_id=f"idp-{tag}",
                    namespace=f"t{tag}", secrets_file=secrets_file, log_dir=tmp_path)  # fmt: skip
    try:
        await ensure_topics(bootstrap, topic_specs(pipe.prefix, 4, retention_ms=KEEP))
        await pipe.start()
        messages, profiles, merges, logouts = scenario(seed=500 + run)
        worker = pipe.start_worker(SLOW)
        half = len(messages) // 2
        await pipe.send_many(messages[:half])
        await pipe.wait_for(
            lambda out: len(out.latest_profiles()) >= 10, timeout=60, what="some progress"
        )
        assert await asyncio.to_thread(stack.stop_kafka, bootstrap)  # data stays on disk
        await asyncio.to_thread(stack.start_kafka, bootstrap)
        await pipe.send_many(messages[half:])
        await settle(pipe, profiles, merges, logouts, f"broker restarted, run {run}")
        assert worker.poll() is None
    finally:
        await pipe.close()
        await asyncio.to_thread(stack.stop_kafka, bootstrap)
