"""Hypothesis laws of event time (R11, R12, R14): records with their Kafka timestamps.

Within the lateness bounds any arrival order gives the same final profiles; records beyond
them are refused (`too_late`, `timestamp_out_of_range`) whatever the order and change nothing;
replaying the same records gives the same answer.
"""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from pipeline.core.model import Refusal
from pipeline.core.oracle import Oracle
from schemas.time import parse_timestamp, to_epoch_ms
from tests.support import events as ev
from tests.unit.core.test_identity_laws import CONFIG, LAW, _renumber, an_event

SESSION = ("login", "signup", "logout")
# How far after its event a record is written (negative: the event is stamped ahead of it).
# Around the bounds of R14: 5 min for session events, a day for page views and chats, and
# 60 s (session) or 5 min (activity) ahead.
LAGS_MS = [0, 0, 0, 1_000, 299_000, 300_001, 3_600_000, 86_400_001, -59_000, -61_000, -300_001]
OUT_OF_BOUNDS = {"too_late", "timestamp_out_of_range"}


@st.composite
def a_record(draw: st.DrawFn) -> tuple[dict, int]:
    event = draw(an_event(["w1"]))
    at = to_epoch_ms(parse_timestamp(event["timestamp"]))
    return event, at + draw(st.sampled_from(LAGS_MS))


def records() -> st.SearchStrategy[list[tuple[dict, int]]]:
    def renumber(pairs: list[tuple[dict, int]]) -> list[tuple[dict, int]]:
        events = _renumber([event for event, _ in pairs])
        return [(event, record_ms) for event, (_, record_ms) in zip(events, pairs, strict=True)]

    return st.lists(a_record(), min_size=1, max_size=14).map(renumber)


def within_bounds(event: dict, record_ms: int) -> bool:
    at = to_epoch_ms(parse_timestamp(event["timestamp"]))
    session = event["event_id"].split("-")[0] in SESSION
    late, ahead = (300_000, 60_000) if session else (86_400_000, 300_000)
    return record_ms - late <= at <= record_ms + ahead


def run(pairs: list[tuple[dict, int]]) -> tuple[dict, dict[str, str]]:
    """Final profiles and the out-of-bounds verdict of each refused record, by event_id."""
    oracle = Oracle(CONFIG)
    verdicts = {}
    for event, record_ms in pairs:
        outcome = oracle.apply(ev.model(event), record_ms=record_ms).outcome
        if isinstance(outcome, Refusal) and outcome.reason in OUT_OF_BOUNDS:
            verdicts[event["event_id"]] = outcome.reason
    return {cid: p.model_dump() for cid, p in oracle.profiles().items()}, verdicts


@LAW
@given(st.data())
def test_any_arrival_order_of_the_same_records_gives_the_same_verdicts_and_profiles(
    data: st.DataObject,
) -> None:
    pairs = data.draw(records())
    assert run(data.draw(st.permutations(pairs))) == run(pairs)


@LAW
@given(records())
def test_records_beyond_the_bounds_are_refused_and_change_nothing(
    pairs: list[tuple[dict, int]],
) -> None:
    profiles, verdicts = run(pairs)
    beyond = {
        event["event_id"] for event, record_ms in pairs if not within_bounds(event, record_ms)
    }
    assert set(verdicts) == beyond  # worked out from R14's bounds, not from the code
    inside = [(event, record_ms) for event, record_ms in pairs if within_bounds(event, record_ms)]
    assert profiles == run(inside)[0]


@LAW
@given(records())
def test_a_replay_of_the_same_records_gives_the_same_answer(pairs: list[tuple[dict, int]]) -> None:
    oracle = Oracle(CONFIG)
    for event, record_ms in pairs:
        oracle.apply(ev.model(event), record_ms=record_ms)
    first = dict(oracle.contacts)
    for event, record_ms in pairs:
        again = oracle.apply(ev.model(event), record_ms=record_ms)
        assert all(e.topic == "identity.rejected" for e in again.emits)
    assert oracle.contacts == first
    assert run(pairs)[0] == {cid: p.model_dump() for cid, p in oracle.profiles().items()}
