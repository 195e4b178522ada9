"""Kafka administration: readiness probe, the SPEC §3 topics, a consumer's clean stop."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import replace

from aiokafka import AIOKafkaConsumer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError, TopicAlreadyExistsError
from aiokafka.protocol.metadata import MetadataRequest

from pipeline.ops.settings import Settings
from pipeline.ops.topics import TopicSpec, default_replication_factor, replicated, topic_specs
from pipeline.state.base import Keys
from pipeline.state.factory import open_store
from schemas.topics import STATE_CHANGELOG

logger = logging.getLogger(__name__)


async def stop_consumer(consumer: AIOKafkaConsumer) -> None:
    """Stop `consumer`, even when its fetcher re-raises a cancellation that is not the caller's.

    A fetch request that failed (a broker slow to answer, say) waits out its retry backoff; when
    `stop` cancels it there, aiokafka awaits the cancelled task and lets its CancelledError out of
    `stop`, before the connections close (aio-libs/aiokafka#647, #983). That error is swallowed
    and the connections closed; a cancellation of the caller itself still propagates.
    """
    try:
        await consumer.stop()
    except asyncio.CancelledError:
        task = asyncio.current_task()
        if task is not None and task.cancelling():
            raise
        logger.debug("a consumer's stop raised its fetcher's cancellation; closing its connections")
        await consumer._client.close()  # what `stop` had left to do; aiokafka has no public call


async def _describe(bootstrap: str) -> bool:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=3000)
    try:
        await admin.start()
        await admin.list_topics()
        return True
    except (KafkaError, OSError):
        return False
    finally:
        await admin.close()


def cluster_ready(bootstrap: str) -> bool:
    """Whether the broker answers a metadata request."""
    return asyncio.run(_describe(bootstrap))


async def _views(bootstrap: str) -> dict[int, int]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=3000)
    try:
        await admin.start()
        return await broker_views(admin)
    except (KafkaError, OSError, TimeoutError):
        return {}
    finally:
        await admin.close()


async def broker_views(admin: AIOKafkaAdminClient) -> dict[int, int]:
    """Broker id -> how many brokers that broker's own metadata lists as up.

    A broker's view lags the controller's by moments: just after a broker has joined, one node
    (`describe_cluster` asks a random one) can still count it out. Each broker is asked itself;
    one that does not answer is left out.
    """
    views = {}
    for broker in sorted(admin._client.cluster.brokers(), key=lambda b: b.nodeId):
        try:
            response = await admin._send_request_to_node(broker.nodeId, MetadataRequest([]))
        except (KafkaError, OSError, TimeoutError):
            continue
        views[broker.nodeId] = len(response.to_object()["brokers"])
    return views


def brokers_agree(bootstrap: str, brokers: int) -> bool:
    """Whether `brokers` brokers answer and each of them sees all `brokers` up."""
    views = asyncio.run(_views(bootstrap))
    return len(views) == brokers and all(seen == brokers for seen in views.values())


async def topics_led_everywhere(bootstrap: str, names: list[str], *, timeout: float = 120) -> None:
    """Wait until every broker of `bootstrap` gives every partition of `names` a leader.

    A broker that learns of new topics late answers a client's first requests with "unknown
    topic": callers start their clients only once every broker knows.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    for broker in bootstrap.split(","):
        while True:
            try:
                missing = await asyncio.wait_for(missing_topics(broker, names), 15)
            except (KafkaError, OSError, TimeoutError):
                missing = names
            if not missing:
                break
            if loop.time() > deadline:
                raise TimeoutError(f"{broker} has no leader for {missing[:3]} after {timeout}s")
            await asyncio.sleep(0.2)


async def ensure_topics(
    bootstrap: str, specs: list[TopicSpec], *, replication_factor: int | None = None
) -> list[str]:
    """Create the topics that do not exist yet; return the names created.

    `replication_factor` None: `IDP_REPLICATION_FACTOR`, or else 1, or 3 when the cluster has
    at least three brokers; from 3 on, the topics also get `min.insync.replicas=2`, so that a
    write acknowledged to an `acks=all` producer is on two brokers (`topics.replicated`).
    """
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=15000)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        missing = [spec for spec in specs if spec.name not in existing]
        if not missing:
            return []
        if replication_factor is None:
            replication_factor = Settings().replication_factor
        if replication_factor is None:
            # The brokers alive now: set IDP_REPLICATION_FACTOR where one may be down.
            brokers = max((await broker_views(admin)).values(), default=0)
            replication_factor = default_replication_factor(brokers)
            logger.info("creating %d topics with replication factor %d: the cluster has %d "
                        "broker(s) up (IDP_REPLICATION_FACTOR sets it)", len(missing),
                        replication_factor, brokers)  # fmt: skip
        new = [
            NewTopic(
                name=spec.name,
                num_partitions=spec.partitions,
                replication_factor=replication_factor,
                topic_configs=spec.config,
            )
            for spec in replicated(missing, replication_factor)
        ]
        response = await admin.create_topics(new, timeout_ms=15000)
        for name, code, *_ in response.topic_errors:
            if code not in (0, TopicAlreadyExistsError.errno):
                message = f"creating topic {name} failed with Kafka error code {code}"
                raise RuntimeError(message)
        return [spec.name for spec in missing]
    finally:
        await admin.close()


async def missing_topics(bootstrap: str, names: list[str]) -> list[str]:
    """The topics of `names` that do not exist yet, or have a partition without a leader."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=5000)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        present = [name for name in names if name in existing]
        ready = set()
        for topic in await admin.describe_topics(present) if present else []:
            leaders = [p.get("leader", -1) for p in topic.get("partitions") or []]
            if topic.get("error_code") == 0 and leaders and min(leaders) >= 0:
                ready.add(topic["topic"])
        return [name for name in names if name not in ready]
    finally:
        await admin.close()


async def wait_for_topics(bootstrap: str, names: list[str], *, log_every_s: float = 5.0) -> None:
    """Return once every topic of `names` exists with a leader for each partition.

    Logs which topics it waits for when it starts waiting and every `log_every_s` after that;
    asks the broker once a second. A broker that does not answer counts as topics missing.
    """
    loop = asyncio.get_running_loop()
    logged_at: float | None = None
    while True:
        try:
            missing = await missing_topics(bootstrap, names)
        except (KafkaError, OSError) as exc:
            missing = names
            logger.debug("cannot list the topics yet (%s)", exc)
        if not missing:
            if logged_at is not None:
                logger.info("every topic exists: %d topics", len(names))
            return
        now = loop.time()
        if logged_at is None or now - logged_at >= log_every_s:
            logger.warning("waiting for %d missing topics: %s",
                           len(missing), " ".join(missing))  # fmt: skip
            logged_at = now
        await asyncio.sleep(1.0)


async def prepare_topics(settings: Settings) -> None:
    """Before a worker subscribes: create the missing SPEC §3 topics, or wait for them.

    `IDP_CREATE_TOPICS` (default true) creates them as `idp topics` does; either way this
    returns only once every topic has a leader, since a Faust consumer that subscribes to a
    topic not yet in the cluster's metadata never picks it up later.
    """
    specs = topic_specs(settings.topic_prefix, settings.partitions,
                        timestamp_type=settings.input_timestamp_type)  # fmt: skip
    changelog = settings.output_topic(STATE_CHANGELOG)
    if changelog not in {spec.name for spec in specs}:  # outputs under a prefix of their own
        spec = next(s for s in specs if s.name == settings.topic(STATE_CHANGELOG))
        specs.append(replace(spec, name=changelog))
    if settings.create_topics:
        created = await ensure_topics(settings.kafka_bootstrap_servers, specs,
                                      replication_factor=settings.replication_factor)  # fmt: skip
        if created:
            logger.info("created %d missing topics: %s", len(created), " ".join(created))
    else:
        logger.info("IDP_CREATE_TOPICS=false: the worker creates no topic, it waits for them")
    await wait_for_topics(settings.kafka_bootstrap_servers, [spec.name for spec in specs])


async def remove_run(bootstrap: str, redis_url: str, prefix: str, namespace: str) -> None:
    """Delete a run's topics (`prefix` + the SPEC §3 names) and its Redis keys (`namespace`).

    For the benchmark's and the tests' throw-away runs, so that a long-lived local broker and
    Redis do not pile up thousands of partitions and keys.
    """
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.delete_topics([spec.name for spec in topic_specs(prefix, 1)])
    except KafkaError as exc:
        logger.warning("could not delete the topics of %s* (%s)", prefix, exc)
    finally:
        await admin.close()
    await remove_keys(redis_url, namespace)


async def remove_keys(redis_url: str, namespace: str) -> None:
    """Delete the Redis keys of a state namespace (on every master of a Redis Cluster).

    Its state format record and outbox scan flag go too: the namespace is then as new.
    """
    store = open_store(redis_url, marker_ttl_s=1)
    named = Keys(namespace)
    try:
        keys = await store.scan(named.everything())
        keys += [named.state_format(), named.outbox_scan_marker()]
        for start in range(0, len(keys), 1000):
            await store.delete(keys[start : start + 1000])
    finally:
        await store.close()
