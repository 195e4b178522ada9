"""The Intercom journeys on the pure core, expected outputs worked out by hand from SPEC §2."""

from __future__ import annotations

import pytest

from pipeline.core import ids
from pipeline.core.model import Refusal, Unchanged
from pipeline.core.oracle import Oracle
from pipeline.core.rules import CoreConfig
from tests.support import events as ev

WS = "ws"
SECRET = "s3cret-for-ws-0123456789abcdef0123"
CONFIG = CoreConfig(secrets={WS: (SECRET.encode(),)})
T = "2026-11-24T10:{:02d}:00Z"  # T.format(m): minute m of the test morning


def at(minute: int) -> str:
    return f"2026-11-24T10:{minute:02d}:00.000Z"


def visitor(anon: str, session: str = "origin") -> str:
    return ids.visitor_contact_id(WS, anon, session)


def user(user_id: str) -> str:
    return ids.user_contact_id(WS, user_id)


@pytest.fixture
def oracle() -> Oracle:
    return Oracle(CONFIG)


def run(oracle: Oracle, *events: dict) -> list:
    return [oracle.apply(ev.model(e)) for e in events]


def emitted(oracle: Oracle, topic: str) -> list:
    return [e.value for e in oracle.emitted if e.topic == topic]


def test_a_visitor_chats_then_signs_up(oracle: Oracle) -> None:
    signup = ev.signup(WS, "d1", T.format(4), "u1", SECRET)
    run(oracle,
        ev.page_view(WS, "d1", T.format(1)), ev.page_view(WS, "d1", T.format(2)),
        ev.chat_start(WS, "d1", T.format(3), "conv-1", city="Paris"), signup)  # fmt: skip
    profiles = oracle.profiles()
    lead, account = profiles[visitor("d1")], profiles[user("u1")]
    assert lead.type == "lead"
    colour, noun, rest = lead.pseudonym.split(" ", 2)
    assert colour in ids.COLOURS and noun in ids.NOUNS and rest == "from Paris"
    assert lead.merged_into == account.contact_id
    assert lead.conversation_ids == ["conv-1"]
    assert account.type == "user" and account.user_id == "u1"
    assert account.anonymous_ids == ["d1"]
    assert account.merged_contact_ids == [lead.contact_id]
    assert account.conversation_ids == ["conv-1"]
    assert account.created_at.isoformat().startswith("2026-11-24T10:01")  # the first page view
    assert account.updated_at.isoformat().startswith("2026-11-24T10:04")
    (merge,) = emitted(oracle, "identity.merged")
    assert (merge.kind, merge.reason) == ("converted", "signup")
    assert (merge.from_contact_id, merge.into_contact_id) == (lead.contact_id, account.contact_id)
    assert merge.cause_event_id == signup["event_id"] and merge.user_id == "u1"
    # The visitor's profile was published as visitor, then lead, then merged away.
    kinds = [(p.type, p.merged_into) for p in emitted(oracle, "identity.profiles")
             if p.contact_id == lead.contact_id]  # fmt: skip
    assert kinds == [("visitor", None), ("lead", None), ("lead", account.contact_id)]


def test_browsing_a_known_device_changes_nothing(oracle: Oracle) -> None:
    first, second = run(
        oracle, ev.page_view(WS, "d1", T.format(1)), ev.page_view(WS, "d1", T.format(5))
    )
    assert second.outcome == Unchanged() and second.emits == ()
    assert len(emitted(oracle, "identity.profiles")) == 1


def test_a_lead_email_matches_a_verified_login_on_another_device(oracle: Oracle) -> None:
    token = ev.jwt_hs256(SECRET, {"user_id": "u1", "email": "Ada@Example.com", "exp": 1795600000})
    login = ev.login(WS, "d2", T.format(5), "u1", SECRET, identity_token=token)
    chat = ev.chat_start(WS, "d1", T.format(2), "conv-1", email="ada@example.com")
    run(oracle, ev.page_view(WS, "d1", T.format(1)), chat, login,
        ev.page_view(WS, "d1", T.format(7)))  # fmt: skip
    profiles = oracle.profiles()
    lead, account = profiles[visitor("d1")], profiles[user("u1")]
    assert lead.merged_into == account.contact_id
    assert account.email == "ada@example.com" and account.email_verified
    assert account.conversation_ids == ["conv-1"]
    assert account.merged_contact_ids == [lead.contact_id]
    assert account.anonymous_ids == ["d2"]  # the lead's device is not linked (R2)
    (merge,) = emitted(oracle, "identity.merged")
    assert (merge.kind, merge.reason, merge.cause_event_id) == (
        "merged",
        "email_match",
        login["event_id"],
    )
    # d1 browsing after the match is a new anonymous visitor, not u1.
    later = profiles[visitor("d1", f"email:{chat['event_id']}")]
    assert later.type == "visitor" and later.merged_into is None and later.anonymous_ids == ["d1"]


def test_the_same_match_with_an_unverified_email_only_records_a_duplicate(oracle: Oracle) -> None:
    run(oracle,
        ev.chat_start(WS, "d1", T.format(2), "conv-1", email="ada@example.com"),
        ev.login(WS, "d2", T.format(5), "u1", SECRET, email="ada@example.com"))  # fmt: skip
    profiles = oracle.profiles()
    lead, account = profiles[visitor("d1")], profiles[user("u1")]
    assert lead.merged_into is None and account.merged_contact_ids == []
    assert account.email == "ada@example.com" and not account.email_verified
    assert lead.possible_duplicates == [account.contact_id]
    assert account.possible_duplicates == [lead.contact_id]
    assert "possible_duplicate" in lead.flags
    assert emitted(oracle, "identity.merged") == []


def test_two_users_verified_the_same_email_so_the_lead_is_not_merged(oracle: Oracle) -> None:
    def token(uid: str) -> str:
        return ev.jwt_hs256(SECRET, {"user_id": uid, "email": "x@example.com", "exp": 1795600000})

    run(oracle,
        ev.login(WS, "d2", T.format(1), "u1", SECRET, identity_token=token("u1")),
        ev.login(WS, "d3", T.format(2), "u2", SECRET, identity_token=token("u2")),
        ev.chat_start(WS, "d1", T.format(3), "conv-1", email="x@example.com"))  # fmt: skip
    lead = oracle.profiles()[visitor("d1")]
    assert lead.merged_into is None
    assert lead.possible_duplicates == sorted([user("u1"), user("u2")])
    assert "possible_duplicate" in lead.flags


def test_shared_computer_logout_then_another_user(oracle: Oracle) -> None:
    logout = ev.logout(WS, "d1", T.format(3), "ua")
    run(oracle,
        ev.login(WS, "d1", T.format(1), "ua", SECRET), ev.page_view(WS, "d1", T.format(2)),
        logout, ev.login(WS, "d1", T.format(4), "ub", SECRET),
        ev.chat_start(WS, "d1", T.format(5), "conv-b"))  # fmt: skip
    profiles = oracle.profiles()
    a, b = profiles[user("ua")], profiles[user("ub")]
    assert a.conversation_ids == [] and a.merged_contact_ids == []
    assert b.conversation_ids == ["conv-b"]
    between = visitor("d1", logout["event_id"])  # the visitor after A's logout became B
    assert b.merged_contact_ids == [between]
    (shutdown,) = emitted(oracle, "identity.shutdown")
    assert (shutdown.reason, shutdown.user_id, shutdown.contact_id) == (
        "logout",
        "ua",
        a.contact_id,
    )
    assert shutdown.anonymous_id == "d1" and shutdown.cause_event_id == logout["event_id"]


def test_stale_cookie_after_logout_is_a_new_visitor(oracle: Oracle) -> None:
    logout = ev.logout(WS, "d1", T.format(3), "ua")
    run(oracle, ev.login(WS, "d1", T.format(1), "ua", SECRET), logout,
        ev.page_view(WS, "d1", T.format(4)), ev.chat_start(WS, "d1", T.format(5), "conv-x"))  # fmt: skip
    profiles = oracle.profiles()
    after = profiles[visitor("d1", logout["event_id"])]
    assert (
        after.type == "lead" and after.conversation_ids == ["conv-x"] and after.merged_into is None
    )
    assert profiles[user("ua")].conversation_ids == []


def test_one_user_on_two_devices(oracle: Oracle) -> None:
    first = ev.login(WS, "d1", T.format(2), "u1", SECRET)
    second = ev.login(WS, "d2", T.format(4), "u1", SECRET)
    run(oracle, ev.page_view(WS, "d1", T.format(1)), first,
        ev.page_view(WS, "d2", T.format(3)), second)  # fmt: skip
    profiles = oracle.profiles()
    account = profiles[user("u1")]
    assert account.anonymous_ids == ["d1", "d2"]
    assert account.merged_contact_ids == sorted([visitor("d1"), visitor("d2")])
    merges = {m.cause_event_id: m.kind for m in emitted(oracle, "identity.merged")}
    assert merges == {first["event_id"]: "converted", second["event_id"]: "merged"}


def test_user_switch_without_logout(oracle: Oracle) -> None:
    switch = ev.login(WS, "d1", T.format(2), "ub", SECRET)
    run(oracle, ev.login(WS, "d1", T.format(1), "ua", SECRET), switch,
        ev.chat_start(WS, "d1", T.format(3), "conv-b"))  # fmt: skip
    (shutdown,) = emitted(oracle, "identity.shutdown")
    assert (shutdown.reason, shutdown.user_id, shutdown.contact_id) == (
        "user_switch",
        "ua",
        user("ua"),
    )
    assert shutdown.cause_event_id == switch["event_id"]
    profiles = oracle.profiles()
    assert profiles[user("ub")].conversation_ids == ["conv-b"]
    assert profiles[user("ua")].conversation_ids == []


def test_logout_of_a_device_linked_to_nobody_still_shuts_down(oracle: Oracle) -> None:
    logout = ev.logout(WS, "d1", T.format(2), "ua")
    run(oracle, ev.page_view(WS, "d1", T.format(1)), logout)
    (shutdown,) = emitted(oracle, "identity.shutdown")
    assert shutdown.contact_id == visitor("d1") and shutdown.user_id is None


def test_logout_for_another_user_is_refused_and_ends_nothing(oracle: Oracle) -> None:
    _, refused = run(oracle, ev.login(WS, "d1", T.format(1), "ua", SECRET),
                     ev.logout(WS, "d1", T.format(2), "ub"))  # fmt: skip
    assert isinstance(refused.outcome, Refusal) and refused.outcome.reason == "not_logged_in"
    assert "not logged in" in refused.outcome.detail
    assert emitted(oracle, "identity.shutdown") == []


@pytest.mark.parametrize(
    ("proof", "reason"),
    [
        ({"user_hash": "0" * 64}, "unverified_identity"),
        (
            {"identity_token": ev.jwt_hs256("other-secret", {"user_id": "u1", "exp": 1795600000})},
            "unverified_identity",
        ),
        (
            {
                "identity_token": ev.jwt_hs256(
                    SECRET, {"user_id": "u1", "exp": 1795600000}, header={"alg": "none"}
                )
            },
            "invalid_token",
        ),
        (
            {
                "identity_token": ev.jwt_hs256(
                    SECRET, {"user_id": "u1", "exp": 1795600000}, header={"alg": "HS512"}
                )
            },
            "invalid_token",
        ),
        (
            {"identity_token": ev.jwt_hs256(SECRET, {"user_id": "u1", "exp": 1795500000})},
            "expired_token",
        ),
        ({"identity_token": ev.jwt_hs256(SECRET, {"user_id": "u1"})}, "invalid_token"),
        (
            {"identity_token": ev.jwt_hs256(SECRET, {"user_id": "u2", "exp": 1795600000})},
            "unverified_identity",
        ),
        ({"identity_token": "not.a.jwt"}, "invalid_token"),
    ],
)
def test_unverifiable_claims_are_refused_and_change_nothing(
    oracle: Oracle, proof: dict, reason: str
) -> None:
    # 1795514400 is 2026-11-24T10:00:00Z; exp 1795500000 is four hours before the event.
    event = {**ev.login(WS, "d1", T.format(0), "u1", SECRET), **proof}
    if "identity_token" in proof:
        event.pop("user_hash")
    (result,) = run(oracle, event)
    assert isinstance(result.outcome, Refusal) and result.outcome.reason == reason
    assert result.writes is False and result.emits == ()
    assert oracle.profiles() == {}


def test_token_within_leeway_is_accepted(oracle: Oracle) -> None:
    token = ev.jwt_hs256(SECRET, {"user_id": "u1", "exp": 1795514400 - 30})  # 30 s before the event
    (result,) = run(oracle, ev.login(WS, "d1", T.format(0), "u1", SECRET, identity_token=token))
    assert not isinstance(result.outcome, Refusal)


def test_token_expired_by_record_time_is_refused(oracle: Oracle) -> None:
    # Valid at the event's time, expired (60 s leeway included) when the record was written,
    # which is still within the session lateness of R14 (5 min).
    token = ev.jwt_hs256(SECRET, {"user_id": "u1", "exp": 1795514400 + 120})
    event = ev.model(ev.login(WS, "d1", T.format(0), "u1", SECRET, identity_token=token))
    result = oracle.apply(event, record_ms=(1795514400 + 240) * 1000)
    assert isinstance(result.outcome, Refusal) and result.outcome.reason == "expired_token"


def test_a_late_login_earlier_than_all_activity_removes_the_visitor(oracle: Oracle) -> None:
    run(oracle, ev.page_view(WS, "d1", T.format(5)))
    assert visitor("d1") in oracle.profiles()
    run(oracle, ev.login(WS, "d1", T.format(1), "u1", SECRET))  # arrives late
    assert visitor("d1") not in oracle.profiles()  # the device was never an anonymous visitor
    tombstones = [e for e in oracle.emitted if e.topic == "identity.profiles" and e.value is None]
    assert [t.key for t in tombstones] == [visitor("d1")]


def test_unknown_workspace_is_refused(oracle: Oracle) -> None:
    (result,) = run(oracle, ev.page_view("ws-other", "d1", T.format(1)))
    assert result.outcome.reason == "unknown_workspace"


def test_a_logout_read_before_its_login_is_corrected_when_the_login_arrives(oracle: Oracle) -> None:
    login = ev.login(WS, "d1", T.format(1), "ua", SECRET)
    logout = ev.logout(WS, "d1", T.format(2), "ua")
    run(oracle, logout)  # read first: the device was linked to nobody yet
    first = emitted(oracle, "identity.shutdown")
    assert [(s.user_id, s.contact_id) for s in first] == [(None, visitor("d1"))]
    run(oracle, login)
    corrected = emitted(oracle, "identity.shutdown")[1:]
    assert [(s.user_id, s.contact_id, s.cause_event_id) for s in corrected] == [
        ("ua", user("ua"), logout["event_id"])
    ]
    assert corrected[0].event_id != first[0].event_id  # other content, other event_id
    again = Oracle(CONFIG)
    run(again, login, logout)  # in order: the same final shutdown, with the same event_id
    assert [s.event_id for s in emitted(again, "identity.shutdown")] == [corrected[0].event_id]
