"""`idp bench --history`: what one event costs as the history it touches grows (R15).

Four shapes of history, each on topics, a Redis namespace and a worker of its own:

* `library`: one shared computer, a new user each session (log in, browse, log out);
* `laptop`: one user on one device, logging in and out every session;
* `devices`: one user on a new device each session (within R4: 3 h apart, 8 a day);
* `email`: one e-mail claimed (unverified) by a new user's signup on a new device each time.

For each history size N (10, 100, 1,000, 10,000 sessions), the history is grown to N and the
worker's cost per event is measured on the last sessions (at most `probe_sessions` of them,
`PROBE` by default; a first size below that is measured on that many sessions of new
identities: copies of the shape under other names, each of the size, one after another in event
time and ending where the history starts, and again on other copies after the last size, the
ratio taken against the mean of the two): the CPU seconds of the worker process over those
events (its threads' time on a CPU, to the nanosecond), less what the idle worker burns in the
same time (measured just before), divided by their number. The
largest stored record (the data of the namespace's largest key) is read after each size.
Sessions are 3 h apart in event time, and every record is produced with its event's
timestamp (R14), in event-time order at a steady `RATE` at most and never more than `LEAD` of
event time ahead of what the worker committed (as live traffic comes to a worker that keeps
up: a device's sessions one after another). The sessions are hours apart in event time and
milliseconds apart on the wire, so a worker that fell behind would read one partition days of
event time ahead of another; that is a backlog, whose events land behind their device's carry
or a user's retired point and pay for the whole device or user (docs/design.md, *What is not
bounded yet*).

A shape stops when growing its history takes longer than its budget: the sizes not reached
are reported as such, with the cost at the last size measured.
"""

from __future__ import annotations

import asyncio
import subprocess
import tempfile
import time
import uuid
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Protocol

import jwt
import orjson
import redis.asyncio as aioredis
from aiokafka import AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from rich.console import Console
from rich.table import Table

from pipeline.ops.admin import ensure_topics, remove_keys, remove_run
from pipeline.ops.processes import cpu_seconds, spawn, stop
from pipeline.ops.settings import Settings
from pipeline.ops.topics import topic_specs
from pipeline.state.base import Keys
from pipeline.tools.bench import committed, committed_offsets, environment, produce
from pipeline.tools.journey import Record, user_hash
from schemas.time import format_timestamp
from schemas.topics import CHAT_START, LOGIN, LOGOUT, PAGE_VIEW, SIGNUP

SIZES = (10, 100, 1_000, 10_000)
PROBE = 50  # sessions whose events are measured at each size, by default
BUDGET_S = 300.0  # per shape: growing its history may take this long
RATE = 500.0  # events/s: the history is produced in order at this rate, as live traffic comes
# The producer stays within this much event time of what the worker committed: less than the
# allowed lateness (a day), so no record is read behind one a day later of another partition.
LEAD = timedelta(hours=20)
SECRETS = {"history": "history-secret-0123456789abcdef012345"}
WS = "history"
START = datetime(2024, 1, 1, tzinfo=UTC)
SPACING = timedelta(hours=3)  # between sessions: 8 devices a day stays within R4's 10


def _event(topic: str, at: datetime, anonymous_id: str, n: int, **fields: object) -> Record:
    value = {"event_id": f"h-{topic}-{anonymous_id}-{n}", "workspace_id": WS,
             "anonymous_id": anonymous_id, "timestamp": format_timestamp(at), **fields}  # fmt: skip
    return Record(topic, anonymous_id, value)


def _proof(user_id: str) -> dict[str, str]:
    return {"user_id": user_id, "user_hash": user_hash(SECRETS[WS], user_id)}


class Unit(Protocol):
    """A shape of history (`SHAPES`)."""

    def __call__(self, n: int, c: int = 0, origin: datetime = ...) -> list[Record]:
        """Session `n` of copy `c` (0: the history itself), its times from `origin`."""
        ...


def _copy(c: int) -> str:
    """The suffix of copy `c` of a shape's names: none for the first (`run_shape`).

    A shape's session `n` of copy `c` from `origin`: `unit(n, c, origin)`.
    """
    return f"-c{c}" if c else ""


def library(n: int, c: int = 0, origin: datetime = START) -> list[Record]:
    """Session `n` of the library computer: a new reader logs in, browses and logs out."""
    at, user, device = origin + n * SPACING, f"reader-{n}{_copy(c)}", f"library{_copy(c)}"
    return [_event(LOGIN, at, device, n, **_proof(user)),
            _event(PAGE_VIEW, at + timedelta(minutes=1), device, n, url="https://lib/"),
            _event(LOGOUT, at + timedelta(minutes=30), device, n, user_id=user)]  # fmt: skip


def laptop(n: int, c: int = 0, origin: datetime = START) -> list[Record]:
    """Session `n` of the laptop: its owner logs in, browses and logs out."""
    at, user, device = origin + n * SPACING, f"owner{_copy(c)}", f"laptop{_copy(c)}"
    return [_event(LOGIN, at, device, n, **_proof(user)),
            _event(PAGE_VIEW, at + timedelta(minutes=1), device, n, url="https://app/"),
            _event(LOGOUT, at + timedelta(minutes=30), device, n, user_id=user)]  # fmt: skip


def devices(n: int, c: int = 0, origin: datetime = START) -> list[Record]:
    """Session `n` of the traveller: a new device browses, and the same user logs in on it."""
    at, device = origin + n * SPACING, f"browser-{n}{_copy(c)}"
    return [
        _event(PAGE_VIEW, at, device, n, url="https://app/"),
        _event(LOGIN, at + timedelta(minutes=1), device, n, **_proof(f"traveller{_copy(c)}")),
    ]


def email(n: int, c: int = 0, origin: datetime = START) -> list[Record]:
    """Claim `n` of the shared e-mail: a new device's chat carries it, then its user signs up."""
    at, device, shared = origin + n * SPACING, f"signup-{n}{_copy(c)}", f"shared{_copy(c)}@x.io"
    return [_event(CHAT_START, at, device, n, conversation_id=f"conv-{n}{_copy(c)}", email=shared),
            _event(SIGNUP, at + timedelta(minutes=1), device, n, email=shared,
                   **_proof(f"claimant-{n}{_copy(c)}"))]  # fmt: skip


def logouts(n: int, c: int = 0, origin: datetime = START) -> list[Record]:
    """Hostile: logout `n` on one kiosk names a user who never logged in there (no proof)."""
    at, device = origin + n * SPACING, f"kiosk{_copy(c)}"
    return [_event(PAGE_VIEW, at, device, n, url="https://kiosk/"),
            _event(LOGOUT, at + timedelta(minutes=1), device, n,
                   user_id=f"nobody-{n}{_copy(c)}")]  # fmt: skip


def reused(n: int, c: int = 0, origin: datetime = START) -> list[Record]:
    """Hostile: one user's user_hash replayed from a new device every 30 minutes (beyond R4)."""
    at, device = origin + n * timedelta(minutes=30), f"replayer-{n}{_copy(c)}"
    return [_event(LOGIN, at, device, n, **_proof(f"victim{_copy(c)}"))]


def leads(n: int, c: int = 0, origin: datetime = START) -> list[Record]:
    """Hostile: lead `n` types the e-mail a user verified (a token signed it) on a new device."""
    at, device, owner = origin + n * SPACING, f"typist-{n}{_copy(c)}", f"owner{_copy(c)}"
    records = [_event(CHAT_START, at + timedelta(minutes=1), device, n,
                      conversation_id=f"typed-{n}{_copy(c)}", email=f"{owner}@x.io")]  # fmt: skip
    if n == 0:
        claims = {"user_id": owner, "email": f"{owner}@x.io",
                  "exp": int((origin + timedelta(days=3650)).timestamp())}  # fmt: skip
        token = jwt.encode(claims, SECRETS[WS], algorithm="HS256")
        records.insert(0, _event(SIGNUP, at, f"{owner}-laptop", n, user_id=owner,
                                 identity_token=token))  # fmt: skip
    return records


SHAPES: dict[str, tuple[str, Unit]] = {
    "library": ("one library computer, a new user each session", library),
    "laptop": ("one user, one device, log in and out", laptop),
    "devices": ("one user, a new device each session", devices),
    "email": ("one e-mail, claimed by a new user each time", email),
    # Hostile shapes (R15 bounds them too), measured on request (`--shapes`):
    "logouts": ("one device, a logout without credentials each session", logouts),
    "reused": ("one user_hash replayed from a new device every 30 min", reused),
    "leads": ("one verified e-mail, typed by a new lead each time", leads),
}
DEFAULT_SHAPES = ("library", "laptop", "devices", "email")


def _span(unit: Unit, sessions: int) -> timedelta:
    """The event time from a shape's first session to session `sessions`."""
    start = unit(0, 0, START)[0].timestamp_ms or 0
    return timedelta(milliseconds=(unit(sessions, 0, START)[0].timestamp_ms or 0) - start)


def check_shapes(names: Iterable[str]) -> None:
    """Raise ValueError naming the shapes that are not in `SHAPES`."""
    if unknown := [name for name in names if name not in SHAPES]:
        raise ValueError(f"unknown history shape(s) {', '.join(unknown)}; "
                         f"known: {', '.join(SHAPES)}")  # fmt: skip


@dataclass
class Point:
    """One history size of one shape."""

    size: int
    ms_per_event: float | None = None  # None: not reached within the budget
    largest_record: int = 0  # bytes of the largest state record's data
    largest_kind: str = "-"  # its kind (`dev`, `user`, `email`, `contact`, ...)
    largest_outbox: int = 0  # bytes of the largest outbox record's data


@dataclass
class Shape:
    """The points measured of one shape."""

    name: str
    run: str  # its topics are hist<run>.*, its Redis keys hist<run>:*: removed when done
    points: list[Point] = field(default_factory=list)
    again: float | None = None  # the first size's cost measured again after the last (ms)

    def first_cost(self) -> float | None:
        """The cost per event at the first size: the mean of its two measurements, if two."""
        first = self.points[0].ms_per_event if self.points else None
        if first is None or self.again is None:
            return first
        return (first + self.again) / 2

    def ratio(self) -> float | None:
        """Cost per event at the largest size reached over the cost at the first."""
        done = [p for p in self.points if p.ms_per_event is not None]
        first = self.first_cost()
        if len(done) < 2 or not first:
            return None
        return (done[-1].ms_per_event or 0) / first


async def until_processed(
    admin: AIOKafkaAdminClient, group: str, total: int, worker: subprocess.Popen, deadline: float
) -> bool:
    """Wait until the group committed `total` records; False at the deadline."""
    while time.monotonic() < deadline:
        if worker.poll() is not None:
            raise RuntimeError(f"the worker exited with {worker.returncode}")
        if await committed(admin, group) >= total:
            return True
        await asyncio.sleep(0.05)
    return False


async def produce_live(
    bootstrap: str,
    prefix: str,
    records: list[Record],
    admin: AIOKafkaAdminClient,
    group: str,
    worker: subprocess.Popen,
    deadline: float,
) -> bool:
    """Produce in event-time order at `RATE` at most, within `LEAD` of what the group committed.

    Before a record is sent, every record sent with an event time more than `LEAD` before its
    own has been committed by the group (its partition's committed offset is past it). False at
    the deadline.
    """
    lead_ms = int(LEAD.total_seconds() * 1000)
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=0)
    await producer.start()
    sent: deque[tuple[int, asyncio.Future]] = deque()  # (event time, delivery) in order
    try:
        started = time.monotonic()
        for n, record in enumerate(records):
            ahead = started + n / RATE - time.monotonic()
            if ahead > 0:
                await asyncio.sleep(ahead)
            at = record.timestamp_ms or 0
            while sent and sent[0][0] < at - lead_ms:
                if time.monotonic() > deadline:
                    return False
                if worker.poll() is not None:
                    raise RuntimeError(f"the worker exited with {worker.returncode}")
                offsets = await committed_offsets(admin, group)
                while sent and sent[0][0] < at - lead_ms:
                    meta = await sent[0][1]
                    if offsets.get(TopicPartition(meta.topic, meta.partition), 0) <= meta.offset:
                        await asyncio.sleep(0.02)  # not committed yet: ask again
                        break
                    sent.popleft()
            value = record.value if isinstance(record.value, bytes) else orjson.dumps(record.value)
            delivery = await producer.send(prefix + record.topic, value, key=record.key.encode(),
                                           timestamp_ms=record.timestamp_ms)  # fmt: skip
            sent.append((at, delivery))
        await producer.flush()
        return True
    finally:
        await producer.stop()


async def largest_records(url: str, namespace: str) -> tuple[tuple[int, str], tuple[int, str]]:
    """(bytes, kind) of the largest state record's data and of the largest outbox record's.

    State records are the facts and published profiles (`Keys.of`); an outbox record holds a
    committed batch's outputs until they are delivered (`HSTRLEN key d`).
    """
    layout = Keys(namespace)
    outbox = layout.outbox_prefix().encode()
    client = aioredis.Redis.from_url(url)
    try:
        keys = [k async for k in client.scan_iter(match=layout.everything(), count=1000)]
        state, box = (0, "-"), (0, "outbox")
        for start in range(0, len(keys), 1000):
            chunk = keys[start : start + 1000]
            pipe = client.pipeline(transaction=False)
            for key in chunk:
                pipe.hstrlen(key, "d")
            sizes = await pipe.execute(raise_on_error=False)
            for key, size in zip(chunk, sizes, strict=True):
                if not isinstance(size, int):
                    continue  # not a record (an outbox index)
                if key.startswith(outbox):
                    box = max(box, (size, "outbox"))
                    continue
                parts = layout.parse(key.decode())
                state = max(state, (size, parts.kind if parts is not None else "other"))
        return state, box
    finally:
        await client.aclose()


async def run_shape(
    settings: Settings,
    name: str,
    sizes: tuple[int, ...],
    budget_s: float,
    console: Console,
    *,
    probe_sessions: int = PROBE,
) -> Shape:
    """Grow one shape's history through the sizes, measuring each; remove what it made."""
    _, unit = SHAPES[name]
    run_id = uuid.uuid4().hex[:8]
    prefix, namespace, group = f"hist{run_id}.", f"hist{run_id}", f"hist-{run_id}"
    bootstrap = settings.kafka_bootstrap_servers
    workdir = Path(tempfile.mkdtemp(prefix="idp-history-"))
    secrets_file = workdir / "secrets.json"
    secrets_file.write_bytes(orjson.dumps(SECRETS))
    # Records keep their old event times: no retention by time on these topics.
    await ensure_topics(bootstrap, topic_specs(prefix, settings.partitions, retention_ms=-1))
    env = environment(settings, prefix, namespace, secrets_file, IDP_APP_ID=group)
    worker = spawn("worker", env, workdir / "worker.log")
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    shape = Shape(name, run_id)
    sent = produced = 0
    try:
        # Started, joined and warm: one event of another device, processed.
        await produce(bootstrap, prefix, [_event(PAGE_VIEW, START, "warm-up", 0, url="/")])
        produced = 1
        if not await until_processed(admin, group, produced, worker, time.monotonic() + 120):
            raise RuntimeError(f"the worker did not start within 120 s ({workdir / 'worker.log'})")
        deadline = time.monotonic() + budget_s

        async def measure(records: list[Record]) -> float | None:
            """The worker's CPU ms per event over these records (None: they did not finish)."""
            nonlocal produced
            idle_from = cpu_seconds(worker.pid), time.monotonic()
            await asyncio.sleep(1.0)
            idle = (cpu_seconds(worker.pid) - idle_from[0]) / (time.monotonic() - idle_from[1])
            busy_from = cpu_seconds(worker.pid), time.monotonic()
            reached = await produce_live(bootstrap, prefix, records, admin, group, worker,
                                         deadline + budget_s)  # fmt: skip
            produced += len(records)
            if not reached or not await until_processed(admin, group, produced, worker,
                                                        deadline + budget_s):  # fmt: skip
                return None
            cpu = cpu_seconds(worker.pid) - busy_from[0]
            wall = time.monotonic() - busy_from[1]
            return max(cpu - idle * wall, 0.0) / len(records) * 1000

        def copies_of(first: int, copies: range, origin: datetime) -> list[Record]:
            """Sessions 0 to `first` of these copies of the shape, one after another from origin.

            Each copy starts where the one before ended in event time, so the worker reads them
            as it reads one history: as many sessions in flight, in batches alike.
            """
            span = _span(unit, first)
            return [r for k, c in enumerate(copies) for n in range(first)
                    for r in unit(n, c, origin + k * span)]  # fmt: skip

        # A first size below the probe is measured on as many new identities (copies of the
        # shape under other names, one after another, ending where the history starts) as make
        # up the probe's sessions: a figure from a few events is mostly noise, and every later
        # size is measured against it.
        copies = -(-probe_sessions // sizes[0])
        for size in sizes:
            probe_from, reached = max(sent, size - probe_sessions), True
            grow = [r for n in range(sent, probe_from) for r in unit(n)]
            if grow:
                reached = await produce_live(bootstrap, prefix, grow, admin, group, worker,
                                             deadline)  # fmt: skip
                produced += len(grow)
            if not reached or not await until_processed(admin, group, produced, worker, deadline):
                shape.points += [Point(s) for s in sizes if s >= size]
                console.print(f"{name}: history of {size} not reached within {budget_s:.0f}s")
                break
            on_copies = size == sizes[0] and probe_from == 0
            if on_copies:
                before = START - copies * _span(unit, size)
                probe = copies_of(size, range(1, copies + 1), before)
            else:
                probe = [r for n in range(probe_from, size) for r in unit(n)]
            cost = await measure(probe)
            if cost is None:
                shape.points += [Point(s) for s in sizes if s >= size]
                console.print(f"{name}: the probe at {size} did not finish")
                break
            sent = sent if on_copies else size  # the copies are not the history
            (largest, kind), (box, _) = await largest_records(settings.redis_url, namespace)
            shape.points.append(Point(size, cost, largest, kind, box))
            console.print(f"{name}: history {size}: {cost:.2f} ms per event; largest state "
                          f"record {largest:,} B ({kind}), outbox record {box:,} B")  # fmt: skip
        measured = [p for p in shape.points if p.ms_per_event is not None]
        if len(measured) > 1 and sizes[0] <= probe_sessions:
            # New identities again, next to the last size (the machine's speed drifts over a
            # run): copies not used yet, from the time the history reached.
            again = range(copies + 1, 2 * copies + 1)
            shape.again = await measure(copies_of(sizes[0], again, START + _span(unit, sent)))
            if shape.again is not None:
                console.print(f"{name}: history {sizes[0]} again (new copies): "
                              f"{shape.again:.2f} ms per event")  # fmt: skip
    finally:
        await admin.close()
        stop(worker)
        await remove_run(bootstrap, settings.redis_url, prefix, namespace)
        await remove_keys(settings.redis_url, namespace)
    return shape


async def run(
    settings: Settings,
    *,
    sizes: tuple[int, ...] = SIZES,
    shapes: tuple[str, ...] = DEFAULT_SHAPES,
    budget_s: float = BUDGET_S,
    probe_sessions: int = PROBE,
) -> list[Shape]:
    """Every shape in turn; prints one table and returns the figures."""
    check_shapes(shapes)
    console = Console(width=160)
    results = [await run_shape(settings, name, sizes, budget_s, console,
                               probe_sessions=probe_sessions) for name in shapes]  # fmt: skip
    table = Table(title="cost per event as history grows (worker CPU ms per event)")
    table.add_column("shape")
    for size in sizes:
        table.add_column(f"N={size:,}", justify="right")
    table.add_column("largest state record", justify="right")
    table.add_column("largest outbox record", justify="right")
    table.add_column(f"N={sizes[-1]:,} / N={sizes[0]:,}", justify="right")
    for shape in results:
        cells = [f"{p.ms_per_event:.2f}" if p.ms_per_event is not None else "not reached"
                 for p in shape.points]  # fmt: skip
        first = shape.first_cost()
        if cells and shape.again is not None and first is not None:
            cells[0] = f"{first:.2f} ({cells[0]}, {shape.again:.2f})"
        largest = max(((p.largest_record, p.largest_kind) for p in shape.points),
                      default=(0, "-"))  # fmt: skip
        box = max((p.largest_outbox for p in shape.points), default=0)
        ratio = shape.ratio()
        last = shape.points[-1] if shape.points else None
        reached = last is not None and last.ms_per_event is not None
        table.add_row(shape.name, *cells, f"{largest[0]:,} B ({largest[1]})",
                      f"{box:,} B",
                      f"{ratio:.1f}x" if ratio is not None and reached else
                      (f"> {ratio:.1f}x" if ratio is not None else "-"))  # fmt: skip
    console.print(table)
    for name in shapes:
        console.print(f"{name}: {SHAPES[name][0]}")
    console.print(f"N={sizes[0]:,}: new identities, measured before the history grows and again "
                  f"after its last size (the mean of the two, then each)")  # fmt: skip
    console.print(f"target (R15): at most 2x, no record over 65,536 B; each shape's history "
                  f"grown within {budget_s:.0f}s")  # fmt: skip
    return results
