"""A mixed stream of valid and hostile input through the real broker: the accounting holds.

Every input ends in exactly one outcome: in = applied + unchanged + rejected, every valid event
is accepted (applied or unchanged), and each hostile message is rejected with its own reason,
worked out here by hand for each kind. The worker keeps running throughout.
"""

from __future__ import annotations

import asyncio
import os
import random
import socket
import urllib.request
from collections import Counter

import orjson
from prometheus_client.parser import text_string_to_metric_families

from pipeline.tools import journey
from tests.integration.conftest import SECRETS, TOKEN_EXP
from tests.support import events as ev
from tests.support.kafka import Pipeline

WS = "ws-a"
SECRET = SECRETS[WS]
REPEATS = int(os.environ.get("IDP_SOAK_REPEATS", "10"))  # hostile messages of each kind
PEOPLE = int(os.environ.get("IDP_SOAK_PEOPLE", "300"))  # valid journeys (about 10 events each)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def hostile(i: int) -> list[tuple[str, str, bytes]]:
    """(expected reason, topic, value) for one of each kind of hostile input."""
    ts = "2026-11-24T10:00:00Z"

    def j(value: dict) -> bytes:
        return orjson.dumps(value)

    pv = ev.page_view(WS, f"h-dev-{i}", ts)
    return [
        ("invalid_utf8", "telemetry.page_view", b"\xff\xfe{}"),
        ("invalid_json", "telemetry.page_view", b'{"event_id":'),
        ("not_an_object", "telemetry.chat_start", b"[1, 2, 3]"),
        ("too_large", "telemetry.page_view", b'{"x": "' + b"a" * 70_000 + b'"}'),
        ("missing_field", "telemetry.page_view", j({k: v for k, v in pv.items() if k != "workspace_id"})),
        ("wrong_type", "telemetry.page_view", j({**pv, "anonymous_id": 42})),
        ("invalid_timestamp", "telemetry.page_view", j({**pv, "timestamp": "yesterday"})),
        ("timestamp_out_of_range", "telemetry.page_view", j({**pv, "timestamp": "1999-12-31T23:59:59Z"})),
        ("unknown_workspace", "telemetry.page_view", j({**pv, "workspace_id": "ws-nope"})),
        ("blocked_identifier", "telemetry.page_view", j({**pv, "anonymous_id": '"Undefined"'})),
        ("invalid_identifier", "telemetry.page_view", j({**pv, "anonymous_id": "dev\u0000ice"})),
        ("wrong_topic", "telemetry.login", j(ev.chat_start(WS, f"h-dev-{i}", ts, "c"))),
        ("unverified_identity", "telemetry.login", j({**ev.login(WS, f"h-dev-{i}", ts, "victim", SECRET), "user_hash": "0" * 64})),
        ("invalid_token", "telemetry.login", j(ev.login(WS, f"h-dev-{i}", ts, "victim", SECRET, identity_token=ev.jwt_hs256(
            SECRET, {"user_id": "victim", "exp": TOKEN_EXP}, header={"alg": "none"})))),
        ("expired_token", "telemetry.signup", j(ev.signup(WS, f"h-dev-{i}", ts, "victim", SECRET, identity_token=ev.jwt_hs256(
            SECRET, {"user_id": "victim", "exp": 1700000000})))),
    ]  # fmt: skip


def scrape(port: int) -> dict[str, float]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    values: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name.endswith("_total"):
                label = sample.labels.get("reason") or sample.labels.get("topic") or ""
                values[f"{sample.name}:{label}"] = sample.value
    return values


def total(values: dict[str, float], name: str) -> float:
    return sum(v for k, v in values.items() if k.startswith(name + ":"))


async def test_mixed_valid_and_hostile_input_is_all_accounted_for(pipeline: Pipeline) -> None:
    port = free_port()
    worker = pipeline.start_worker({"IDP_METRICS_PORT": str(port)})
    valid = journey.generate({WS: SECRET}, people=PEOPLE, seed=5, junk_ratio=0)
    messages = [(r.topic, orjson.dumps(r.value), r.key.encode()) for r in valid]
    expected: Counter[str] = Counter()
    for i in range(REPEATS):
        for reason, topic, value in hostile(i):
            messages.append((topic, value, f"hostile-{i}".encode()))
            expected[reason] += 1
    # An event_id reused on the same device with other content (an earlier time, which would
    # change its state), after the original (same topic and key: in order). R12: the same
    # event_id on another device is another event.
    for i in range(REPEATS):
        original = ev.page_view(WS, f"reuse-{i}", "2026-11-24T10:00:00Z")
        messages.append(("telemetry.page_view", orjson.dumps(original), b"reuse"))
        messages.append(
            (
                "telemetry.page_view",
                orjson.dumps({**original, "timestamp": "2026-11-24T09:00:00Z"}),
                b"reuse",
            )
        )
        expected["event_id_reused"] += 1
    valid_count = len(valid) + REPEATS
    random.Random(11).shuffle(messages[: len(valid)])  # the journey itself, out of order
    await pipeline.send_many(messages)

    async def accounted() -> dict[str, float]:
        for _ in range(max(1200, len(messages) // 10)):
            try:
                values = await asyncio.to_thread(scrape, port)
            except OSError:
                values = {}
            seen = total(values, "idp_events_in_total")
            done = sum(values.get(f"idp_events_{k}_total:", 0) for k in ("applied", "unchanged"))
            done += total(values, "idp_events_rejected_total")
            if seen == len(messages) and done == seen:
                return values
            assert worker.poll() is None, pipeline.worker_log()
            await asyncio.sleep(0.1)
        raise AssertionError(f"not all accounted for: {values}\n{pipeline.worker_log()}")

    values = await accounted()
    print(
        f"soak: {len(messages)} in; valid {valid_count}; rejected {sum(expected.values())}: {dict(expected)}"
    )
    rejected = {
        k.split(":", 1)[1]: int(v)
        for k, v in values.items()
        if k.startswith("idp_events_rejected_total:")
    }
    assert rejected == dict(expected)
    accepted = values["idp_events_applied_total:"] + values["idp_events_unchanged_total:"]
    assert accepted == valid_count  # every valid event applied (or, if it changed nothing, kept)
    assert worker.poll() is None  # still running
    await pipeline.wait_for(lambda out: len(out.of("identity.rejected")) == sum(expected.values()),
                            what="one identity.rejected record per hostile input")  # fmt: skip
