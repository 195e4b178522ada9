"""Fuzzing the decoder and the pure core: every input ends in a recorded outcome, never a crash.

IDP_FUZZ_EXAMPLES raises the number of cases (CI runs the default, thousands in all).
"""

from __future__ import annotations

import os

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline.core.model import Emit, Transition
from pipeline.core.oracle import Oracle
from pipeline.core.rules import CoreConfig
from pipeline.worker.codec import Item, Source, decode
from schemas.topics import INPUT_TOPICS
from tests.support import events as ev

EXAMPLES = int(os.environ.get("IDP_FUZZ_EXAMPLES", "1000"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
pytestmark = pytest.mark.timeout(max(300, EXAMPLES // 20))  # a big run with the flag takes long
SECRET = "fuzz-secret-0123456789abcdef0123456"
CONFIG = CoreConfig(secrets={"ws": (SECRET.encode(),)})

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.floats(allow_nan=False)
    | st.text(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)
identifiers = st.sampled_from(["d1", " d1 ", "undefined", "NULL", '"null"', "0", "--", "", "ab\x00c",
                               "x" * 300, "ünïcødé", "u1", "u2", "👀"]) | st.text(max_size=20)  # fmt: skip
stamps = st.sampled_from(["2026-11-24T10:00:00Z", "2026-11-24T10:00:00+05:30", "2026-11-24", "now",
                          "1970-01-01T00:00:00Z", "9999-12-31T23:59:59Z"]) | st.integers(-(2**63), 2**63 - 1)  # fmt: skip


@st.composite
def near_valid(draw: st.DrawFn) -> tuple[str, dict]:
    """An event of some topic with fields plausible, wrong or missing."""
    topic = draw(st.sampled_from(INPUT_TOPICS))
    event = {"event_id": draw(identifiers), "workspace_id": draw(st.sampled_from(["ws", "other", ""])),
             "anonymous_id": draw(identifiers), "timestamp": draw(stamps)}  # fmt: skip
    user = draw(identifiers)
    optional = {
        "user_id": user,
        "user_hash": draw(st.sampled_from([ev.user_hash(SECRET, user), "0" * 64, "zz"])),
        "identity_token": draw(
            st.sampled_from(
                [
                    ev.jwt_hs256(SECRET, {"user_id": user, "exp": 1795600000, "email": "a@b.co"}),
                    ev.jwt_hs256(SECRET, {"user_id": user, "exp": "soon"}),
                    ev.jwt_hs256(SECRET, {"user_id": [user], "exp": 1795600000}),
                    ev.jwt_hs256(
                        SECRET, {"user_id": user, "exp": 1795600000}, header={"alg": "none"}
                    ),
                    ev.jwt_hs256(SECRET, {"user_id": user, "exp": 1795600000}, header={}),
                    "a.b.c",
                    "",
                    "....",
                ]
            )
        ),
        "conversation_id": draw(identifiers),
        "email": draw(st.sampled_from(["a@b.co", "A@B.CO ", "not-an-email", "email", "", "x@y"])),
        "name": draw(st.text(max_size=10)),
        "city": draw(st.none() | st.text(max_size=10)),
        "created_at": draw(stamps),
    }
    for key, value in optional.items():
        if draw(st.booleans()):
            event[key] = value
    for key in list(event):
        if draw(st.integers(0, 9)) == 0:
            event[key] = draw(json_values)  # a wrongly typed field
        elif draw(st.integers(0, 12)) == 0:
            del event[key]
    return topic, event


def outcome_of(source: Source, oracle: Oracle) -> str:
    decoded = decode(source)
    if isinstance(decoded, Emit):
        assert decoded.topic == "identity.rejected" and decoded.value.reason
        return "rejected"
    assert isinstance(decoded, Item)
    result = oracle.apply(decoded.event, record_ms=source.timestamp_ms)
    assert isinstance(result, Transition)
    return result.outcome.kind


@FUZZ
@given(st.sampled_from(INPUT_TOPICS), st.binary(max_size=200))
def test_random_bytes_are_rejected_or_applied(topic: str, value: bytes) -> None:
    outcome_of(Source(topic, 0, 0, None, value), Oracle(CONFIG))


@FUZZ
@given(st.sampled_from(INPUT_TOPICS), json_values)
def test_arbitrary_json_is_rejected_or_applied(topic: str, value: object) -> None:
    outcome_of(Source(topic, 0, 0, None, orjson.dumps(value)), Oracle(CONFIG))


@FUZZ
@given(st.lists(near_valid(), min_size=1, max_size=8), st.none() | st.integers(0, 2**45))
def test_near_valid_events_always_end_in_a_recorded_outcome(
    events: list, record_ms: int | None
) -> None:
    oracle = Oracle(CONFIG)
    for offset, (topic, event) in enumerate(events):
        source = Source(topic, 0, offset, None, orjson.dumps(event), record_ms)
        assert outcome_of(source, oracle) in {"rejected", "refused", "applied", "unchanged"}
