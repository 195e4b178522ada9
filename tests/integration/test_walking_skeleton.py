"""End to end through the real broker and Redis: page views in, profiles and rejections out."""

from __future__ import annotations

import re

from tests.integration.conftest import KEEP
from tests.support import events as ev
from tests.support.kafka import Pipeline

WS = "ws-a"


async def test_page_view_publishes_a_visitor_profile(pipeline: Pipeline) -> None:
    pipeline.start_worker()
    view = ev.page_view(WS, "device-1", "2026-11-24T10:00:00Z", url="https://x.test/")
    await pipeline.send("telemetry.page_view", view)

    await pipeline.wait_for(lambda out: len(out.of("identity.profiles")) == 1, what="a profile")
    record = pipeline.outputs.of("identity.profiles")[0]
    profile = record.value
    assert record.key.decode() == profile["contact_id"]
    assert re.fullmatch(r"[0-9a-f]{24}", profile["contact_id"])
    assert profile["workspace_id"] == WS
    assert profile["type"] == "visitor"
    assert profile["anonymous_ids"] == ["device-1"]
    assert profile["user_id"] is None
    assert profile["merged_into"] is None
    assert profile["created_at"] == "2026-11-24T10:00:00.000Z"
    assert profile["updated_at"] == "2026-11-24T10:00:00.000Z"


async def test_known_device_browsing_publishes_nothing_new(pipeline: Pipeline) -> None:
    pipeline.start_worker()
    await pipeline.send("telemetry.page_view", ev.page_view(WS, "device-2", "2026-11-24T10:00:00Z"))
    await pipeline.send("telemetry.page_view", ev.page_view(WS, "device-2", "2026-11-24T10:05:00Z"))
    # A later marker event on another device proves the second view was processed before it.
    await pipeline.send(
        "telemetry.page_view", ev.page_view(WS, "device-3", "2026-11-24T10:06:00Z"), key="device-2"
    )  # same key: same partition, processed after the others
    await pipeline.wait_for(
        lambda out: any(
            p["anonymous_ids"] == ["device-3"] for p in out.values("identity.profiles")
        ),
        what="device-3's profile",
    )
    device_2 = [
        p
        for p in pipeline.outputs.values("identity.profiles")
        if p["anonymous_ids"] == ["device-2"]
    ]
    assert len(device_2) == 1


async def test_undecodable_messages_are_rejected_and_the_worker_goes_on(pipeline: Pipeline) -> None:
    pipeline.start_worker()
    await pipeline.send("telemetry.page_view", b"\xff\xfe not utf-8", key="k1")
    await pipeline.send("telemetry.page_view", b'{"event_id": ', key="k2")
    await pipeline.send("telemetry.page_view", b"[1, 2, 3]", key="k3")
    await pipeline.send(
        "telemetry.page_view",
        {"event_id": "no-ws", "anonymous_id": "d", "timestamp": "2026-11-24T10:00:00Z"},
        key="k4",
    )
    await pipeline.send(
        "telemetry.page_view",
        ev.page_view("ws-unknown", "device-9", "2026-11-24T10:00:00Z"),
        key="k5",
    )
    await pipeline.send(
        "telemetry.page_view", ev.page_view(WS, "undefined", "2026-11-24T10:00:00Z"), key="k6"
    )
    await pipeline.send(
        "telemetry.page_view", ev.page_view(WS, "device-ok", "2026-11-24T10:00:00Z"), key="k7"
    )

    await pipeline.wait_for(
        lambda out: len(out.of("identity.rejected")) == 6, what="six rejections"
    )
    await pipeline.wait_for(lambda out: len(out.of("identity.profiles")) == 1, what="one profile")
    rejected = {r.key.decode(): r.value for r in pipeline.outputs.of("identity.rejected")}
    assert rejected["k1"]["reason"] == "invalid_utf8"
    assert rejected["k2"]["reason"] == "invalid_json"
    assert rejected["k3"]["reason"] == "not_an_object"
    assert rejected["k4"]["reason"] == "missing_field"
    assert rejected["k4"]["input_event_id"] == "no-ws"
    assert rejected["k5"]["reason"] == "unknown_workspace"
    assert rejected["k5"]["workspace_id"] == "ws-unknown"
    assert rejected["k6"]["reason"] == "blocked_identifier"
    assert rejected["k1"]["original"] == "\ufffd\ufffd not utf-8"
    for value in rejected.values():
        assert value["source_topic"] == pipeline.prefix + "telemetry.page_view"  # as read
        assert value["source_offset"] >= 0
    assert len({value["event_id"] for value in rejected.values()}) == 6
    assert pipeline.outputs.latest_profiles().popitem()[1]["anonymous_ids"] == ["device-ok"]


async def test_contact_ids_agree_across_independent_pipelines(
    pipeline: Pipeline, servers, secrets_file, tmp_path
) -> None:
    """Same workspace and device, separate state and topics: the same contact_id (R12)."""
    import uuid

    from pipeline.ops.admin import ensure_topics
    from pipeline.ops.topics import topic_specs

    run = uuid.uuid4().hex[:10]
    other = Pipeline(
        bootstrap=servers[0],
        redis_url=servers[1],
        prefix=f"t{run}.",
        app_id=f"idp-{run}",
        namespace=f"t{run}",
        secrets_file=secrets_file,
        log_dir=tmp_path / "other",
    )
    (tmp_path / "other").mkdir()
    await ensure_topics(servers[0], topic_specs(other.prefix, 4, retention_ms=KEEP))
    await other.start()
    try:
        for pipe in (pipeline, other):
            pipe.start_worker()
            await pipe.send(
                "telemetry.page_view", ev.page_view(WS, "shared-device", "2026-11-24T10:00:00Z")
            )
        for pipe in (pipeline, other):
            await pipe.wait_for(lambda out: len(out.of("identity.profiles")) == 1, what="a profile")
        first = pipeline.outputs.values("identity.profiles")[0]
        second = other.outputs.values("identity.profiles")[0]
        assert first == second
    finally:
        await other.close()
