"""The Grafana dashboard queries only metrics a live worker exports (scraped from /metrics)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import aiohttp
import orjson
from prometheus_client.parser import text_string_to_metric_families

from tests.integration.test_http import WS, Api, free_port
from tests.support import events as ev
from tests.support.kafka import Pipeline

DASHBOARD = Path(__file__).resolve().parents[2] / "deploy" / "grafana" / "identity-pipeline.json"
# What PromQL spells that is not a metric: aggregations' modifiers and binary operators.
KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "and", "or",
            "unless", "bool", "offset"}  # fmt: skip


def expressions(dashboard: dict) -> list[str]:
    return [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]


def metric_names(expr: str) -> set[str]:
    """The series an expression selects: identifiers that are not functions, labels or keywords."""
    bare = re.sub(r"\{[^}]*\}", "", expr)  # label matchers
    bare = re.sub(r"\b(by|without|on|ignoring)\s*\([^)]*\)", "", bare)  # grouping labels
    bare = re.sub(r"\[[^\]]*\]", "", bare)  # range durations
    names = set()
    for match in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*", bare):
        name = match.group()
        if name in KEYWORDS or bare[match.end() :].lstrip().startswith("("):
            continue  # a keyword or a function
        names.add(name)
    return names


def exported(text: str) -> set[str]:
    """Every sample name the scrape declares: a family's samples, present or not yet."""
    names = set()
    for family in text_string_to_metric_families(text):
        suffixes = {"counter": ("_total", "_created"), "gauge": ("",),
                    "histogram": ("_bucket", "_sum", "_count", "_created"),
                    "summary": ("", "_sum", "_count", "_created")}.get(family.type, ("",))  # fmt: skip
        names |= {family.name + suffix for suffix in suffixes}
        names |= {sample.name for sample in family.samples}
    return names


def test_the_name_extraction() -> None:
    expr = 'histogram_quantile(0.99, sum by (le, op) (rate(idp_x_bucket{op="read"}[5m]))) / idp_y'
    assert metric_names(expr) == {"idp_x_bucket", "idp_y"}


async def test_every_dashboard_query_names_an_exported_metric(pipeline: Pipeline) -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = expressions(dashboard)
    assert exprs and all(metric_names(e) for e in exprs)
    port = free_port()
    pipeline.start_worker({"IDP_HTTP_PORT": str(port)})
    journey = [
        ("telemetry.page_view", ev.page_view(WS, "m-1", "2026-11-24T10:00:00Z")),
        ("telemetry.chat_start", ev.chat_start(WS, "m-1", "2026-11-24T10:01:00Z", "m-conv")),
        ("telemetry.page_view", ev.page_view(WS, "undefined", "2026-11-24T10:02:00Z")),  # R3
    ]
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
        api = Api(session, port)
        await api.until("/readyz", 200, timeout=60, log=pipeline.worker_log)
        await pipeline.send_many([(topic, orjson.dumps(value), value["anonymous_id"].encode())
                                  for topic, value in journey])  # fmt: skip
        await api.quiet(len(journey), timeout=60, log=pipeline.worker_log)

        async def lag_sampled() -> bool:
            return "idp_consumer_lag{" in (await api.get("/metrics"))[1]

        await api.until_true(lag_sampled, timeout=30, log=pipeline.worker_log)
        text = (await api.get("/metrics"))[1]
    names = exported(text)
    for expr in exprs:
        missing = metric_names(expr) - names
        assert not missing, f"{expr!r} names {sorted(missing)}, which /metrics does not export"
    # The series an operator watches first carry samples after a journey.
    for sample in ("idp_events_in_total", "idp_events_rejected_total", "idp_consumer_lag",
                   "idp_batch_events_bucket", "idp_redis_round_trip_seconds_bucket",
                   "idp_outbox_records_found", "idp_outbox_in_flight"):  # fmt: skip
        assert re.search(rf"^{sample}[{{ ]", text, re.M), sample
