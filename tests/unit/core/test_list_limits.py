"""R15's profile list limit: each list keeps its most recent entries by event time.

Expected values are worked out from SPEC R15: with a limit of N, a list that held more than N
entries keeps the N whose event time is latest, the profile carries the flag `truncated`, and
`totals` counts the entries the list ever held; a profile within the limit has neither.
"""

from __future__ import annotations

import itertools

from hypothesis import given
from hypothesis import strategies as st

from pipeline.core import ids
from pipeline.core.oracle import Oracle
from pipeline.core.profiles import _cut_from, _most_recent
from pipeline.core.rules import CoreConfig
from tests.support import events as ev

WS = "ws"
SECRET = "s3cret-for-ws-0123456789abcdef0123"


def at(minute: int) -> str:
    return f"2026-11-24T10:{minute:02d}:00.000Z"


def oracle(limit: int) -> Oracle:
    return Oracle(CoreConfig(secrets={WS: (SECRET.encode(),)}, profile_list_limit=limit))


def run(target: Oracle, events: list[dict]) -> None:
    for event in events:
        target.apply(ev.model(event))


def user(user_id: str) -> str:
    return ids.user_contact_id(WS, user_id)


def test_a_user_on_five_devices_keeps_the_three_used_last() -> None:
    logins = [ev.login(WS, f"d{i}", at(i), "u1", SECRET) for i in range(1, 6)]
    # d1's session ends, and a new one starts there last of all: d1 is among the most recent.
    logins += [ev.logout(WS, "d1", at(7), "u1"), ev.login(WS, "d1", at(9), "u1", SECRET)]
    for order in (logins, logins[::-1]):
        target = oracle(3)
        run(target, order)
        profile = target.profiles()[user("u1")]
        assert profile.anonymous_ids == ["d1", "d4", "d5"]
        assert profile.totals == {"anonymous_ids": 5}
        assert "truncated" in profile.flags


def test_a_profile_within_the_limit_has_no_totals_and_no_flag() -> None:
    target = oracle(5)
    run(target, [ev.login(WS, f"d{i}", at(i), "u1", SECRET) for i in range(1, 6)])
    profile = target.profiles()[user("u1")]
    assert profile.anonymous_ids == ["d1", "d2", "d3", "d4", "d5"]
    assert profile.totals == {} and profile.flags == []


def test_a_lead_with_five_conversations_keeps_the_latest_two_in_order() -> None:
    chats = [ev.chat_start(WS, "d1", at(i), f"conv-{i}") for i in range(1, 6)]
    for order in itertools.islice(itertools.permutations(chats), 0, None, 17):
        target = oracle(2)
        run(target, list(order))
        (lead,) = target.profiles().values()
        assert lead.conversation_ids == ["conv-4", "conv-5"]
        assert lead.totals == {"conversation_ids": 5}
        assert lead.flags == ["truncated"]


def test_merged_visitors_beyond_the_limit_are_counted_and_the_latest_kept() -> None:
    # One device, three visitor sessions, each ended by the user's login: three merged visitors.
    first, second = ev.logout(WS, "d1", at(3), "u1"), ev.logout(WS, "d1", at(6), "u1")
    target = oracle(2)
    run(target, [
        ev.page_view(WS, "d1", at(1)), ev.login(WS, "d1", at(2), "u1", SECRET), first,
        ev.page_view(WS, "d1", at(4)), ev.login(WS, "d1", at(5), "u1", SECRET), second,
        ev.page_view(WS, "d1", at(7)), ev.login(WS, "d1", at(8), "u1", SECRET),
    ])  # fmt: skip
    profile = target.profiles()[user("u1")]
    assert profile.merged_contact_ids == sorted(
        ids.visitor_contact_id(WS, "d1", ids.logout_session(logout["event_id"]))
        for logout in (first, second)
    )
    assert profile.totals == {"merged_contact_ids": 3}
    assert profile.anonymous_ids == ["d1"]  # one device: within the limit
    assert "truncated" in profile.flags


def test_email_matched_contacts_follow_the_merged_ones_kept() -> None:
    # Three devices' leads type the e-mail u1 verified: all three are merged by e-mail match.
    token = ev.jwt_hs256(SECRET, {"user_id": "u1", "email": "a@x.io", "email_verified": True,
                                  "iat": 1_700_000_000, "exp": 4_000_000_000})  # fmt: skip
    events = [ev.login(WS, "home", at(1), "u1", SECRET, identity_token=token)]
    events += [ev.chat_start(WS, f"lead{i}", at(1 + i), f"c{i}", email="a@x.io")
               for i in range(1, 4)]  # fmt: skip
    target = oracle(2)
    run(target, events)
    profile = target.profiles()[user("u1")]
    kept = [ids.visitor_contact_id(WS, f"lead{i}", ids.ORIGIN) for i in (2, 3)]
    assert profile.merged_contact_ids == sorted(kept)
    assert profile.email_matched_contact_ids == sorted(kept)
    assert profile.conversation_ids == ["c2", "c3"]
    assert profile.totals == {"merged_contact_ids": 3, "conversation_ids": 3}


@given(
    st.dictionaries(st.text("abc", max_size=3), st.integers(0, 4), max_size=30),
    st.integers(0, 35),
)
def test_a_list_keeps_its_most_recent_entries_by_time_then_value(
    when: dict[str, int], limit: int
) -> None:
    entries = sorted(when)
    ranked = sorted(entries, key=lambda e: (when[e], e))  # oldest first
    kept = set(ranked[max(0, len(ranked) - limit) :])
    assert _most_recent(entries, when, limit) == [e for e in entries if e in kept]


@given(
    st.dictionaries(st.text("abc", max_size=3), st.integers(0, 4), max_size=30),
    st.dictionaries(st.text("abcd", max_size=3), st.integers(0, 6), max_size=8),
    st.integers(0, 35),
)
def test_a_list_cut_from_a_summary_s_orders_is_the_list_sorted_and_cut(
    base: dict[str, int], moves: dict[str, int], limit: int
) -> None:
    # A summary's devices (`base`), then devices added or seen later since (`moves`: a
    # device's latest session start only moves later): sorted and cut to the limit from the
    # summary's orders, the list is what sorting it all and keeping its most recent gives.
    current = dict(base)
    for key, at in moves.items():
        current[key] = max(at, current.get(key, at))
    order = sorted(base)
    by_age = sorted((at, key) for key, at in base.items())
    cut = _cut_from(order, by_age, base, current, set(moves), lambda at: at, limit)
    assert cut is not None  # a handful of changes: worked out from the orders
    entries = sorted(current)
    kept = _most_recent(entries, current, limit)
    assert cut == (kept, len(entries) - len(kept))
