"""Identity theft through event time, tokens and e-mails (SPEC R7, R12, R14, R17), on the pure core.

The story of each test is worked out by hand from the rules. The victim, "vic", logs in on
device D at 10:00 and chats there at 11:00 and 12:00; every record of hers is written when it
happens (record timestamp = event time). The attacker, "mal", owns a real account and knows D's
anonymous_id.
"""

from __future__ import annotations

import pytest

from pipeline.core import ids
from pipeline.core.model import Refusal
from pipeline.core.oracle import Oracle
from pipeline.core.rules import CoreConfig
from pipeline.core.verify import TokenPolicy
from schemas.time import parse_timestamp, to_epoch_ms
from tests.support import events as ev

WS = "ws"
SECRET = "theft-secret-0123456789abcdef0123456"
CONFIG = CoreConfig(secrets={WS: (SECRET.encode(),)})
HOUR, DAY = 3600_000, 86_400_000
VICTIM = ids.user_contact_id(WS, "vic")
ATTACKER = ids.user_contact_id(WS, "mal")


def ms(ts: str) -> int:
    return to_epoch_ms(parse_timestamp(ts))


def apply(oracle: Oracle, event: dict, *, record_ms: int | None = None):
    """Apply with the record timestamp of a producer that writes events as they happen."""
    return oracle.apply(ev.model(event), record_ms=ms(event["timestamp"]) if record_ms is None
                        else record_ms)  # fmt: skip


def outcome(result) -> str:
    return result.outcome.reason if isinstance(result.outcome, Refusal) else result.outcome.kind


@pytest.fixture
def victim_world() -> Oracle:
    oracle = Oracle(CONFIG)
    apply(oracle, ev.login(WS, "D", "2026-11-24T10:00:00Z", "vic", SECRET))
    apply(oracle, ev.chat_start(WS, "D", "2026-11-24T11:00:00Z", "conv-1", email="vic@x.test"))
    apply(oracle, ev.chat_start(WS, "D", "2026-11-24T12:00:00Z", "conv-2", name="Vic"))
    assert oracle.profiles()[VICTIM].conversation_ids == ["conv-1", "conv-2"]
    return oracle


@pytest.mark.parametrize("lag_ms", [3 * HOUR, DAY, 30 * DAY, 365 * DAY, 3650 * DAY])
def test_a_backdated_login_is_too_late_and_steals_nothing(
    victim_world: Oracle, lag_ms: int
) -> None:
    before = victim_world.profiles()
    login = ev.login(WS, "D", "2026-11-24T10:02:00Z", "mal", SECRET)
    result = apply(victim_world, login, record_ms=ms(login["timestamp"]) + lag_ms)
    assert outcome(result) == "too_late"
    assert result.emits == () and not result.writes
    assert victim_world.profiles() == before


@pytest.mark.parametrize("lag_ms", [3 * HOUR, DAY, 30 * DAY, 365 * DAY, 3650 * DAY])
def test_a_backdated_logout_is_too_late_and_moves_nothing(
    victim_world: Oracle, lag_ms: int
) -> None:
    before = victim_world.profiles()
    logout = ev.logout(WS, "D", "2026-11-24T10:01:00Z", "vic")  # no credential needed
    result = apply(victim_world, logout, record_ms=ms(logout["timestamp"]) + lag_ms)
    assert outcome(result) == "too_late"
    assert victim_world.profiles() == before
    assert victim_world.profiles()[VICTIM].name is None  # her name stays out of any lead too


def test_session_lateness_is_five_minutes_inclusive(victim_world: Oracle) -> None:
    # A login written 5 min after its event is still in time; 5 min and 1 ms is not.
    on_time = ev.login(WS, "E", "2026-11-24T13:00:00Z", "mal", SECRET)
    assert (
        outcome(apply(victim_world, on_time, record_ms=ms(on_time["timestamp"]) + 300_000))
        == "applied"
    )
    late = ev.login(WS, "F", "2026-11-24T13:00:00Z", "mal", SECRET)
    assert (
        outcome(apply(victim_world, late, record_ms=ms(late["timestamp"]) + 300_001)) == "too_late"
    )


def test_activity_lateness_is_a_day() -> None:
    oracle = Oracle(CONFIG)
    view = ev.page_view(WS, "P", "2026-11-24T10:00:00Z")
    assert outcome(apply(oracle, view, record_ms=ms(view["timestamp"]) + DAY)) == "applied"
    chat = ev.chat_start(WS, "Q", "2026-11-24T10:00:00Z", "c")
    assert outcome(apply(oracle, chat, record_ms=ms(chat["timestamp"]) + DAY + 1)) == "too_late"
    assert oracle.profiles() and all(p.anonymous_ids == ["P"] for p in oracle.profiles().values())


def test_lateness_is_configurable() -> None:
    oracle = Oracle(CoreConfig(secrets=CONFIG.secrets, allowed_lateness_ms=60_000,
                               session_lateness_ms=1_000))  # fmt: skip
    view = ev.page_view(WS, "P", "2026-11-24T10:00:00Z")
    assert outcome(apply(oracle, view, record_ms=ms(view["timestamp"]) + 60_001)) == "too_late"
    login = ev.login(WS, "P", "2026-11-24T10:00:00Z", "u", SECRET)
    assert outcome(apply(oracle, login, record_ms=ms(login["timestamp"]) + 1_001)) == "too_late"


@pytest.mark.parametrize(("ahead_ms", "expected"), [(60_000, "applied"), (60_001, "timestamp_out_of_range"),
                                                    (HOUR, "timestamp_out_of_range")])  # fmt: skip
def test_a_login_stamped_in_the_future_cannot_claim_the_next_session(
    victim_world: Oracle, ahead_ms: int, expected: str
) -> None:
    # The attacker's login on D is stamped 14:00 while its record is written `ahead_ms` earlier:
    # more than a minute ahead, it would own whatever D does until then.
    login = ev.login(WS, "D", "2026-11-24T14:00:00Z", "mal", SECRET)
    assert (
        outcome(apply(victim_world, login, record_ms=ms(login["timestamp"]) - ahead_ms)) == expected
    )
    if expected != "applied":
        assert ATTACKER not in victim_world.profiles()


def test_a_chat_stamped_far_ahead_is_refused() -> None:
    oracle = Oracle(CONFIG)
    chat = ev.chat_start(WS, "D", "2026-11-24T14:00:00Z", "planted")
    assert outcome(apply(oracle, chat, record_ms=ms(chat["timestamp"]) - 300_000)) == "applied"
    later = ev.chat_start(WS, "D", "2026-11-24T15:00:00Z", "planted-2")
    result = apply(oracle, later, record_ms=ms(later["timestamp"]) - 300_001)
    assert outcome(result) == "timestamp_out_of_range"


def test_a_token_issued_after_the_event_cannot_prove_it(victim_world: Oracle) -> None:
    # Thirty days later the attacker mints a fresh token (iat = now) and stamps the login
    # 10:02 on D, with a record timestamp that passes the lateness check (a producer that
    # sets CreateTime itself): the token cannot prove a login stamped before it existed.
    now = ms("2026-12-24T10:00:00Z") // 1000
    token = ev.jwt_hs256(SECRET, {"user_id": "mal", "iat": now, "exp": now + 600})
    login = ev.login(WS, "D", "2026-11-24T10:02:00Z", "mal", SECRET, identity_token=token)
    assert outcome(apply(victim_world, login)) == "invalid_token"
    assert victim_world.profiles()[VICTIM].conversation_ids == ["conv-1", "conv-2"]


def test_a_token_issued_within_the_leeway_proves_the_event() -> None:
    oracle = Oracle(CONFIG)
    at = ms("2026-11-24T10:00:00Z") // 1000
    token = ev.jwt_hs256(SECRET, {"user_id": "vic", "iat": at + 60, "exp": at + 600})
    login = ev.login(WS, "D", "2026-11-24T10:00:00Z", "vic", SECRET, identity_token=token)
    assert outcome(apply(oracle, login)) == "applied"


@pytest.mark.parametrize(
    "exp", [float("nan"), float("inf"), float("-inf"), "soon", None, True, 1e300]
)
def test_a_token_whose_exp_is_not_a_finite_number_is_invalid(exp: object) -> None:
    claims = {"user_id": "vic"} if exp is None else {"user_id": "vic", "exp": exp}
    token = ev.jwt_hs256(SECRET, claims)
    login = ev.login(WS, "D", "2026-11-24T10:00:00Z", "vic", SECRET, identity_token=token)
    result = apply(Oracle(CONFIG), login)
    assert outcome(result) == "invalid_token"  # not internal_error


def enforced(**policy: object) -> CoreConfig:
    return CoreConfig(secrets=CONFIG.secrets, policies={WS: TokenPolicy(**policy)})  # type: ignore[arg-type]


def test_require_token_refuses_a_user_hash() -> None:
    oracle = Oracle(enforced(require_token=True))
    login = ev.login(WS, "D", "2026-11-24T10:00:00Z", "vic", SECRET)  # a valid user_hash
    assert outcome(apply(oracle, login)) == "token_required"
    at = ms(login["timestamp"]) // 1000
    token = ev.jwt_hs256(SECRET, {"user_id": "vic", "iat": at, "exp": at + 300})
    signup = ev.signup(WS, "D", "2026-11-24T10:00:00Z", "vic", SECRET, identity_token=token)
    assert outcome(apply(oracle, signup)) == "applied"
    # The policy is the workspace's own: another workspace keeps accepting user_hash.
    assert (
        outcome(apply(Oracle(CONFIG), ev.login(WS, "D", "2026-11-24T10:00:00Z", "vic", SECRET)))
        == "applied"
    )


@pytest.mark.parametrize(("iat", "exp", "expected"), [
    (0, 3600, "applied"),
    (0, 3601, "invalid_token"),
    (None, 600, "invalid_token"),  # no iat: its lifetime cannot be known
    (0, None, "invalid_token"),  # exp in the year 3000
])  # fmt: skip
def test_max_token_lifetime(iat: int | None, exp: int | None, expected: str) -> None:
    at = ms("2026-11-24T10:00:00Z") // 1000
    claims = {"user_id": "vic", "exp": 32503680000 if exp is None else at + exp}
    if iat is not None:
        claims["iat"] = at + iat
    token = ev.jwt_hs256(SECRET, claims)
    login = ev.login(WS, "D", "2026-11-24T10:00:00Z", "vic", SECRET, identity_token=token)
    assert outcome(apply(Oracle(enforced(max_token_lifetime_s=3600)), login)) == expected


def jti_login(device: str, ts: str, jti: str = "t-1", user: str = "vic") -> dict:
    at = ms(ts) // 1000
    token = ev.jwt_hs256(SECRET, {"user_id": user, "iat": at - 10, "exp": at + 3600, "jti": jti})
    return ev.login(WS, device, ts, user, SECRET, identity_token=token)


def test_a_token_with_a_jti_links_only_its_first_device() -> None:
    first = jti_login("A", "2026-11-24T10:00:00Z")
    stolen = jti_login("B", "2026-11-24T10:05:00Z")
    again = jti_login("A", "2026-11-24T10:06:00Z")  # the same token again on its own device
    oracle = Oracle(CONFIG)
    assert [outcome(apply(oracle, e)) for e in (first, stolen, again)] == [
        "applied", "token_reused", "applied"]  # fmt: skip
    assert oracle.profiles()[VICTIM].anonymous_ids == ["A"]


def test_the_first_use_of_a_jti_wins_in_any_arrival_order() -> None:
    # The thief's use on B arrives first (the victim's producer lagged, within the lateness).
    first = jti_login("A", "2026-11-24T10:00:00Z")
    stolen = jti_login("B", "2026-11-24T10:01:00Z")
    view_b = ev.page_view(WS, "B", "2026-11-24T09:59:00Z")
    in_order, reversed_ = Oracle(CONFIG), Oracle(CONFIG)
    for event in (view_b, first, stolen):
        apply(in_order, event)
    for event in (view_b, stolen):
        apply(reversed_, event)
    assert reversed_.profiles()[VICTIM].anonymous_ids == ["B"]  # linked until the first use is seen
    result = apply(reversed_, first, record_ms=ms(stolen["timestamp"]) + 1_000)
    assert outcome(result) == "applied"
    assert reversed_.profiles() == in_order.profiles()
    assert in_order.profiles()[VICTIM].anonymous_ids == ["A"]
    # B's visitor is no longer merged into the victim: republished without merged_into.
    b_visitor = ids.visitor_contact_id(WS, "B", "origin")
    assert reversed_.profiles()[b_visitor].merged_into is None


def test_a_jti_used_twice_at_the_same_time_is_bound_by_the_smaller_event_id() -> None:
    oracle = Oracle(CONFIG)
    a = {**jti_login("A", "2026-11-24T10:00:00Z"), "event_id": "login-b"}
    b = {**jti_login("B", "2026-11-24T10:00:00Z"), "event_id": "login-a"}
    apply(oracle, a)
    assert outcome(apply(oracle, b)) == "applied"
    assert oracle.profiles()[VICTIM].anonymous_ids == ["B"]


def test_e_mail_matched_conversations_are_marked_unproven() -> None:
    # R7 provenance: the victim verified her e-mail in a token; a stranger types it into a chat
    # on their own device. The lead is merged (R7) and listed as matched by e-mail only, unlike
    # the visitor merged by her own login.
    oracle = Oracle(CONFIG)
    at = ms("2026-11-24T10:00:00Z") // 1000
    token = ev.jwt_hs256(SECRET, {"user_id": "vic", "email": "vic@x.test", "exp": at + 600})
    apply(oracle, ev.page_view(WS, "vic-laptop", "2026-11-24T09:59:00Z"))
    apply(
        oracle,
        ev.login(WS, "vic-laptop", "2026-11-24T10:00:00Z", "vic", SECRET, identity_token=token),
    )
    apply(
        oracle, ev.chat_start(WS, "stranger", "2026-11-24T10:30:00Z", "typed", email="VIC@x.test")
    )
    profile = oracle.profiles()[VICTIM]
    own_visitor = ids.visitor_contact_id(WS, "vic-laptop", "origin")
    stranger = ids.visitor_contact_id(WS, "stranger", "origin")
    assert profile.merged_contact_ids == sorted([own_visitor, stranger])
    assert profile.email_matched_contact_ids == [stranger]
    assert profile.conversation_ids == ["typed"]


def test_an_e_mail_matches_a_bounded_number_of_devices(monkeypatch: pytest.MonkeyPatch) -> None:
    from pipeline.core import facts

    monkeypatch.setattr(facts, "EMAIL_LEADS_KEPT", 3)
    oracle = Oracle(CONFIG)
    at = ms("2026-11-24T10:00:00Z") // 1000
    token = ev.jwt_hs256(SECRET, {"user_id": "vic", "email": "vic@x.test", "exp": at + 600})
    apply(
        oracle,
        ev.login(WS, "vic-laptop", "2026-11-24T10:00:00Z", "vic", SECRET, identity_token=token),
    )
    for minute in range(10, 15):  # five strangers; only the three earliest chats are matched
        apply(oracle, ev.chat_start(WS, f"s{minute}", f"2026-11-24T10:{minute}:00Z", f"c{minute}",
                                    email="vic@x.test"))  # fmt: skip
    profile = oracle.profiles()[VICTIM]
    matched = [ids.visitor_contact_id(WS, f"s{m}", "origin") for m in (10, 11, 12)]
    assert profile.email_matched_contact_ids == sorted(matched)
    assert profile.conversation_ids == ["c10", "c11", "c12"]
    late = oracle.profiles()[ids.visitor_contact_id(WS, "s14", "origin")]
    # Beyond the kept leads: neither merged nor flagged (R15), and her profile does not list it.
    assert late.merged_into is None and late.possible_duplicates == [] and late.flags == []
    # An earlier chat arriving late takes its place among the three; s12 is matched no more.
    apply(oracle, ev.chat_start(WS, "s09", "2026-11-24T10:09:00Z", "c09", email="vic@x.test"))
    profile = oracle.profiles()[VICTIM]
    assert profile.conversation_ids == ["c09", "c10", "c11"]
    assert oracle.profiles()[ids.visitor_contact_id(WS, "s12", "origin")].merged_into is None


@pytest.mark.parametrize(("event_id", "reason"), [
    ("undefined", "blocked_identifier"), ("", "blocked_identifier"), ("e" * 257, "blocked_identifier"),
    ("a\u200bb", "invalid_identifier"), ("line\nbreak", "invalid_identifier"),
])  # fmt: skip
def test_event_ids_obey_identifier_hygiene(event_id: str, reason: str) -> None:
    view = {**ev.page_view(WS, "D", "2026-11-24T10:00:00Z"), "event_id": event_id}
    result = Oracle(CONFIG).apply(
        ev.model_of("telemetry.page_view", view), record_ms=ms(view["timestamp"])
    )
    assert outcome(result) == reason
