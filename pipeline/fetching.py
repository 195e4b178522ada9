"""Fetch requests that gather records while the worker keeps up, and ask at once when behind.

Faust's consumer asks the broker with `fetch_min_bytes=1` (answer as soon as one record is
there). A worker that keeps up with a few thousand events per second then sends a fetch
request for every handful of records, and each round (encoding a request for every assigned
partition, decoding the reply, handing it from Faust's consumer thread to the agent) costs
more CPU than the records it brings: a bare Faust agent here spent 61% of a core at 500
events/s and 88% at 4,900/s.

`GatheringFetcher` changes one thing: when the previous fetch brought records and all of
them have been taken, the next request lets the broker gather up to `GATHER_BYTES` for at
most `gather_wait_ms` (`IDP_FETCH_GATHER_MS`, 20 ms by default), so a caught-up worker sends
at most ~50 fetches per second whatever the rate. When the previous fetch came back empty (the
topics are quiet), the request is the library's own (`fetch_min_bytes=1`, a long wait), so an
idle worker does not poll. When records are still waiting to be taken (the worker is behind),
it answers at the first byte too, but waits at most 50 ms (`request_limits`), so a backlog is
read without pauses.

Why 20 ms. Each fetch round costs the process CPU (its request names all 20 input
partitions, and its reply crosses from Faust's consumer thread to the agent), so fewer, fuller
rounds cost less per event, and each millisecond of gathering is latency. With Faust's own
message loop a fetch round cost about a millisecond and that loop about 100 µs per record at a
moderate rate, so session 4 chose 30 ms (takes of 15 ms): offered 5,000 events/s the worker was
47-63% busy instead of 62-74% with 5 ms, and its p99 latency 61-100 ms instead of 48-317 ms.
Since `pipeline.draining` replaced that loop, offered 8,000 events/s (half the worker's
peak), interleaved (`scripts/latency_at_rate.py 8000`; see the README): while the machine was
fast, 10 ms fetches with 5 ms takes kept the worker 52-56% busy with p99 43-48 ms (four
runs), 30 ms / 15 ms 42-49% and 78-95 ms; while it was slow, 10 ms / 5 ms 57-68% and p99
112-150 ms (four runs), 20 ms / 10 ms 48-59% and 63-104 ms (four), 30 ms / 15 ms 43-53% and
80-120 ms (two). 20 ms with takes of 10 ms (`IDP_BATCH_WITHIN_S`) keeps the tail under 100 ms
most often when the machine slows, which is when it matters.

aiokafka builds its `Fetcher` inside `AIOKafkaConsumer.start()` and offers no hook, so
`install` replaces the class that module refers to. The two methods overridden are private;
`tests/unit/test_fetching.py` fails if their shape changes in a new aiokafka release.
"""

from __future__ import annotations

from aiokafka.consumer import consumer as aiokafka_consumer
from aiokafka.consumer.fetcher import Fetcher

GATHER_BYTES = 64 * 1024
WAITING_WAIT_MS = 50  # see request_limits


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


class GatheringFetcher(Fetcher):
    """aiokafka's fetcher, with fetch requests that gather records while the consumer keeps up."""

    gather_wait_ms = 5

    def __init__(self, *args: object, **kwargs: object) -> None:  # noqa: D107
        super().__init__(*args, **kwargs)
        self._patient = (self._fetch_min_bytes, self._fetch_max_wait_ms)
        self._brought_records = False
        self.requests = 0  # fetch requests answered (what the tests count)

    def _get_actions_per_node(self, assignment):  # noqa: ANN001, ANN202 - aiokafka's signature
        self._fetch_min_bytes, self._fetch_max_wait_ms = request_limits(
            brought_records=self._brought_records, records_waiting=bool(self._records),
            gather_wait_ms=self.gather_wait_ms, patient=self._patient,
        )  # fmt: skip
        return super()._get_actions_per_node(assignment)

    async def _proc_fetch_request(self, assignment, node_id, request):  # noqa: ANN001, ANN202
        brought = await super()._proc_fetch_request(assignment, node_id, request)
        self.requests += 1
        self._brought_records = bool(brought)
        return brought


def install(gather_wait_ms: int) -> None:
    """Make every aiokafka consumer started from now on in this process use `GatheringFetcher`.

    With `gather_wait_ms=0` its requests are aiokafka's own (it still counts them).
    """
    GatheringFetcher.gather_wait_ms = max(0, gather_wait_ms)
    aiokafka_consumer.Fetcher = GatheringFetcher
