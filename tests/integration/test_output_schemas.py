"""Every record the worker publishes conforms to schemas/json (checked by `jsonschema`).

A generated journey, junk and invalid inputs and a tombstone-making late login go through the
real broker and a worker subprocess; every record on every output topic is then checked, none
skipped. Inputs are produced with their event time as the Kafka record's timestamp, so that no
event is refused for lateness (R14).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import orjson
from aiokafka import AIOKafkaProducer

from pipeline.core.oracle import Oracle
from pipeline.core.rules import CoreConfig
from pipeline.worker.codec import encode
from tests.integration.conftest import SECRETS
from tests.support.kafka import OutputLog, Pipeline
from tests.support.wire_schemas import (
    Input,
    check_outputs,
    invalid_inputs,
    journey_inputs,
    late_login,
    run_like_the_worker,
)

WS = "ws-a"
CONFIG = CoreConfig(secrets={ws: (s.encode(),) for ws, s in SECRETS.items()})


async def produce(pipeline: Pipeline, inputs: list[Input]) -> None:
    """Produce the inputs in order, each stamped with its event time."""
    producer = AIOKafkaProducer(bootstrap_servers=pipeline.bootstrap, acks="all")
    await producer.start()
    try:
        for sent in inputs:
            await producer.send(pipeline.prefix + sent.topic, sent.value, key=sent.key,
                                timestamp_ms=sent.at_ms)  # fmt: skip
        await producer.flush()
    finally:
        await producer.stop()


async def test_every_record_on_every_output_topic_conforms_to_its_schema(
    pipeline: Pipeline,
) -> None:
    # Near the wall clock: the record timestamps must be within the topics' retention too.
    start = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=4)
    later = start + timedelta(hours=3)  # after the whole journey, still in the past
    inputs = journey_inputs(SECRETS, start) + invalid_inputs(WS, SECRETS[WS], later)
    view, login, tombstoned = late_login(WS, SECRETS[WS], later)
    expected = run_like_the_worker(Oracle(CONFIG), [*inputs, view, login])
    profiles: dict[str, dict] = {}
    for emit in expected:
        if emit.topic == "identity.profiles":
            profiles[emit.key] = None if emit.value is None else orjson.loads(encode(emit.value))
    final = {cid: profile for cid, profile in profiles.items() if profile is not None}
    announced = {topic: {e.value.event_id for e in expected if e.topic == topic}
                 for topic in ("identity.merged", "identity.shutdown")}  # fmt: skip
    rejections = sum(sent.reason is not None for sent in inputs)
    assert tombstoned not in final and rejections > 10 and all(announced.values())

    pipeline.start_worker()
    await produce(pipeline, [*inputs, view])
    await pipeline.wait_for(
        lambda out: tombstoned in out.latest_profiles(),
        timeout=120,
        what="the late-login device's visitor",
    )
    await produce(pipeline, [login])  # read after the page view it predates

    def complete(out: OutputLog) -> bool:
        return (
            out.latest_profiles() == final
            and all(ids <= {m["event_id"] for m in out.values(t)} for t, ids in announced.items())
            and len({r["event_id"] for r in out.values("identity.rejected")}) == rejections
        )

    await pipeline.wait_for(
        complete, timeout=120, what="the journey's profiles, merges, shutdowns and rejections"
    )
    records = list(pipeline.outputs.records)
    counts = check_outputs((r.topic, r.key, r.value) for r in records)
    assert set(counts) >= {"identity.merged", "identity.shutdown", "identity.profiles",
                           "identity.rejected"}  # fmt: skip
    tombstones = [r.key for r in records if r.topic == "identity.profiles" and r.value is None]
    assert tombstoned.encode() in tombstones
    originals = [r["original"] for r in pipeline.outputs.values("identity.rejected")]
    assert max(map(len, originals)) == 4096  # the long and the huge inputs, truncated
