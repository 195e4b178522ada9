"""The Faust app: one agent over the five input topics, thin by design.

decode -> process (load state, pure transition, atomic commit) -> emit. Everything that
decides lives in `pipeline.core`; everything that stores lives in `pipeline.state`.
"""

from __future__ import annotations

import asyncio
import atexit
import gc
import logging
import os
import shutil
import tempfile
import time
from collections import Counter
from collections.abc import Coroutine

import faust
import mode.loop
from faust.types import TP
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from pipeline.core.identifiers import BLOCKED_VALUES
from pipeline.core.model import Emit
from pipeline.core.rules import CoreConfig
from pipeline.core.verify import TokenPolicy
from pipeline.ops.settings import Settings
from pipeline.state.base import Keys
from pipeline.state.redis_store import RedisStore
from pipeline.worker import draining, fetching, metrics
from pipeline.worker.batching import gathered
from pipeline.worker.codec import Item, Source, explain, parse, wire
from pipeline.worker.processor import Processed, Processor, Tally, Wire, outbox_records
from schemas.topics import INPUT_TOPICS, OUTPUT_TOPICS, PROFILES, REJECTED

logger = logging.getLogger(__name__)

OUTBOX_SWEEP_S = 15.0  # outbox records older than this are taken to be a dead worker's
OUTBOX_SCAN_S = 300.0  # how often every worker looks for them anyway (besides rebalances)
FORGET_FLUSH_S = 1.0  # delivered outbox records wait at most this long for a batch to carry them
REDIS_DOWN = (RedisConnectionError, RedisTimeoutError, OSError)


def core_config(settings: Settings) -> CoreConfig:
    """The pure core's configuration from the deployment settings."""
    workspaces = settings.workspaces
    extra = {v.strip().lower() for v in settings.blocked_values.split(",") if v.strip()}
    return CoreConfig(
        secrets={
            ws: tuple(value.get_secret_value().encode() for value in entry.secrets)
            for ws, entry in workspaces.items()
        },
        blocked_values=BLOCKED_VALUES | extra,
        shared_device_limit=settings.shared_device_limit,
        shared_window_ms=settings.shared_window_s * 1000,
        allowed_lateness_ms=settings.allowed_lateness_s * 1000,
        session_lateness_ms=settings.session_lateness_s * 1000,
        policies={
            ws: TokenPolicy(entry.require_token, entry.max_token_lifetime_s)
            for ws, entry in workspaces.items()
        },
    )


def _count(tally: Tally, emits: list[Emit], conflicts: int) -> None:
    """Export a batch's accounting (rejections are counted from what is published)."""
    metrics.APPLIED.inc(tally.applied)
    metrics.UNCHANGED.inc(tally.unchanged)
    metrics.CONFLICTS.inc(conflicts)
    for emit in emits:
        metrics.OUTPUTS.labels(emit.topic).inc()
        if emit.topic == REJECTED:
            metrics.REJECTED.labels(emit.value.reason).inc()  # type: ignore[union-attr]


GC_YOUNG_OBJECTS = 100_000  # net allocations between young collections (CPython: 700)


def settle_heap() -> None:
    """Move what start-up allocated out of the garbage collector's way, and collect less often.

    Modules, the app and its settings live as long as the process; without `gc.freeze`, every
    full collection walks them again. Almost everything allocated afterwards (events, records,
    outputs, Faust's per-message objects) is freed by reference counting, so CPython's default
    (a young collection every 700 net allocations) mostly walks live objects: it ran 816 times
    over 100,000 benchmark events. With 100,000 the worker drained 100,000 events faster in
    three of four interleaved pairs against 700 (medians 12,205 vs 11,330 events/s), and its
    memory stayed flat over 500,000 events (`scripts/memory_soak.py`). Called once the app is
    built, by the worker and by the benchmark's bare agent alike.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(GC_YOUNG_OBJECTS, 20, 20)


def scratch_dir() -> str:
    """A directory for Faust's data, removed when the process exits.

    Faust creates `<datadir>/v1/tables` even with in-memory tables, and its default datadir is
    `<app id>-data` in the working directory: one directory per consumer group left behind.
    Nothing the pipeline keeps lives there (state is in Redis, offsets in Kafka).
    """
    path = tempfile.mkdtemp(prefix="idp-faust-")
    atexit.register(shutil.rmtree, path, ignore_errors=True)
    return path


def faust_app(
    settings: Settings, app_id: str | None = None, *, consumer_patches: bool = True
) -> faust.App:
    """A Faust app with the pipeline's settings (shared with the benchmark's bare agents).

    Also sets what is process-wide and must be chosen before Faust starts its loops: the event
    loop (uvloop unless `IDP_EVENT_LOOP=asyncio`), the fetch policy of the consumer Faust
    starts (`pipeline.worker.fetching`) and the loop that hands its records to the streams
    (`pipeline.worker.draining`). Without `consumer_patches` the last two are Faust's and aiokafka's
    own: the benchmark's bare Faust agent.
    """
    if settings.event_loop == "uvloop":
        mode.loop.use("uvloop")
    if consumer_patches:
        fetching.install(settings.fetch_gather_ms)
        draining.install()
    return faust.App(
        app_id or settings.app_id,
        datadir=scratch_dir(),
        broker=f"kafka://{settings.kafka_bootstrap_servers}",
        store="memory://",
        web_enabled=False,
        topic_allow_declare=False,
        topic_disable_leader=True,
        consumer_auto_offset_reset="earliest",
        broker_commit_interval=settings.commit_interval_s,
        broker_session_timeout=settings.session_timeout_s,
        producer_linger_ms=5,
        key_serializer="raw",
        value_serializer="raw",
    )


def create_app(settings: Settings) -> faust.App:
    """Build the Faust app and its agent for these settings."""
    app = faust_app(settings)
    inputs = app.topic(*(settings.topic(name) for name in INPUT_TOPICS), value_type=bytes)
    outputs = {name: settings.output_topic(name) for name in OUTPUT_TOPICS}
    logical = {settings.topic(name): name for name in INPUT_TOPICS}
    store = RedisStore.from_url(settings.redis_url, marker_ttl_s=settings.dedup_ttl_days * 86400)
    processor = Processor(store, Keys(settings.state_namespace), core_config(settings),
                          known_devices=settings.known_devices)  # fmt: skip
    totals = Tally()
    metrics.serve(settings.metrics_port)
    seen: Counter[str] = Counter()

    pending: set[asyncio.Task] = set()

    def in_background(coroutine: Coroutine[object, object, None]) -> None:
        """Run a task without awaiting it, referenced until it is done (asyncio keeps none)."""
        task = asyncio.ensure_future(coroutine)
        pending.add(task)
        task.add_done_callback(pending.discard)

    commits_with_outputs = [0]  # for the fault-injection switch of the fault tests

    async def emit_all(
        stream: faust.Stream, events: list, wires: list[Wire], outbox: list[str]
    ) -> None:
        """Send outputs now; let the batch's offsets be committed only once they are delivered.

        Faust's attached sends wait for the next offset commit (seconds), which is latency;
        sending directly is not, but then the offsets must not be committed before delivery.
        Faust commits a partition only up to its first unacknowledged offset, so holding back
        the batch's earliest event of each partition (one extra reference, released when the
        broker has acknowledged the batch's outputs) holds back the whole batch: nothing of
        it or after it in that partition is committed before its outputs are durable. (The
        outbox in Redis covers the same window a second way: see *Guarantees*.)
        """
        if not wires:
            return
        earliest: dict = {}
        for event in events:
            message = event.message
            held = earliest.get(message.tp)
            if held is None or message.offset < held.message.offset:
                earliest[message.tp] = event
        held_events = list(earliest.values())
        for event in held_events:
            event.message.incref()
        futures = []
        for topic, key, value in wires:
            futures.append(await app.producer.send(
                outputs[topic], key, value, partition=None, timestamp=None, headers=None
            ))  # fmt: skip
        in_background(release(stream, held_events, futures, outbox))

    async def release(stream: faust.Stream, events: list, futures: list, outbox: list[str]) -> None:
        try:
            await asyncio.gather(*futures)
        except Exception:  # noqa: BLE001 - sent again from the outbox; the batch stays held
            logger.exception("output delivery failed; sending them again from the outbox")
            await redeliver(outbox)
        for event in events:
            await stream.ack(event)
        processor.forget(outbox)  # delivered: nothing to send again

    async def redeliver(outbox: list[str]) -> None:
        """Send a batch's outputs again from its outbox records until the broker takes them.

        Until then the batch's held events keep its offsets uncommitted; a worker stopped
        meanwhile leaves the records to the next one (`drain_at_start`).
        """
        delay = 0.5
        while True:
            await asyncio.sleep(delay)
            try:
                await _drain_outbox(0.0, entries=outbox)
                return
            except Exception as exc:  # noqa: BLE001 - the broker or Redis is still away
                logger.warning("outbox re-send failed (%s); retrying in %.1fs", exc, delay)
                delay = min(delay * 2, 5.0)

    @app.timer(interval=FORGET_FLUSH_S)
    async def flush_delivered() -> None:
        """Delete delivered outbox records that no batch has carried away (an idle worker)."""
        try:
            await processor.flush()
        except REDIS_DOWN as exc:  # kept for the next try; the sweep may send them twice
            logger.warning("could not clear delivered outbox entries (%s)", exc)

    async def drain_outbox(min_age_s: float) -> int:
        """Send again the outputs of committed batches that were never delivered (a crash).

        Entries younger than `min_age_s` may belong to a live worker's batch in flight; older
        ones are sent and deleted. Events (merges, shutdowns, rejections) are sent as they
        were; a profile is sent as it is *now* in Redis, never an older version, so a late
        re-send cannot overwrite a newer profile on the compacted topic.
        """
        try:
            return await _drain_outbox(min_age_s)
        except REDIS_DOWN as exc:
            logger.warning("outbox sweep skipped: Redis unavailable (%s)", exc)
            return 0

    async def _drain_outbox(min_age_s: float, *, entries: list[str] | None = None) -> int:
        keys = Keys(settings.state_namespace)
        if entries is None:  # SCAN walks the whole keyspace: rarely (see OUTBOX_SCAN_S)
            entries = await store.scan(keys.outbox_pattern())
        sent = 0
        for entry, record in zip(entries, await store.read(entries), strict=True):
            if record.data is None:
                continue
            parts = keys.parse(entry)
            try:
                assert parts is not None and parts.kind == "outbox"
                created, records = outbox_records(record.data)
            except Exception as exc:  # noqa: BLE001 - foreign or damaged bytes: never fatal
                logger.error("skipping an unreadable outbox record %s (%s: %s)", entry,
                             type(exc).__name__, exc)  # fmt: skip
                metrics.UNREADABLE_RECORDS.labels("outbox").inc()
                continue
            if time.time() - created < min_age_s:
                continue
            contacts = sorted({k.decode() for topic, k, _ in records if topic == PROFILES})
            events = [(t, k, v) for t, k, v in records if t != PROFILES]
            futures = [
                await app.producer.send(
                    outputs[t], k, v, partition=None, timestamp=None, headers=None
                )
                for t, k, v in events
            ]
            contact_keys = [keys.of(parts.workspace_id, "contact", c) for c in contacts]
            versions: list[int] = []
            while True:  # resend until no profile changed under us
                current = await store.read(contact_keys)
                if [r.version for r in current] == versions:
                    break
                versions = [r.version for r in current]
                futures += [
                    await app.producer.send(outputs[PROFILES], c.encode(), r.data or None,
                                            partition=None, timestamp=None, headers=None)
                    for c, r in zip(contacts, current, strict=True)
                ]  # fmt: skip
                await asyncio.gather(*futures)
            await asyncio.gather(*futures)
            await store.delete([entry])
            sent += len(records)
        if sent:
            logger.warning("re-sent %d undelivered outputs from the outbox", sent)
        return sent

    @app.timer(interval=OUTBOX_SCAN_S)
    async def sweep_outbox() -> None:
        await drain_outbox(OUTBOX_SWEEP_S)

    async def sweep_after_rebalance() -> None:
        # Partitions of a worker that died may come with its undelivered outputs; once they
        # are old enough not to be a live worker's batch in flight, send them.
        await asyncio.sleep(OUTBOX_SWEEP_S)
        await drain_outbox(OUTBOX_SWEEP_S)

    async def process_with_retry(items: list[Item]) -> Processed:
        """Block (and so stop consuming) while Redis is unreachable; resume when it is back.

        A commit whose reply was lost may have been applied: the batch then changes nothing
        the second time, and its outputs are in the outbox records it wrote, sent from there.
        """
        delay = 0.1
        while True:
            try:
                processed = await processor.process(items)
            except REDIS_DOWN as exc:
                logger.warning("Redis unavailable (%s); retrying in %.1fs", exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
                continue
            if processor.in_doubt:
                in_doubt, processor.in_doubt = processor.in_doubt, []
                in_background(redeliver(in_doubt))
            return processed

    @app.agent(inputs, name="resolve")
    async def resolve(stream: faust.Stream) -> None:
        def highwater(tp: TP) -> int | None:
            try:
                return app.consumer.highwater(tp)
            except Exception:  # noqa: BLE001 - e.g. no longer assigned: then nothing is waiting
                return None

        settles = processor.settles
        takes = stream.take_events(settings.batch_size, within=settings.batch_within_s)
        batches = gathered(takes, size=settings.batch_size, gather_s=settings.batch_gather_s,
                           highwater=highwater, ack=stream.ack)  # fmt: skip
        async for events in batches:
            metrics.BATCH_EVENTS.observe(len(events))
            items: list[Item] = []
            rejected: list[Emit] = []
            topics: dict[str, int] = {}
            settled = 0
            for event in events:
                message = event.message
                topic = logical.get(message.topic, message.topic)
                topics[topic] = topics.get(topic, 0) + 1
                stamp = int(message.timestamp * 1000) if message.timestamp else None
                parsed = parse(topic, message.value)
                # Most events end here: page views of known devices, settled without Redis and
                # without building anything more for them (`Processor.settles`).
                if parsed is not None and settles(parsed, stamp):
                    settled += 1
                    continue
                source = Source(topic, message.partition, message.offset, message.key,
                                message.value, stamp, message.topic)  # fmt: skip
                decoded = Item(parsed, source) if parsed is not None else explain(source)
                if isinstance(decoded, Item):
                    items.append(decoded)
                else:
                    rejected.append(decoded)
                    totals.rejected[decoded.value.reason] += 1  # type: ignore[union-attr]
            seen.update(topics)
            for topic, count in topics.items():
                metrics.EVENTS_IN.labels(topic).inc(count)
            conflicts_before = processor.conflicts
            processed = await process_with_retry(items)
            processed.tally.unchanged += settled
            totals.add(processed.tally)
            outputs_now = [*rejected, *processed.emits]
            _count(processed.tally, outputs_now, processor.conflicts - conflicts_before)
            if processed.outbox and settings.fault_exit_after_commits:
                commits_with_outputs[0] += 1
                if commits_with_outputs[0] >= settings.fault_exit_after_commits:
                    logger.warning("fault injection: exiting after a commit, before its outputs")
                    os._exit(86)
            wires = [(e.topic, *wire(e)) for e in rejected] + processed.wires
            await emit_all(stream, events, wires, processed.outbox)

    @app.task
    async def drain_at_start() -> None:
        # A worker that died left its undelivered outputs; a live worker's batch in flight
        # is rarely a second old (if it is, it is sent twice: duplicates are harmless).
        await drain_outbox(1.0)

    @app.on_partitions_assigned.connect
    async def log_assignment(sender: faust.App, assigned: set, **_: object) -> None:
        ours = sorted(f"{tp.topic}:{tp.partition}" for tp in assigned if tp.topic in logical)
        logger.info("assigned %d input partitions: %s", len(ours), " ".join(ours))
        in_background(sweep_after_rebalance())

    @app.timer(interval=30.0)
    async def report() -> None:
        logger.info(
            "events in %d (%s); applied %d, unchanged %d, rejected %s",
            sum(seen.values()), dict(seen), totals.applied, totals.unchanged, dict(totals.rejected),
        )  # fmt: skip

    return app
