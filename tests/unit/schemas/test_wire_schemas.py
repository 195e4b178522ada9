"""A journey's every input and output against the JSON Schema files, by an independent validator.

The outputs are those of the pure core (the oracle) plus the rejections the codec records,
encoded as the worker sends them (`pipeline.worker.codec.encode_output`).
"""

from __future__ import annotations

from datetime import timedelta

import orjson
import pytest

from pipeline.core.model import Emit
from pipeline.core.oracle import Oracle
from pipeline.core.rules import CoreConfig
from pipeline.tools import journey
from pipeline.worker.codec import encode_output
from tests.support.wire_schemas import (
    Input,
    check_outputs,
    invalid_inputs,
    journey_inputs,
    late_login,
    run_like_the_worker,
    schema_errors,
    validator,
)

WS = "ws-a"
SECRETS = {WS: "secret-a-0123456789abcdef0123456789", "ws-b": "secret-b-9876543210fedcba9876543210"}
CONFIG = CoreConfig(secrets={ws: (s.encode(),) for ws, s in SECRETS.items()})
LATER = journey.START + timedelta(hours=3)  # after the whole journey


@pytest.fixture(scope="module")
def scenario() -> tuple[list[Input], list[Emit], str]:
    inputs = journey_inputs(SECRETS, journey.START)
    inputs += invalid_inputs(WS, SECRETS[WS], LATER)
    view, login, tombstoned = late_login(WS, SECRETS[WS], LATER)
    outputs = run_like_the_worker(Oracle(CONFIG), [*inputs, view, login])
    return [*inputs, view, login], outputs, tombstoned


def test_every_output_of_a_journey_conforms_to_its_schema(scenario) -> None:
    inputs, outputs, tombstoned = scenario
    counts = check_outputs([encode_output(emit) for emit in outputs])
    # Every output topic is exercised: merges (R6), shutdowns (R10), profiles, rejections.
    assert set(counts) == {"identity.merged", "identity.shutdown", "identity.profiles",
                           "identity.rejected"}  # fmt: skip
    # Each input that cannot be applied yields exactly one rejection (SPEC §3).
    rejected = [emit.value for emit in outputs if emit.topic == "identity.rejected"]
    assert len(rejected) == sum(sent.reason is not None for sent in inputs) > 10
    # The late login tombstones the visitor its device never was (R6, R11).
    tombstones = [e.key for e in outputs if e.topic == "identity.profiles" and e.value is None]
    assert tombstones == [tombstoned]


def test_rejections_carry_the_reasons_the_spec_names_and_a_bounded_original(scenario) -> None:
    _, outputs, _ = scenario
    rejected = {e.value.input_event_id: e.value for e in outputs if e.topic == "identity.rejected"}
    assert rejected["bad-wronghash"].reason == "unverified_identity"  # R9
    assert rejected["bad-ws"].reason == "unknown_workspace"  # SPEC §4
    assert len(rejected["bad-long"].original) == 4096  # truncated, and within the schema's bound
    assert validator("identity.rejected").schema["properties"]["original"]["maxLength"] == 4096


def test_a_journeys_inputs_conform_to_the_input_schemas(scenario) -> None:
    inputs, _, _ = scenario
    checked = 0
    for sent in inputs:
        if sent.reason is None:  # a valid event
            assert schema_errors(sent.topic, orjson.loads(sent.value)) == [], sent.value
            checked += 1
    assert checked > 500


@pytest.mark.parametrize("event_id", ["bad-noproof", "bad-nochat", "bad-time"])
def test_the_input_schemas_refuse_inputs_the_codec_refuses_for_their_shape(event_id: str) -> None:
    """A login without proof, a chat without conversation_id, a logout stamped "noon"."""
    (sent,) = [s for s in invalid_inputs(WS, "s", LATER) if f'"{event_id}"'.encode() in s.value]
    assert schema_errors(sent.topic, orjson.loads(sent.value))


def test_the_output_check_refuses_what_breaks_the_contract(scenario) -> None:
    _, outputs, _ = scenario
    profile = next(e for e in outputs if e.topic == "identity.profiles" and e.value is not None)
    _, key, value = encode_output(profile)
    good = ("identity.profiles", key, value)
    wrong = [
        ("identity.profiles", key, orjson.dumps({**orjson.loads(value), "created_at": 1})),
        ("identity.profiles", b"someone-else", value),  # not keyed by its contact_id
        ("identity.profiles", b"never-published", None),  # a tombstone of no contact
        ("identity.merged", key, None),  # a tombstone off the profiles topic
        ("identity.unknown", key, value),  # a topic without a schema
    ]
    check_outputs([good, ("identity.profiles", key, None)])
    for record in wrong:
        with pytest.raises(AssertionError):
            check_outputs([good, record])
