"""`idp bench --history` end to end on short histories: it measures, and cleans up after itself."""

from __future__ import annotations

import subprocess
import time
import uuid

from aiokafka.admin import AIOKafkaAdminClient

from pipeline.ops.admin import ensure_topics, remove_run
from pipeline.ops.settings import Settings
from pipeline.ops.topics import topic_specs
from pipeline.tools import history
from pipeline.tools.demo import end_offsets
from schemas.topics import LOGIN, PAGE_VIEW
from tests.support.kafka import assert_run_removed


async def test_short_histories_are_measured_and_removed(servers: tuple[str, str]) -> None:
    bootstrap, redis_url = servers
    settings = Settings(kafka_bootstrap_servers=bootstrap, redis_url=redis_url)
    shapes = await history.run(settings, sizes=(2, 6), shapes=("laptop", "email"), budget_s=120,
                               probe_sessions=3)  # fmt: skip
    assert [shape.name for shape in shapes] == ["laptop", "email"]
    for shape in shapes:
        assert [point.size for point in shape.points] == [2, 6]
        for point in shape.points:  # reached within the budget, and measured
            assert point.ms_per_event is not None and point.ms_per_event >= 0
            assert point.largest_record > 0
        # laptop: its device record is the largest; email: the e-mail's or a contact's.
        assert shape.points[-1].largest_kind in {"dev", "user", "email", "contact"}
        # The first size again, on new identities, after the last.
        assert shape.again is not None and shape.again >= 0
    for shape in shapes:
        await assert_run_removed(bootstrap, redis_url, f"hist{shape.run}", "history")


async def test_the_history_is_produced_no_further_ahead_than_the_worker_committed(
    servers: tuple[str, str],
) -> None:
    # Sessions 3 h apart and a group that commits nothing: only the records within 20 h of
    # the first (the first seven sessions) may be sent before the producer waits, in vain.
    bootstrap, redis_url = servers
    run = uuid.uuid4().hex[:8]
    prefix = f"lead{run}."
    await ensure_topics(bootstrap, topic_specs(prefix, 4, retention_ms=-1))
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    idle = subprocess.Popen(["sleep", "60"])
    try:
        records = [r for n in range(20) for r in history.devices(n)]  # 2 a session
        sent = await history.produce_live(bootstrap, prefix, records, admin, f"lead-{run}",
                                          idle, time.monotonic() + 3)  # fmt: skip
        assert sent is False  # the deadline came first
        ends = await end_offsets(bootstrap, [prefix + PAGE_VIEW, prefix + LOGIN])
        # The seventh session starts 18 h after the first; the eighth's page view (21 h) waits.
        assert sum(ends.values()) == 7 * 2
    finally:
        idle.kill()
        await admin.close()
        await remove_run(bootstrap, redis_url, prefix, f"lead{run}")
