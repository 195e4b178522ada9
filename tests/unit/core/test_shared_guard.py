"""The shared-identifier guard (R4), worked out by hand with a limit of 2 devices per hour."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.core import ids
from pipeline.core.guard import refused_links
from pipeline.core.oracle import Oracle
from pipeline.core.rules import CoreConfig
from tests.support import events as ev
from tests.unit.core.test_identity_laws import LAW, SECRETS, final_profiles, journeys

HOUR = 3600 * 1000
WS = "w1"
SECRET = SECRETS[WS]
TIGHT = CoreConfig(secrets={ws: (s.encode(),) for ws, s in SECRETS.items()},
                   shared_device_limit=2, shared_window_ms=HOUR)  # fmt: skip


def test_the_third_device_within_the_window_is_refused() -> None:
    links = [(0, "a", "d1"), (10, "b", "d2"), (20, "c", "d3"), (30, "d", "d1")]
    assert refused_links(links, limit=2, window_ms=HOUR) == {"c"}  # d1 again is fine


def test_devices_linked_before_the_window_do_not_count() -> None:
    links = [(0, "a", "d1"), (10, "b", "d2"), (HOUR + 5, "c", "d3")]
    assert refused_links(links, limit=2, window_ms=HOUR) == frozenset()


def test_refused_links_do_not_count_against_later_ones() -> None:
    links = [(0, "a", "d1"), (1, "b", "d2"), (2, "c", "d3"), (3, "d", "d4")]
    assert refused_links(links, limit=2, window_ms=HOUR) == {"c", "d"}


def test_a_shared_user_id_is_refused_reported_and_flagged() -> None:
    oracle = Oracle(TIGHT)
    logins = [
        ev.login(WS, f"d{i}", f"2026-11-24T10:0{i}:00Z", "admin", SECRET) for i in range(1, 4)
    ]
    results = [oracle.apply(ev.model(e)) for e in logins]
    assert [r.outcome.kind for r in results] == ["applied", "applied", "refused"]
    assert results[2].outcome.reason == "shared_identifier"
    profile = oracle.profiles()[ids.user_contact_id(WS, "admin")]
    assert profile.anonymous_ids == ["d1", "d2"]  # the third device is not linked
    assert "shared_identifier" in profile.flags
    later = oracle.apply(ev.model(ev.login(WS, "d3", "2026-11-24T11:05:00Z", "admin", SECRET)))
    assert later.outcome.kind == "applied"  # an hour later d1 and d2 no longer count


def test_a_late_earlier_link_moves_the_verdict_and_the_profiles_follow() -> None:
    late_first = ev.login(WS, "d0", "2026-11-24T09:59:00Z", "admin", SECRET)
    logins = [ev.login(WS, f"d{i}", f"2026-11-24T10:0{i}:00Z", "admin", SECRET) for i in (1, 2)]
    in_order, late = Oracle(TIGHT), Oracle(TIGHT)
    for event in (late_first, *logins):
        in_order.apply(ev.model(event))
    for event in (*logins, late_first):
        late.apply(ev.model(event))
    assert in_order.profiles() == late.profiles()
    assert late.profiles()[ids.user_contact_id(WS, "admin")].anonymous_ids == ["d0", "d1"]


@LAW
@given(st.data())
def test_order_independence_holds_with_the_guard_biting(data: st.DataObject) -> None:
    events = data.draw(journeys())
    shuffled = data.draw(st.permutations(events))
    assert final_profiles(shuffled, config=TIGHT) == final_profiles(events, config=TIGHT)


def test_a_repeated_login_that_flips_the_verdict_on_another_device_is_followed() -> None:
    """Found by Hypothesis: login-10 (d2 again) changes no user record, yet sorts before
    login-8 and so refuses d1's link; d1 must fall back to its own visitor in every order."""
    ts = "2026-11-24T10:00:00Z"

    def login(n: int, device: str) -> dict:
        return {**ev.login(WS, device, ts, "u3", SECRET), "event_id": f"login-{n}"}

    events = [{**ev.page_view(WS, "d1", ts), "event_id": "pv-0"}, login(11, "d3"), login(8, "d1"),
              login(9, "d2"), login(10, "d2")]  # fmt: skip
    import itertools

    results = set()
    for order in itertools.permutations(events):
        oracle = Oracle(TIGHT)
        for event in order:
            oracle.apply(ev.model(event))
        profiles = oracle.profiles()
        visitor = profiles[ids.visitor_contact_id(WS, "d1", "origin")]
        assert visitor.merged_into is None  # login-8 is refused: d1 stays its own visitor
        results.add(tuple(sorted((k, p.model_dump_json()) for k, p in profiles.items())))
    assert len(results) == 1


def quadratic_verdicts(links: list[tuple[int, str, str]], limit: int, window: int) -> set[str]:
    """R4 word for word: each link in time order against every accepted link before it."""
    accepted: list[tuple[int, str]] = []
    refused = set()
    for at, event_id, device in sorted(links):
        recent = {d for t, d in accepted if at - window < t <= at}
        if device not in recent and len(recent) >= limit:
            refused.add(event_id)
        else:
            accepted.append((at, device))
    return refused


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 20), st.sampled_from("abcdef")), max_size=40),
       st.integers(1, 4), st.integers(1, 8))  # fmt: skip
def test_the_guards_single_pass_reaches_the_verdicts_of_r4(
    times: list[tuple[int, str]], limit: int, window: int
) -> None:
    links = [(at, f"e{i}", device) for i, (at, device) in enumerate(times)]
    expected = quadratic_verdicts(links, limit, window)
    assert refused_links(links, limit=limit, window_ms=window) == expected


def test_a_user_id_reused_from_two_thousand_devices() -> None:
    # R15's hostile shape: one user_hash from a new device every minute for 2,000 minutes,
    # the default guard (10 devices in 24 h). The first 10 are linked; each of minutes 1440 to
    # 1449 sees one of them leave the window, so it is linked too; every other link is refused.
    minute = 60 * 1000
    links = [(i * minute, f"e{i}", f"d{i}") for i in range(2000)]
    accepted = {f"e{i}" for i in (*range(10), *range(1440, 1450))}
    refused = refused_links(links, limit=10, window_ms=24 * 60 * minute)
    assert refused == {f"e{i}" for i in range(2000)} - accepted
