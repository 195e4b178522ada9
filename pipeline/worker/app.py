"""The Faust app: one agent over the five input topics, and the wiring of the worker.

decode (`decoding`) -> process (`processor`: load state, pure transition, atomic commit) ->
emit (`emitter`, with the `outbox` behind it). Everything that decides lives in
`pipeline.core`; everything that stores lives in `pipeline.state`.
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
from collections.abc import Awaitable, Coroutine

import faust
import mode
import mode.loop
from faust.types import TP

from pipeline.core.identifiers import BLOCKED_VALUES
from pipeline.core.model import Emit
from pipeline.core.rules import CoreConfig
from pipeline.core.verify import TokenPolicy
from pipeline.ops.settings import Settings
from pipeline.state.base import Keys
from pipeline.state.redis_store import RedisStore
from pipeline.worker import fetching, metrics, stalls, transport
from pipeline.worker.batching import gathered
from pipeline.worker.codec import Item, encode_output
from pipeline.worker.decoding import decode_batch
from pipeline.worker.durability import GuardedStore, StateGuard, StateLost
from pipeline.worker.emitter import Emitter
from pipeline.worker.http import HttpServer, KafkaProbe, ProfileLookup, Readiness, build_web_app
from pipeline.worker.outbox import REDIS_DOWN, Outbox
from pipeline.worker.processor import Processed, Processor, Tally
from schemas.topics import OUTPUT_TOPICS, REJECTED, STATE_CHANGELOG

logger = logging.getLogger(__name__)

ERASURE_CHECK_S = 0.5  # how stale a worker's memory of device erasures may be (`known`)
OUTBOX_SWEEP_S = 15.0  # outbox records older than this are taken to be a dead worker's
OUTBOX_SWEEP_INTERVAL_S = 300.0  # how often every worker sweeps anyway (and at start, rebalances)
FORGET_FLUSH_S = 1.0  # delivered outbox records wait at most this long for a batch to carry them
LAG_SAMPLE_S = 5.0  # how often the consumer lag of each assigned input partition is sampled


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
        profile_list_limit=settings.profile_list_limit,
        # A device retires a day after it fell quiet, or later when events may be later than
        # that (R14): live events then land after a user's retired point.
        retire_margin_ms=max(86_400, settings.allowed_lateness_s) * 1000,
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


def freeze_heap() -> None:
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

    The event loop is process-wide and chosen before Faust starts its loops (uvloop unless
    `IDP_EVENT_LOOP=asyncio`). With `consumer_patches` the app runs on the worker's transport
    (`pipeline.worker.transport`: the gathering fetcher and the inline message loop); without,
    on Faust's and aiokafka's own: the benchmark's bare Faust agent.
    """
    if settings.event_loop == "uvloop":
        mode.loop.use("uvloop")
    scheme = "kafka"  # Faust's own aiokafka transport
    if consumer_patches:
        fetching.configure(settings.fetch_gather_ms)
        scheme = transport.SCHEME
    return faust.App(
        app_id or settings.app_id,
        datadir=scratch_dir(),
        broker=f"{scheme}://{settings.kafka_bootstrap_servers}",
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


class FaultInjection:
    """The fault tests' switch: exit right after the N-th commit with outputs, before sending.

    `IDP_FAULT_EXIT_AFTER_COMMITS` (0: never). The exit skips every cleanup, as a crash would.
    """

    def __init__(self, exit_after_commits: int) -> None:
        self.exit_after_commits = exit_after_commits
        self.commits = 0

    def after_commit(self, processed: Processed) -> None:
        """Called with every processed batch, before its outputs are sent."""
        if processed.outbox and self.exit_after_commits:
            self.commits += 1
            if self.commits >= self.exit_after_commits:
                logger.warning("fault injection: exiting after a commit, before its outputs")
                os._exit(86)


class GroupState:
    """Whether the worker has joined its consumer group (a partition assignment was received).

    `guard` says why it does not process when its state is behind the changelog.
    """

    def __init__(self) -> None:
        self.joined = False
        self.guard: StateGuard | None = None


def http_service(app: faust.App, settings: Settings, group: GroupState) -> type[mode.Service]:
    """The HTTP endpoints as a service started and stopped with the app (`worker.http`).

    Lookups read through a store of their own, opened as the worker's is (`open_store`), so
    that a lookup never waits behind a batch's round trip on the worker's connection.
    """
    store = metrics.TimedStore(
        RedisStore.from_url(
            settings.redis_url,
            marker_ttl_s=settings.dedup_ttl_days * 86400,
            wait_replicas=settings.redis_wait_replicas,
        )
    )
    lookup = ProfileLookup(store, Keys(settings.state_namespace), core_config(settings))
    kafka = KafkaProbe(settings.kafka_bootstrap_servers)

    async def group_joined() -> str | None:
        if not group.joined:
            return "group: not joined yet (no partition assignment received)"
        if app.rebalancing:
            return "group: rebalancing"
        return None

    async def redis_answers() -> str | None:
        return None if await store.ping() else "redis: PING not answered"

    async def state_current() -> str | None:
        guard = group.guard
        if guard is not None and guard.refusing:
            return f"state: {guard.refusing}"
        return None

    readiness = Readiness([group_joined, kafka, redis_answers, state_current])
    web_app = build_web_app(lookup=lookup, readiness=readiness, api_token=settings.api_token)
    server = HttpServer(web_app, host=settings.http_host, port=settings.http_port,
                        on_close=[kafka.close, store.close])  # fmt: skip

    class Http(mode.Service):
        """Serves `/healthz`, `/readyz`, `/metrics` and `/v1` while the app runs."""

        async def on_start(self) -> None:
            await server.start()

        async def on_stop(self) -> None:
            await server.stop()

    return Http


def create_app(settings: Settings) -> faust.App:
    """Build the Faust app, its agent and its timers for these settings (wiring only)."""
    app = faust_app(settings)
    reads = settings.input_topics()
    inputs = app.topic(*(settings.topic(name) for name in reads), value_type=bytes)
    outputs = {name: settings.output_topic(name) for name in (*OUTPUT_TOPICS, STATE_CHANGELOG)}
    logical = {settings.topic(name): name for name in reads}
    keys = Keys(settings.state_namespace)
    store = metrics.TimedStore(
        RedisStore.from_url(
            settings.redis_url,
            marker_ttl_s=settings.dedup_ttl_days * 86400,
            wait_replicas=settings.redis_wait_replicas,
        )
    )
    ttl_s = settings.dedup_ttl_days * 86400
    guard = None
    if settings.changelog:
        bootstrap, changelog = settings.kafka_bootstrap_servers, outputs[STATE_CHANGELOG]
        guard = StateGuard(store, keys, bootstrap, changelog, auto_restore=settings.auto_restore)
    processor = Processor(GuardedStore(store, guard) if guard else store, keys,
                          core_config(settings), known_devices=settings.known_devices,
                          changelog_ttl_s=ttl_s if guard else None)  # fmt: skip
    faults = FaultInjection(settings.fault_exit_after_commits)
    totals = Tally()
    metrics.serve(settings.metrics_port)
    group = GroupState()
    group.guard = guard
    if settings.http_port:
        app.service(http_service(app, settings, group))
    seen: Counter[str] = Counter()
    pending: set[asyncio.Task] = set()

    def in_background(coroutine: Coroutine[object, object, None]) -> None:
        """Run a task without awaiting it, referenced until it is done (asyncio keeps none)."""
        task = asyncio.ensure_future(coroutine)
        pending.add(task)
        task.add_done_callback(pending.discard)

    async def send(topic: str, key: bytes | None, value: bytes | None) -> Awaitable[object]:
        return await app.producer.send(outputs[topic], key, value, partition=None,
                                       timestamp=None, headers=None)  # fmt: skip

    # A sweep reads the outbox indexes of the configured workspaces; what none lists (an earlier
    # release's records, a workspace removed since) waits for the SCAN of at most once a day.
    # With a changelog its reads are checked too, so a sweep never re-sends a profile (or a
    # changelog record) read from a Redis that lost it: it catches Redis up first.
    outbox = Outbox(GuardedStore(store, guard) if guard else store, keys, send,
                    changelog_ttl_s=ttl_s if guard else None,
                    workspaces=sorted(settings.workspaces),
                    recover=(lambda: catch_up(first=False)) if guard else None)  # fmt: skip
    started = asyncio.Event()  # Redis compared with the changelog (and caught up) at start

    async def catch_up(first: bool) -> None:
        """Bring Redis up to the changelog before deciding (retrying while a server is away)."""
        assert guard is not None
        delay = 0.5
        while True:
            try:
                await (guard.start() if first else guard.recover())
                return
            except Exception as exc:  # Kafka or Redis away: nothing is decided meanwhile
                logger.warning("could not compare Redis with the state changelog (%s: %s); "
                               "retrying in %.1fs", type(exc).__name__, exc, delay)  # fmt: skip
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

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
            except StateLost as exc:  # nothing of this batch was decided
                logger.error("%s; catching up with the state changelog before the batch", exc)
                await catch_up(first=False)
                continue
            if processor.unsent:
                unsent, processor.unsent = processor.unsent, []
                in_background(outbox.redeliver(unsent))
            return processed

    @app.agent(inputs, name="resolve")  # type: ignore[arg-type] # Faust types agents by StreamT
    async def resolve(stream: faust.Stream) -> None:
        def highwater(tp: TP) -> int | None:
            try:
                return app.consumer.highwater(tp)
            except Exception:  # e.g. no longer assigned: then nothing is waiting
                return None

        if guard is not None:
            await catch_up(first=True)
        started.set()
        emitter = Emitter(send, outbox, ack=stream.ack, forget=processor.forget,
                          in_background=in_background, guard=guard)  # fmt: skip
        takes = stream.take_events(settings.batch_size, within=settings.batch_within_s)
        batches = gathered(takes, size=settings.batch_size, gather_s=settings.batch_gather_s,
                           highwater=highwater, ack=stream.ack)  # fmt: skip
        checked = 0.0
        async for events in batches:
            metrics.BATCH_EVENTS.observe(len(events))
            if time.monotonic() - checked >= ERASURE_CHECK_S:
                # Page views of remembered devices are decided at parse: an erasure committed
                # by any worker must reach this one's memory first (`known`).
                checked = time.monotonic()
                try:
                    await processor.refresh_erasures()
                except REDIS_DOWN as exc:
                    logger.warning("could not read the counts of device erasures (%s)", exc)
                except StateLost as exc:  # nothing decided yet: catch up, then read them
                    logger.error("%s; catching up with the state changelog", exc)
                    await catch_up(first=False)
            decoded = decode_batch((e.message for e in events), logical, processor.browsing)
            seen.update(decoded.topics)
            for topic, count in decoded.topics.items():
                metrics.EVENTS_IN.labels(topic).inc(count)
            for emit in decoded.rejected:
                totals.rejected[emit.value.reason] += 1  # type: ignore[union-attr]
            conflicts_before = processor.conflicts
            # Before any commit: a catch-up that ends after it may lack the batch's records.
            restores = guard.restores if guard is not None else 0
            processed = await process_with_retry(decoded.items)
            processed.tally.unchanged += decoded.browsing
            totals.add(processed.tally)
            _count(processed.tally, [*decoded.rejected, *processed.emits],
                   processor.conflicts - conflicts_before)  # fmt: skip
            faults.after_commit(processed)
            wires = [encode_output(e) for e in decoded.rejected] + processed.wires
            await emitter.emit(events, wires, processed.outbox, processed.profiles,
                               restores=restores)  # fmt: skip

    @app.timer(interval=FORGET_FLUSH_S)
    async def flush_delivered() -> None:
        """Delete delivered outbox records that no batch has carried away (an idle worker)."""
        try:
            await processor.flush()
        except REDIS_DOWN as exc:  # kept for the next try; the sweep may send them twice
            logger.warning("could not clear delivered outbox entries (%s)", exc)

    @app.task
    async def drain_at_start() -> None:
        # A worker that died left its undelivered outputs; a live worker's batch in flight
        # is rarely a second old (if it is, it is sent twice: duplicates are harmless). They
        # are sent as Redis holds them now: once it is caught up with the changelog.
        await started.wait()
        await outbox.sweep(1.0)

    @app.timer(interval=OUTBOX_SWEEP_INTERVAL_S)
    async def sweep_outbox() -> None:
        await started.wait()
        await outbox.sweep(OUTBOX_SWEEP_S)

    async def sweep_after_rebalance() -> None:
        # Partitions of a worker that died may come with its undelivered outputs; once they
        # are old enough not to be a live worker's batch in flight, send them.
        await asyncio.sleep(OUTBOX_SWEEP_S)
        await started.wait()
        await outbox.sweep(OUTBOX_SWEEP_S)

    @app.on_partitions_assigned.connect  # type: ignore[arg-type] # mode's signal typing
    async def log_assignment(sender: faust.App, assigned: set, **_: object) -> None:
        group.joined = True
        ours = sorted(f"{tp.topic}:{tp.partition}" for tp in assigned if tp.topic in logical)
        logger.info("assigned %d input partitions: %s", len(ours), " ".join(ours))
        in_background(sweep_after_rebalance())

    lagging: set[tuple[str, str]] = set()
    watch = stalls.StallWatch()

    @app.timer(interval=LAG_SAMPLE_S)
    async def sample_lag() -> None:
        """Export each assigned input partition's lag: highwater - committed (or - position).

        Then find the partitions that stall (`worker.stalls`): log them and fetch them again.
        """
        consumer = app.consumer
        assigned = [tp for tp in consumer.assignment() if tp.topic in logical]
        metrics.ASSIGNED.set(len(assigned))
        # Faust's own record of the offsets it committed (or found committed at assignment).
        committed = consumer._committed_offset  # type: ignore[attr-defined]
        # aiokafka's positions, read without waiting for one it has not reset yet.
        positions = {tp: stalls.position(consumer, tp) for tp in assigned}
        done = {tp: committed.get(tp) if committed.get(tp) is not None else positions[tp]
                for tp in assigned}  # fmt: skip

        def highwater(tp: TP) -> int | None:
            try:
                return consumer.highwater(tp)
            except Exception:  # no longer assigned, or nothing fetched yet
                return None

        metrics.sample_lag(assigned, highwater, done.get, lagging)
        ends = {tp: highwater(tp) for tp in assigned}
        unknown = [tp for tp, end in ends.items() if end is None]  # never fetched yet
        if unknown:
            try:
                ends.update(await asyncio.wait_for(consumer.highwaters(*unknown), LAG_SAMPLE_S))
            except Exception:  # the broker away: the next sample asks again
                pass
        now = time.monotonic()
        watch.keep(set(assigned))
        for tp in assigned:
            # Where fetching stands: the position, else what is committed, else nothing read.
            position = positions[tp]
            at: int = position if position is not None else (committed.get(tp) or 0)
            end = ends.get(tp)
            if stalls.held(consumer, tp):  # at an unreadable batch: logged and shown as such
                end = at
            if end is not None and watch.observe(tp, at, end, now):
                logger.warning("%s partition %d is stalled at offset %d of %d for %.0fs; %s; "
                               "fetching it again from there", tp.topic, tp.partition, at, end,
                               watch.stall_s, stalls.describe(consumer, tp))  # fmt: skip
                metrics.STALLS.inc()
                try:
                    await stalls.fetch_again(consumer, tp, at)
                except Exception:  # revoked meanwhile
                    logger.exception("fetching %s partition %d again failed", tp.topic,
                                     tp.partition)  # fmt: skip
        metrics.STALLED.set(len(watch.stalled))

    @app.timer(interval=30.0)
    async def report() -> None:
        logger.info(
            "events in %d (%s); applied %d, unchanged %d, rejected %s",
            sum(seen.values()), dict(seen), totals.applied, totals.unchanged, dict(totals.rejected),
        )  # fmt: skip

    return app
