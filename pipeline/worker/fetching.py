"""Fetch requests that gather records while the worker keeps up, and ask at once when behind.

Faust's consumer asks the broker with `fetch_min_bytes=1` (answer as soon as one record is
there). A worker that keeps up with a few thousand events per second then sends a fetch
request for every handful of records, and each round (encoding a request for every assigned
partition, decoding the reply, handing it from Faust's consumer thread to the agent) costs
more CPU than the records it brings (docs/performance.md).

`GatheringFetcher` changes one thing: when the previous fetch brought records and all of
them have been taken, the next request lets the broker gather up to `GATHER_BYTES` for at
most `gather_wait_ms` (`IDP_FETCH_GATHER_MS`, 20 ms by default), so a caught-up worker sends
at most ~50 fetches per second whatever the rate. When the previous fetch came back empty (the
topics are quiet), the request is the library's own (`fetch_min_bytes=1`, a long wait), so an
idle worker does not poll. When records are still waiting to be taken (the worker is behind),
it answers at the first byte too, but waits at most 50 ms (`request_limits`), so a backlog is
read without pauses.

Why 20 ms. Each fetch round costs the process CPU (its request names every input partition,
and its reply crosses from Faust's consumer thread to the agent), so fewer, fuller rounds cost
less per event, and each millisecond of gathering is latency. 20 ms with takes of 10 ms
(`IDP_BATCH_WITHIN_S`) keeps the tail shortest when the machine slows, which is when it
matters; the comparison of settings and its command are in docs/performance.md.

Unreadable batches. aiokafka decodes a fetched batch only when its records are taken, inside
`getmany`: a batch it cannot read (a codec the process lacks, a CRC mismatch, a malformed
record) raises there, out of Faust's consumer, and the worker exits; restarted, it reads the
same batch again and exits again. `GatheringFetcher` ends the partition's records at such a
batch instead (`GuardedRecords`): the records before it are handed over, the partition is held
at the batch's offset and is not fetched while the other partitions flow. The worker logs
topic, partition, offsets and error, counts the batch (`idp_unreadable_batches`) and shows the
held offset (`idp_partition_held_at_offset`). Every `HOLD_RETRY_S` it fetches the batch
again, which ends the hold when the batch was damaged in transit, and logs again while it
stays unreadable. Nothing is skipped by the worker: the batch stays in the topic, and an
operator skips it deliberately, with the workers stopped, by moving the group's offset past
it (the log line gives the `kafka-consumer-groups --reset-offsets` command), or makes it
readable (e.g. installs the missing codec) and restarts the worker. A new assignment ends the
hold too: the partition is then read from its committed offset, and held again if need be.

aiokafka builds its `Fetcher` inside `AIOKafkaConsumer.start()` and offers no hook, so
`GatheringConsumer` points that module's name at `GatheringFetcher` while it starts, and the
worker's Faust transport (`pipeline.worker.transport`) builds its consumer as one. The methods
overridden are private, as are the attributes of aiokafka's `FetchResult` and
`PartitionRecords` that `GuardedRecords` relies on: `compatible` checks their shape, the worker
falls back to aiokafka's own fetcher with a warning when it has changed, and the release they
were written for is pinned (constraints.txt).
"""

from __future__ import annotations

import inspect
import logging
import time
from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaConsumer, codec
from aiokafka.consumer import consumer as aiokafka_consumer
from aiokafka.consumer.fetcher import Fetcher, FetchResult, PartitionRecords
from aiokafka.structs import TopicPartition

from pipeline.worker import metrics

logger = logging.getLogger(__name__)

GATHER_BYTES = 64 * 1024
WAITING_WAIT_MS = 50  # see request_limits
HOLD_RETRY_S = 30.0  # how often a held partition's batch is fetched (and logged) again


def request_limits(
    *, brought_records: bool, records_waiting: bool, gather_wait_ms: int, patient: tuple[int, int]
) -> tuple[int, int]:
    """(min bytes, max wait ms) of the next fetch request.

    Gather only while keeping up: the previous fetch brought records and all of them were
    taken. `patient` is what the consumer was configured with.

    While records are waiting, the request leaves out the partitions they belong to (aiokafka
    asks only for partitions with nothing left unread) and names the others, in a backlog
    often topics already read to their end. aiokafka sends one request at a time to a broker,
    so a request that waits Faust's 1.5 s for them would keep the partitions being read from
    being asked again until it returns. It waits at most `WAITING_WAIT_MS` instead.
    """
    if brought_records and not records_waiting and gather_wait_ms > 0:
        return GATHER_BYTES, gather_wait_ms
    if records_waiting:
        return patient[0], min(patient[1], WAITING_WAIT_MS)
    return patient


@dataclass(frozen=True, slots=True)
class Unreadable:
    """A batch that could not be read: where, why, and where the partition resumes past it."""

    tp: TopicPartition
    offset: int  # the first offset not handed over
    error: str
    skip_to: int  # the offset after the batch (offset + 1 when its end is unknown)
    batch: str  # e.g. "offsets 10..14, codec zstd"; empty when its header was unreadable


CODECS = {0: "none", 1: "gzip", 2: "snappy", 3: "lz4", 4: "zstd"}


class _LastBatch:
    """aiokafka's `MemoryRecords`, remembering the batch it handed out last."""

    __slots__ = ("batch", "records")

    def __init__(self, records: Any) -> None:  # aiokafka's (C) MemoryRecords
        self.records = records
        self.batch: Any = None

    def has_next(self) -> bool:
        return self.records.has_next()

    def next_batch(self) -> Any:
        self.batch = None  # until the next one has been parsed
        self.batch = self.records.next_batch()
        return self.batch


class GuardedRecords:
    """A partition's fetched records that end before a batch they cannot read, instead of raising.

    Wraps aiokafka's `PartitionRecords` before any record is taken. When reading raises, the
    records read so far are what the consumer gets, its position stays at the failing offset
    (`next_fetch_offset`, which `FetchResult` moves the position to), and `on_unreadable`
    is told.
    """

    def __init__(self, inner: PartitionRecords, on_unreadable: Any) -> None:
        self._inner = inner
        self._batches = _LastBatch(inner._records)
        inner._records = self._batches  # read first when the first record is taken
        self._on_unreadable = on_unreadable

    @property
    def next_fetch_offset(self) -> int:
        """The offset the partition's next fetch starts at (read by aiokafka's FetchResult)."""
        return self._inner.next_fetch_offset

    def __iter__(self) -> GuardedRecords:
        return self

    def __next__(self) -> Any:  # aiokafka's ConsumerRecord
        try:
            return next(self._inner)
        except StopIteration:
            raise
        except Exception as exc:  # whatever a batch does, the worker goes on
            self._on_unreadable(self._describe(exc))
            raise StopIteration from None

    def _describe(self, exc: Exception) -> Unreadable:
        offset = self._inner.next_fetch_offset
        batch = self._batches.batch
        if batch is not None and batch.base_offset <= offset < batch.next_offset:
            codec = CODECS.get(batch.compression_type, str(batch.compression_type))
            where = f"offsets {batch.base_offset}..{batch.next_offset - 1}, codec {codec}"
            skip_to = batch.next_offset
        else:
            where, skip_to = "", offset + 1
        error = str(exc)  # aiokafka's errors name their class; others are named here
        if not error.startswith(type(exc).__name__):
            error = f"{type(exc).__name__}: {error}"
        return Unreadable(self._inner._tp, offset, error, skip_to, where)


@dataclass(slots=True)
class _Hold:
    unreadable: Unreadable
    assignment: Any  # the assignment it was found under: a new one ends the hold
    retry_at: float


class _WithoutHeld:
    """An assignment as `_get_actions_per_node` sees it: the held partitions left out."""

    def __init__(self, assignment: Any, held: set[TopicPartition]) -> None:
        self._assignment = assignment
        self.tps = assignment.tps - held

    def __getattr__(self, name: str) -> Any:
        return getattr(self._assignment, name)


class GatheringFetcher(Fetcher):
    """aiokafka's fetcher, with fetch requests that gather records while the consumer keeps up.

    It also holds a partition at a batch it cannot read instead of raising (module docstring).
    """

    gather_wait_ms = 5

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)
        self._patient = (self._fetch_min_bytes, self._fetch_max_wait_ms)
        self._brought_records = False
        self.requests = 0  # fetch requests answered (what the tests count)
        self.held: dict[TopicPartition, _Hold] = {}
        self._counted: set[tuple[TopicPartition, int]] = set()  # batches counted in the metric

    def _get_actions_per_node(self, assignment):  # aiokafka's signature
        self._fetch_min_bytes, self._fetch_max_wait_ms = request_limits(
            brought_records=self._brought_records, records_waiting=bool(self._records),
            gather_wait_ms=self.gather_wait_ms, patient=self._patient,
        )  # fmt: skip
        if self.held:
            self._release(assignment)
        if self.held:
            assignment = _WithoutHeld(assignment, set(self.held))
        return super()._get_actions_per_node(assignment)

    async def _proc_fetch_request(self, assignment, node_id, request):
        before = {tp: id(result) for tp, result in self._records.items()}
        brought = await super()._proc_fetch_request(assignment, node_id, request)
        self.requests += 1
        self._brought_records = bool(brought)
        # No record of what the response added has been taken yet: nothing ran in between.
        for tp, result in self._records.items():
            if type(result) is FetchResult and before.get(tp) != id(result):
                records = result._partition_records
                if type(records) is PartitionRecords:
                    result._partition_records = GuardedRecords(
                        records, lambda found, a=assignment: self._hold(found, a)
                    )
        return brought

    def _hold(self, found: Unreadable, assignment: Any) -> None:
        tp = found.tp
        labels = (tp.topic, str(tp.partition))
        if (tp, found.offset) not in self._counted:
            self._counted.add((tp, found.offset))
            metrics.UNREADABLE_BATCHES.labels(*labels).inc()
        metrics.HELD_AT.labels(*labels).set(found.offset)
        self.held[tp] = _Hold(found, assignment, time.monotonic() + HOLD_RETRY_S)
        logger.error(
            "unreadable record batch in %s partition %d at offset %d%s: %s. The partition is "
            "held there, the others go on; it is fetched again every %.0fs. To skip the "
            "batch, stop every worker of the group and run: %s",
            tp.topic, tp.partition, found.offset, f" ({found.batch})" if found.batch else "",
            found.error, HOLD_RETRY_S, skip_command(found),
        )  # fmt: skip

    def _release(self, assignment: Any) -> None:
        now = time.monotonic()
        for tp, hold in list(self.held.items()):
            state = assignment.state_value(tp)
            moved = state is None or not state.has_valid_position or (
                state.position != hold.unreadable.offset
            )  # fmt: skip
            if hold.assignment is assignment and not moved and now < hold.retry_at:
                continue
            del self.held[tp]
            metrics.HELD_AT.remove(tp.topic, str(tp.partition))
            if hold.assignment is not assignment or moved:
                logger.warning("%s partition %d is no longer held at offset %d",
                               tp.topic, tp.partition, hold.unreadable.offset)  # fmt: skip


def skip_command(found: Unreadable) -> str:
    """The command that moves the worker's consumer group past an unreadable batch."""
    try:  # late import: the settings of the worker this runs in (its group is the app id)
        from pipeline.ops.settings import Settings

        settings = Settings()
        group, bootstrap = settings.app_id, settings.kafka_bootstrap_servers
    except Exception:  # only the hint is at stake
        group, bootstrap = "<IDP_APP_ID>", "<KAFKA_BOOTSTRAP_SERVERS>"
    return (
        f"idp stack kafka-tool kafka-consumer-groups --bootstrap-server {bootstrap} "
        f"--group {group} --topic {found.tp.topic}:{found.tp.partition} --reset-offsets "
        f"--to-offset {found.skip_to} --execute"
    )


def compatible() -> str | None:
    """None if the installed aiokafka has the private shape `GatheringFetcher` extends, else why.

    The pinned release (constraints.txt) has it; another one may not, and a policy silently
    bypassed (or a method called with the wrong arguments) is worse than the stock fetcher.
    """
    expected = {
        "_get_actions_per_node": ["self", "assignment"],
        "_proc_fetch_request": ["self", "assignment", "node_id", "request"],
    }
    for name, parameters in expected.items():
        method = getattr(Fetcher, name, None)
        if method is None or list(inspect.signature(method).parameters) != parameters:
            return f"aiokafka's Fetcher.{name} has changed"
    if "Fetcher(" not in inspect.getsource(aiokafka_consumer.AIOKafkaConsumer.start):
        return "aiokafka's consumer no longer builds its Fetcher in start()"
    source = inspect.getsource(Fetcher.__init__)
    for attribute in ("_fetch_min_bytes", "_fetch_max_wait_ms", "_records"):
        if attribute not in source:
            return f"aiokafka's Fetcher no longer has {attribute}"
    return None


class GatheringConsumer(AIOKafkaConsumer):
    """aiokafka's consumer, building a `GatheringFetcher` when it starts.

    aiokafka builds its `Fetcher` inside `start()` and offers no hook, so the module's name is
    pointed at `GatheringFetcher` for the duration of this consumer's start only, and restored
    after: no other consumer of the process is changed (the worker's transport,
    `pipeline.worker.transport`, makes its consumer one of these).
    """

    async def start(self) -> None:
        """Start, with the gathering fetcher."""
        original = aiokafka_consumer.Fetcher
        aiokafka_consumer.Fetcher = GatheringFetcher
        try:
            await super().start()
        finally:
            aiokafka_consumer.Fetcher = original


def configure(gather_wait_ms: int) -> None:
    """Set the gather time of the worker's fetches; warn about codecs this process lacks.

    With `gather_wait_ms=0` its requests are aiokafka's own (it still counts them).
    """
    GatheringFetcher.gather_wait_ms = max(0, gather_wait_ms)
    missing = [name for name, present in (("snappy", codec.has_snappy()), ("lz4", codec.has_lz4()),
                                          ("zstd", codec.has_zstd())) if not present]  # fmt: skip
    if missing:  # such batches would hold their partitions: say why at start already
        logger.warning("aiokafka cannot decode %s batches here (cramjam is missing): install "
                       "aiokafka[lz4,snappy,zstd]", ", ".join(missing))  # fmt: skip
