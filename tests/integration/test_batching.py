"""A worker reading a backlog gathers it into big batches; nothing is lost or counted twice."""

from __future__ import annotations

import asyncio
import urllib.request

import orjson
from prometheus_client.parser import text_string_to_metric_families

from pipeline.ops.admin import remove_keys
from tests.integration.test_hostile_soak import free_port
from tests.support import events as ev
from tests.support.kafka import Pipeline

DEVICES = 500
VIEWS = 12  # per device: 6,000 page views in all


def batch_figures(port: int) -> dict[str, float]:
    """The worker's counters and its batch-size histogram (count and sum)."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    values: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name in ("idp_batch_events_count", "idp_batch_events_sum",
                               "idp_events_applied_total", "idp_events_unchanged_total"):  # fmt: skip
                values[sample.name] = sample.value
    return values


async def drained(pipeline: Pipeline, port: int, total: int) -> dict[str, float]:
    values: dict[str, float] = {}
    for _ in range(1200):
        try:
            values = await asyncio.to_thread(batch_figures, port)
        except OSError:
            values = {}
        done = values.get("idp_events_applied_total", 0) + values.get(
            "idp_events_unchanged_total", 0
        )
        if done >= total:
            return values
        await asyncio.sleep(0.1)
    raise AssertionError(f"backlog not drained: {values}\n{pipeline.worker_log()}")


async def test_a_backlog_is_read_in_gathered_batches_and_each_event_is_processed_once(
    pipeline: Pipeline,
) -> None:
    messages = [
        ("telemetry.page_view",
         orjson.dumps(ev.page_view("ws-a", f"dev-{d}", f"2026-11-24T10:{v:02d}:{d % 60:02d}Z")),
         f"dev-{d}".encode())
        for v in range(VIEWS) for d in range(DEVICES)
    ]  # fmt: skip
    total = len(messages)
    await pipeline.send_many(messages)  # a backlog before any worker starts
    ports = free_port(), free_port()
    # Short takes, so that what a take holds is far from a full batch (with the default 15 ms
    # a take held 180-220 events here, against 430-550 gathered: too close to tell apart).
    takes = {"IDP_BATCH_WITHIN_S": "0.005"}
    pipeline.start_worker({**takes, "IDP_METRICS_PORT": str(ports[0])})
    # The same backlog through a second worker (its own group and state) that never gathers.
    pipeline.start_worker({**takes, "IDP_METRICS_PORT": str(ports[1]), "IDP_BATCH_GATHER_S": "0",
                           "IDP_APP_ID": pipeline.app_id + "-eager",
                           "IDP_STATE_NAMESPACE": pipeline.namespace + "-eager"})  # fmt: skip
    try:
        gathering = await drained(pipeline, ports[0], total)
        eager = await drained(pipeline, ports[1], total)
    finally:
        pipeline.stop_workers()
        await remove_keys(pipeline.redis_url, pipeline.namespace + "-eager")
    for figures in (gathering, eager):
        # Each event processed exactly once: in one batch, and applied (a device's first page
        # view) or unchanged (the other eleven).
        assert figures["idp_batch_events_sum"] == total
        assert figures["idp_events_applied_total"] == DEVICES
        assert figures["idp_events_unchanged_total"] == total - DEVICES
    mean = {name: f["idp_batch_events_sum"] / f["idp_batch_events_count"]
            for name, f in (("gathering", gathering), ("eager", eager))}  # fmt: skip
    print(f"mean batch: {mean}")
    # A take of 5 ms holds about a hundred events here; gathered batches 500 or more.
    assert mean["gathering"] > 2 * mean["eager"], mean
