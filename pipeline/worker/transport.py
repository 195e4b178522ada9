"""The worker's Kafka transport for Faust: aiokafka's, with the worker's two consumer changes.

Faust loads transports by the broker URL's scheme from the `faust.transports` entry point
(`TRANSPORTS.include_setuptools_namespace`); pyproject.toml registers this one as `idp`, so
the worker's app is built with `broker="idp://host:port"` and nothing of Faust or aiokafka is
replaced process-wide. Its consumer drains fetches with `draining.drain_messages` (Faust's
message loop without four tasks per record) and reads with `fetching.GatheringConsumer`
(fetches that gather while the worker keeps up). Each change is used only when the installed
release still has the shape it was written for (`draining.compatible`,
`fetching.compatible`); otherwise the worker logs a warning and runs Faust's or aiokafka's own.
The bare Faust agent of the benchmark keeps `kafka://`: Faust's own transport.
"""

from __future__ import annotations

import logging
from typing import Any

from faust.transport.drivers import aiokafka as driver

from pipeline.worker import draining, fetching

logger = logging.getLogger(__name__)

SCHEME = "idp"


class ConsumerThread(driver.AIOKafkaConsumerThread):
    """Faust's aiokafka consumer thread, building the worker's gathering consumer."""

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
