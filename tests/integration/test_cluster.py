"""On a real Redis Cluster (three masters, a replica each) and three KRaft brokers (issue 19).

The cluster is started once for the module by the project's own stack, on ports of its own and
under a temporary folder, and stopped at the end; if it cannot start, every test fails. The
journeys run end to end with several workers, and through a master killed (its replica takes
over), a broker killed and restarted, and a worker killed: the final profiles must equal the
in-memory oracle's and every merge and shutdown must be announced (duplicates are counted).
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import orjson
import pytest
from aiokafka.admin import AIOKafkaAdminClient
from redis.asyncio.cluster import RedisCluster

from pipeline.ops import stack
from pipeline.ops.admin import (
    ensure_topics,
    remove_keys,
    remove_run,
    topics_led_everywhere,
)
from pipeline.ops.topics import TopicSpec, topic_specs
from pipeline.state.base import Commit, Keys, Record, Store
from pipeline.state.cluster_store import ClusterRedisStore
from pipeline.state.factory import open_store
from schemas.topics import INPUT_TOPICS, OUTPUT_TOPICS
from tests.integration.conftest import KEEP
from tests.integration.test_faults import report
from tests.integration.test_faults import scenario as fault_free
from tests.support.kafka import PROJECT_ROOT, OutputLog, Pipeline, read_topics, unconsumed

pytestmark = pytest.mark.integration

KAFKA_PORT, REDIS_PORT = 39092, 17000  # apart from `idp stack up`'s cluster (29092, 7000)
MASTERS, BROKERS = 3, 3
# Workspaces whose slots fall on every master (found once, below), each with its secret.
WORKSPACES = 6
PEOPLE = 240
SLOW = {"IDP_BATCH_SIZE": "40", "IDP_COMMIT_INTERVAL_S": "0.5", "IDP_SESSION_TIMEOUT_S": "6"}


@dataclass(frozen=True)
class Cluster:
    bootstrap: str
    redis_url: str
    redis_ports: list[int]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """Three Redis masters with a replica each and three brokers, for the whole module.

    Four JVMs and six Redis servers starting on two loaded cores can miss a deadline: a start
    that fails is stopped and made once more in a fresh folder before the module fails.
    """
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(stack, "CLUSTER_KAFKA_PORT", KAFKA_PORT)
        patch.setattr(stack, "CLUSTER_REDIS_PORT", REDIS_PORT)
        for attempt in (1, 2):
            home = tmp_path_factory.mktemp("cluster")
            patch.setattr(stack, "cluster_dir", lambda home=home: home)
            try:
                stack.start_redis_cluster(MASTERS)
                stack.start_kafka_cluster(BROKERS, timeout=180)
                break
            except stack.StackError as exc:
                stack.stop_cluster()
                if attempt == 2:
                    pytest.fail(f"the cluster did not start: {exc}", pytrace=False)
                print(f"the cluster did not start, trying once more: {exc}")
        try:
            yield Cluster(
                stack.cluster_bootstrap(BROKERS),
                stack.cluster_redis_url(),
                [REDIS_PORT + i for i in range(2 * MASTERS)],
            )
        finally:
            stack.stop_cluster()


@pytest.fixture
async def store(cluster: Cluster) -> AsyncIterator[Store]:
    """The store the worker opens on the cluster (the contract tests above run on it)."""
    opened = open_store(cluster.redis_url, marker_ttl_s=3600, wait_replicas=1)
    assert isinstance(opened, ClusterRedisStore)
    yield opened
    await opened.close()


@pytest.fixture
def key() -> str:
    return f"contract:{{ws-{uuid.uuid4().hex}}}:dev:"


async def masters_of(cluster: Cluster, workspaces: list[str]) -> dict[str, int]:
    """Workspace -> port of the master serving its slot (CLUSTER KEYSLOT, CLUSTER SLOTS)."""
    live = next(p for p in cluster.redis_ports if stack.port_open(stack.Endpoint("127.0.0.1", p)))
    client = RedisCluster(host="127.0.0.1", port=live)  # any node that is up
    try:
        await client.initialize()
        found = {}
        for ws in workspaces:
            slot = await client.cluster_keyslot(Keys("idp").of(ws, "dev", "x"))
            found[ws] = int(client.nodes_manager.get_node_from_slot(slot).port)
        return found
    finally:
        await client.aclose()


def spread_workspaces() -> dict[str, str]:
    """WORKSPACES workspace ids whose slots cover all three masters' ranges (0-16383 in thirds)."""
    from redis.crc import key_slot

    chosen: dict[int, list[str]] = {0: [], 1: [], 2: []}
    index = 0
    while min(len(v) for v in chosen.values()) < WORKSPACES // 3:
        ws = f"ws-{index}"
        third = key_slot(ws.encode()) * 3 // 16384
        if len(chosen[third]) < WORKSPACES // 3:
            chosen[third].append(ws)
        index += 1
    return {ws: f"secret-{ws}-0123456789abcdef0123456789" for v in chosen.values() for ws in v}


SECRETS = spread_workspaces()


def scenario(seed: int) -> tuple[list[tuple[str, bytes, bytes]], dict, set, set]:
    """Messages (each stamped with its event's time when sent), and the oracle's outcome."""
    return fault_free(seed, secrets=SECRETS, people=PEOPLE)


@pytest.fixture
async def pipeline(cluster: Cluster, tmp_path: Path) -> AsyncIterator[Pipeline]:
    """A fresh pipeline on the cluster: topics replicated three times, its own namespace."""
    run = uuid.uuid4().hex[:10]
    prefix = f"c{run}."
    secrets_file = tmp_path / "secrets.json"
    secrets_file.write_bytes(orjson.dumps(SECRETS))
    specs = topic_specs(prefix, 4, retention_ms=KEEP)
    named = {spec.name for spec in specs}
    specs += [TopicSpec(prefix + name, 4, {}) for name in (*INPUT_TOPICS, *OUTPUT_TOPICS)
              if prefix + name not in named]  # fmt: skip
    await ensure_topics(cluster.bootstrap, specs)  # the replication factor the cluster calls for
    await topics_led_everywhere(cluster.bootstrap, [spec.name for spec in specs])
    assert await replicas(cluster.bootstrap, [spec.name for spec in specs]) == {BROKERS}
    pipe = Pipeline(bootstrap=cluster.bootstrap, redis_url=cluster.redis_url, prefix=prefix,
                    app_id=f"idp-{run}", namespace=f"c{run}", secrets_file=secrets_file,
                    log_dir=tmp_path)  # fmt: skip
    await pipe.start(timeout=120)
    yield pipe
    await pipe.close()
    await remove_keys(cluster.redis_url, f"c{run}")


async def replicas(bootstrap: str, topics: list[str]) -> set[int]:
    """The numbers of replicas the partitions of `topics` have."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        described = await admin.describe_topics(topics)
        return {len(p["replicas"]) for topic in described for p in topic["partitions"]}
    finally:
        await admin.close()


async def settle(pipe: Pipeline, profiles: dict, merges: set, logouts: set, name: str) -> None:
    def announced(topic: str) -> set[str]:
        return {m["event_id"] for m in pipe.outputs.values(topic)}

    def complete(out: OutputLog) -> bool:
        return (out.latest_profiles() == profiles and merges <= announced("identity.merged")
                and logouts <= announced("identity.shutdown"))  # fmt: skip

    try:
        await pipe.wait_for(complete, timeout=90, what="the oracle's profiles, merges, shutdowns")
    except AssertionError:
        # What the topics hold, read afresh: tells a reader that missed records from a worker
        # that never sent them.
        fresh = await read_topics(pipe.bootstrap, [pipe.prefix + t for t in OUTPUT_TOPICS],
                                  pipe.prefix)  # fmt: skip
        print(f"\n{name}: the topics read afresh hold the oracle's outcome: {complete(fresh)}")
        got = pipe.outputs.latest_profiles()
        differing = [c for c in set(got) | set(profiles) if got.get(c) != profiles.get(c)]
        missing = (merges - announced("identity.merged")) | (
            logouts - announced("identity.shutdown")
        )
        behind = await unconsumed(pipe.bootstrap, pipe.app_id,
                                  [pipe.prefix + t for t in INPUT_TOPICS])  # fmt: skip
        logs = "\n".join(pipe.worker_log(i)[-2500:] for i in range(len(pipe.workers)))
        raise AssertionError(f"{len(differing)} contacts differ; never announced: "
                             f"{sorted(missing)[:5]}; input partitions not consumed to their "
                             f"end (committed/end): {behind}\n{logs}") from None  # fmt: skip
    report(name, pipe.outputs)


async def wait(condition, *, timeout: float, what: str) -> None:
    """Poll a blocking condition (a probe of the cluster) off the event loop."""
    try:
        await asyncio.to_thread(stack.wait_until, condition, timeout=timeout, what=what)
    except stack.StackError as exc:
        raise AssertionError(str(exc)) from None


# --------------------------------------------------------------------------- the store


async def test_every_key_of_a_workspace_lands_in_one_slot(cluster: Cluster) -> None:
    keys = Keys("idp-staging.")
    client = RedisCluster.from_url(cluster.redis_url)
    try:
        for ws in ["acme", "ws:with:colons", "{braces}", "tag}inside{", "%7B"]:
            names = [keys.of(ws, kind, "a:b{c}") for kind in ("dev", "user", "email", "contact",
                                                               "evt", "jti")]  # fmt: skip
            names.append(keys.outbox(ws, uuid.uuid4().hex))
            slots = {await client.cluster_keyslot(name) for name in names}
            assert len(slots) == 1, (ws, slots)
    finally:
        await client.aclose()


async def test_reads_commits_and_scans_span_every_master(cluster: Cluster, store: Store) -> None:
    keys = Keys(f"s{uuid.uuid4().hex[:8]}")
    masters = await masters_of(cluster, list(SECRETS))
    assert len(set(masters.values())) == MASTERS  # the workspaces do cover every master
    names = [keys.of(ws, "contact", "c1") for ws in SECRETS]
    outboxes = [keys.outbox(ws, "b1") for ws in SECRETS]
    commits = [Commit(checks={n: 0, o: 0}, writes={n: b"p", o: b"o"})
               for n, o in zip(names, outboxes, strict=True)]  # fmt: skip
    assert await store.commit(commits) == [True] * len(commits)
    assert await store.commit(commits[:1]) == [False]  # the compare-and-set holds per workspace
    assert await store.scan(keys.outbox_pattern()) == sorted(outboxes)  # found on every master
    assert await store.read(names, discard=outboxes[:2]) == [Record(1, b"p")] * len(names)
    assert await store.scan(keys.outbox_pattern()) == sorted(outboxes[2:])
    await store.delete(outboxes[2:])
    assert await store.scan(keys.everything()) == sorted(names)
    assert isinstance(store, ClusterRedisStore) and store.under_replicated == 0  # WAIT held
    await remove_keys(cluster.redis_url, keys.namespace)
    assert await store.scan(keys.everything()) == []


async def test_the_topics_are_replicated_three_times(cluster: Cluster) -> None:
    from aiokafka.admin import AIOKafkaAdminClient
    from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

    prefix = f"r{uuid.uuid4().hex[:8]}."
    await ensure_topics(cluster.bootstrap, topic_specs(prefix, 2))
    admin = AIOKafkaAdminClient(bootstrap_servers=cluster.bootstrap)
    await admin.start()
    try:
        name = prefix + "telemetry.login"
        resource = ConfigResource(ConfigResourceType.TOPIC, name)
        for _ in range(100):  # every broker learns of a new topic within moments
            partitions = (await admin.describe_topics([name]))[0]["partitions"]
            configs = await admin.describe_configs([resource])
            entries = {e[0]: e[1] for e in configs[0].resources[0][4]}
            if partitions and entries:
                break
            await asyncio.sleep(0.1)
        assert {len(p["replicas"]) for p in partitions} == {3}
        assert entries["min.insync.replicas"] == "2"
        await admin.delete_topics([spec.name for spec in topic_specs(prefix, 2)])
    finally:
        await admin.close()


# --------------------------------------------------------------------------- end to end


async def test_journeys_with_three_workers(pipeline: Pipeline) -> None:
    messages, profiles, merges, logouts = scenario(seed=11)
    for _ in range(3):
        pipeline.start_worker(SLOW)
    await pipeline.send_many(messages)
    await settle(pipeline, profiles, merges, logouts, "cluster, three workers")


# Redis replicates asynchronously, and a master killed mid-stream can take commits its replica
# never received (the worker logs "reached 0 of 1 replicas within the WAIT timeout"). The
# workers see the slots move to other masters and apply the whole state changelog before they
# decide again (`GuardedStore`, `Store.topology`): the final profiles equal the oracle's. A
# batch that fails there after some of its workspaces committed sends their outputs from
# their outbox records at once (`Processor.unsent`), not at the sweep minutes later.
async def test_a_redis_master_killed_mid_stream(cluster: Cluster, pipeline: Pipeline) -> None:
    messages, profiles, merges, logouts = scenario(seed=12)
    victim = (await masters_of(cluster, list(SECRETS)))[sorted(SECRETS)[0]]
    replicas = [port for port in cluster.redis_ports if port != victim]
    pipeline.start_worker(SLOW)
    pipeline.start_worker(SLOW)
    half = len(messages) // 2
    await pipeline.send_many(messages[:half])
    await pipeline.wait_for(lambda out: len(out.latest_profiles()) >= 20, timeout=60,
                            what="some progress")  # fmt: skip
    assert stack.stop_cluster_redis(victim, kill=True)
    await pipeline.send_many(messages[half:])
    try:
        await settle(pipeline, profiles, merges, logouts, "cluster, a Redis master killed")
        logs = [pipeline.worker_log(i) for i in range(len(pipeline.workers))]
        assert any("slots moved to other masters" in log for log in logs), logs[0][-2000:]
        # Its replica took over: the surviving five see a whole cluster of three masters.
        promoted = await masters_of(cluster, list(SECRETS))
        assert victim not in promoted.values() and len(set(promoted.values())) == MASTERS
    finally:  # back as a replica of its successor, for the tests that follow
        await asyncio.to_thread(stack.start_cluster_redis, victim)
        await wait(lambda: stack.redis_cluster_healthy(cluster.redis_ports, masters=MASTERS),
                   timeout=60, what="the old master back as a replica")  # fmt: skip
    assert all(stack.port_open(stack.Endpoint("127.0.0.1", p)) for p in replicas)


async def test_a_broker_killed_mid_stream_and_restarted(pipeline: Pipeline) -> None:
    messages, profiles, merges, logouts = scenario(seed=13)
    pipeline.start_worker(SLOW)
    pipeline.start_worker(SLOW)
    half = len(messages) // 2
    await pipeline.send_many(messages[:half])
    await pipeline.wait_for(lambda out: len(out.latest_profiles()) >= 20, timeout=60,
                            what="some progress")  # fmt: skip
    assert stack.stop_cluster_broker(1, kill=True)
    await pipeline.send_many(messages[half:])  # two of three brokers: min.insync.replicas holds
    await asyncio.to_thread(stack.start_cluster_broker, 1, BROKERS)
    await asyncio.to_thread(stack.wait_cluster_broker, 1)
    await settle(pipeline, profiles, merges, logouts, "cluster, a broker killed and restarted")
    print(f"records the broker's failure refused and the test sent again: {pipeline.resent}")


async def test_a_worker_killed_mid_stream(pipeline: Pipeline) -> None:
    messages, profiles, merges, logouts = scenario(seed=14)
    survivors = [pipeline.start_worker(SLOW), pipeline.start_worker(SLOW)]
    victim = pipeline.start_worker(SLOW)
    await pipeline.send_many(messages)
    await pipeline.wait_for(lambda out: len(out.latest_profiles()) >= len(profiles) // 3,
                            timeout=60, what="some progress")  # fmt: skip
    victim.send_signal(signal.SIGKILL)
    await settle(pipeline, profiles, merges, logouts, "cluster, a worker killed")
    assert all(worker.poll() is None for worker in survivors)


def idp(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pipeline.cli", *args], cwd=PROJECT_ROOT,
                          env={**os.environ, **env}, capture_output=True, text=True,
                          timeout=240)  # fmt: skip


async def state_of(store: Store, namespace: str) -> dict[str, Record]:
    """Every record of the namespace on every master, the outbox and the markers aside."""
    keys = [k for k in await store.scan(f"{namespace}:*")
            if not k.startswith((f"{namespace}:outbox:", f"{namespace}:changelog:"))]  # fmt: skip
    return dict(zip(keys, await store.read(keys), strict=True))


async def test_inspect_restore_and_replay_run_on_the_cluster(
    cluster: Cluster, pipeline: Pipeline, store: Store, tmp_path: Path
) -> None:
    messages, profiles, merges, logouts = scenario(seed=15)
    worker = pipeline.start_worker(SLOW)
    await pipeline.send_many(messages)
    await settle(pipeline, profiles, merges, logouts, "cluster, before inspect, restore, replay")
    worker.send_signal(signal.SIGTERM)
    worker.wait(timeout=60)
    user = next(p for p in profiles.values() if p["type"] == "user")
    shown = await asyncio.to_thread(idp, pipeline.env, "inspect", user["workspace_id"],
                                    user["user_id"])  # fmt: skip
    assert shown.returncode == 0, shown.stdout + shown.stderr
    assert user["contact_id"] in shown.stdout
    # The state changelog alone rebuilds the namespace, every record in its version.
    copy, name = f"{pipeline.namespace}-restored", uuid.uuid4().hex[:8]
    try:
        done = await asyncio.to_thread(idp, pipeline.env, "restore", "--from-empty",
                                       "--namespace", copy)  # fmt: skip
        assert done.returncode == 0, done.stdout + done.stderr
        live = await state_of(store, pipeline.namespace)
        restored = await state_of(store, copy)
        assert live and {k.removeprefix(copy): r for k, r in restored.items()} == {
            k.removeprefix(pipeline.namespace): r for k, r in live.items()
        }
        # A replay from the beginning, into its own namespace and topics, reaches the same.
        replayed = await asyncio.to_thread(idp, {**pipeline.env, "IDP_RUN_DIR": str(tmp_path)},
                                           "replay", name, "--timeout", "180")  # fmt: skip
        assert replayed.returncode == 0, replayed.stdout + replayed.stderr
        to = f"replay.{name}."
        out = await read_topics(cluster.bootstrap, [to + t for t in OUTPUT_TOPICS], to)
        assert out.latest_profiles() == profiles
    finally:
        await remove_keys(cluster.redis_url, copy)
        await remove_run(cluster.bootstrap, cluster.redis_url, f"replay.{name}.", f"replay-{name}")
