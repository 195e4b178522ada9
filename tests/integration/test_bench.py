"""`idp bench` end to end on a small journey: it measures, and it cleans up after itself."""

from __future__ import annotations

import os

from pipeline.ops.settings import Settings
from pipeline.tools import bench
from tests.support.kafka import assert_run_removed

# Enough for several offset commits (0.2 s apart) at the bare agent's rate: a rate needs two.
EVENTS = 40_000


async def test_a_small_benchmark_reports_rates_and_latencies(servers: tuple[str, str]) -> None:
    bootstrap, redis_url = servers
    settings = Settings(kafka_bootstrap_servers=bootstrap, redis_url=redis_url)
    figures = await bench.run(settings, events=EVENTS, latency_seconds=3, seed=5, passes=1)
    assert figures["events"] == EVENTS == sum(figures["mix"].values())
    # The steady mix (pipeline.tools.journey.STEADY_MIX): 96.5% page views.
    assert 0.94 < figures["mix"]["telemetry.page_view"] / EVENTS < 0.99
    for name in ("bare", "consumer", "worker"):
        assert len(figures[f"{name}_passes_events_per_s"]) == 1
        assert figures[f"{name}_events_per_s"] == figures[f"{name}_passes_events_per_s"][0] > 0
    # Logins, signups, logouts and new devices were offered and their outputs timed: each
    # latency is that of an output read within the run (3 s of offering, a few to drain).
    assert figures["latency_samples"] > 0
    for quantile in (50, 90, 99):
        assert 0 < figures["latency_ms_record"][quantile] < 60_000
    # The worker was running and consuming CPU while the events were offered (no more than
    # the machine has).
    assert 0 < figures["latency_worker_cpu"] <= (os.cpu_count() or 1)
    assert figures["latency_worker_us_per_event"] > 0
    # Every kind of state record was measured, then removed with the run's topics.
    assert {"dev", "contact", "evt"} <= set(figures["redis_keys"])
    await assert_run_removed(bootstrap, redis_url, f"bench{figures['run']}", "bench")
