"""`idp bench --history` end to end on short histories: it measures, and cleans up after itself."""

from __future__ import annotations

from pipeline.ops.settings import Settings
from pipeline.tools import history
from tests.support.kafka import assert_run_removed


async def test_short_histories_are_measured_and_removed(servers: tuple[str, str]) -> None:
    bootstrap, redis_url = servers
    settings = Settings(kafka_bootstrap_servers=bootstrap, redis_url=redis_url)
    shapes = await history.run(settings, sizes=(2, 6), shapes=("laptop", "email"), budget_s=120)
    assert [shape.name for shape in shapes] == ["laptop", "email"]
    for shape in shapes:
        assert [point.size for point in shape.points] == [2, 6]
        for point in shape.points:  # reached within the budget, and measured
            assert point.ms_per_event is not None and point.ms_per_event >= 0
            assert point.largest_record > 0
        # laptop: its device record is the largest; email: the e-mail's or a contact's.
        assert shape.points[-1].largest_kind in {"dev", "user", "email", "contact"}
    for shape in shapes:
        await assert_run_removed(bootstrap, redis_url, f"hist{shape.run}", "history")
