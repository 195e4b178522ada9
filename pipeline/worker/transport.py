"""The worker's Kafka transport for Faust: aiokafka's, with the worker's two consumer changes.

Faust loads transports by the broker URL's scheme from the `faust.transports` entry point
(`TRANSPORTS.include_setuptools_namespace`); pyproject.toml registers this one as `idp`, so
the worker's app is built with `broker="idp://host:port"` and nothing of Faust or aiokafka is
replaced process-wide. Its consumer drains fetches with `draining.drain_messages` (Faust's
message loop without four tasks per record), reads with `fetching.GatheringConsumer`
(fetches that gather while the worker keeps up), and after a rebalance seeks partitions never
committed as well (`seek_to_committed`). Each change is used only when the installed
release still has the shape it was written for (`draining.compatible`,
`fetching.compatible`); otherwise the worker logs a warning and runs Faust's or aiokafka's own.
The bare Faust agent of the benchmark keeps `kafka://`: Faust's own transport.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.consumer.fetcher import OffsetResetStrategy
from faust.transport.drivers import aiokafka as driver

from pipeline.worker import draining, fetching

logger = logging.getLogger(__name__)

SCHEME = "idp"


async def seek_to_committed(consumer: AIOKafkaConsumer) -> Mapping[TopicPartition, int | None]:
    """Seek every assigned partition to its committed offset, those without one included.

    Faust seeks to the committed offsets after each rebalance, and drops what it had fetched
    and not processed: those records are read again from there. aiokafka's `seek_to_committed`
    moves only partitions committed past offset 0; one never committed keeps its position, past
    the records dropped, and they are never read (a partition whose first records arrived just
    before a rebalance loses them). Here such a partition is reset as the consumer's
    `auto_offset_reset` says (the worker's: earliest), and one committed at 0 goes to 0.
    """
    committed = await consumer.seek_to_committed()
    for tp, offset in committed.items():
        if offset == 0:
            consumer.seek(tp, 0)
    unset = [tp for tp, offset in committed.items() if offset is None or offset < 0]
    strategy = consumer._fetcher._default_reset_strategy
    if unset and strategy == OffsetResetStrategy.EARLIEST:
        await consumer.seek_to_beginning(*unset)
    elif unset and strategy == OffsetResetStrategy.LATEST:
        await consumer.seek_to_end(*unset)
    return committed


class ConsumerThread(driver.AIOKafkaConsumerThread):
    """Faust's aiokafka consumer thread, building the worker's gathering consumer."""

    async def seek_to_committed(self) -> Mapping[Any, int]:
        """Faust's seek after a rebalance, moving partitions never committed too."""
        return await self.call_thread(seek_to_committed, self._ensure_consumer())

    def _create_worker_consumer(self, transport: Any) -> Any:  # Faust's types
        consumer = super()._create_worker_consumer(transport)
        problem = fetching.compatible()
        if problem is None:
            consumer.__class__ = fetching.GatheringConsumer  # same state, one method more
        else:
            logger.warning("%s: fetching with aiokafka's own fetcher", problem)
        return consumer


class Consumer(driver.Consumer):
    """Faust's aiokafka consumer, with the worker's message loop when Faust's is the known one."""

    def _new_consumer_thread(self) -> ConsumerThread:
        return ConsumerThread(self, loop=self.loop, beacon=self.beacon)


if (_problem := draining.compatible()) is None:
    Consumer._drain_messages = draining.drain_messages  # type: ignore[assignment]
else:  # pragma: no cover - another Faust release
    logger.warning("%s: draining with Faust's own message loop", _problem)


class Transport(driver.Transport):
    """Faust's aiokafka transport with `Consumer`."""

    Consumer = Consumer
