"""Identity attacks (SPEC R2, R7, R9, R10): none changes the victim's profile or links a device.

Expected outcomes are worked out by hand: the victim, "vic", signed up on her laptop and left
her e-mail in a chat on her phone before; the attacker, "mal", owns a real account.
"""

from __future__ import annotations

import pytest

from pipeline.core import ids
from pipeline.core.model import Refusal
from pipeline.core.oracle import Oracle
from pipeline.core.rules import CoreConfig
from tests.support import events as ev

WS, OTHER_WS = "ws", "ws-other"
SECRET = "attack-secret-0123456789abcdef01234"
OTHER_SECRET = "other-workspace-secret-0123456789ab"
CONFIG = CoreConfig(secrets={WS: (SECRET.encode(),), OTHER_WS: (OTHER_SECRET.encode(),)})
NOW = 1795514400  # 2026-11-24T10:00:00Z
T = "2026-11-24T10:{:02d}:00Z"


@pytest.fixture
def world() -> Oracle:
    oracle = Oracle(CONFIG)
    for event in (
        ev.chat_start(WS, "vic-phone", T.format(0), "vic-conv", email="vic@example.com"),
        ev.signup(WS, "vic-laptop", T.format(1), "vic", SECRET),
        ev.page_view(WS, "mal-laptop", T.format(2)),
    ):
        oracle.apply(ev.model(event))
    return oracle


def victim(oracle: Oracle):
    return oracle.profiles()[ids.user_contact_id(WS, "vic")]


def token(claims: dict, *, secret: str = SECRET, header: dict | None = None) -> str:
    return ev.jwt_hs256(secret, {"user_id": "vic", "exp": NOW + 3600, **claims}, header=header)


@pytest.mark.parametrize(
    ("identity_token", "reason"),
    [
        (token({}, header={"alg": "none", "typ": "JWT"}), "invalid_token"),
        (token({}, header={"alg": "HS512", "typ": "JWT"}), "invalid_token"),
        (token({}, header={"alg": "RS256", "typ": "JWT"}), "invalid_token"),
        (token({}, secret="not-the-secret-0123456789abcdef0123"), "unverified_identity"),
        (token({}, secret=OTHER_SECRET), "unverified_identity"),  # another workspace's secret
        (token({"exp": NOW - 3600}), "expired_token"),
        (ev.jwt_hs256(SECRET, {"user_id": "vic"}), "invalid_token"),  # no exp
        (token({"user_id": "mal"}), "unverified_identity"),  # issued for someone else
    ],
)
def test_forged_or_stale_tokens_cannot_claim_the_victim(
    world: Oracle, identity_token: str, reason: str
) -> None:
    before = victim(world)
    attack = ev.login(WS, "mal-laptop", T.format(3), "vic", SECRET, identity_token=identity_token)
    result = world.apply(ev.model(attack))
    assert isinstance(result.outcome, Refusal) and result.outcome.reason == reason
    assert victim(world) == before
    assert "mal-laptop" not in victim(world).anonymous_ids


def test_a_forged_user_hash_cannot_claim_the_victim(world: Oracle) -> None:
    before = victim(world)
    attack = {
        **ev.login(WS, "mal-laptop", T.format(3), "vic", SECRET),
        "user_hash": ev.user_hash("guess", "vic"),
    }
    result = world.apply(ev.model(attack))
    assert result.outcome.reason == "unverified_identity"
    assert victim(world) == before


def test_attackers_own_login_with_the_victims_email_unverified_merges_nothing(
    world: Oracle,
) -> None:
    lead_id = ids.visitor_contact_id(WS, "vic-phone", "origin")
    before = world.profiles()[lead_id]
    world.apply(
        ev.model(ev.login(WS, "mal-laptop", T.format(3), "mal", SECRET, email="VIC@example.com"))
    )
    lead = world.profiles()[lead_id]
    mal = world.profiles()[ids.user_contact_id(WS, "mal")]
    assert lead.merged_into is None and lead.conversation_ids == before.conversation_ids
    assert mal.conversation_ids == [] and mal.merged_contact_ids == [
        ids.visitor_contact_id(WS, "mal-laptop", "origin")
    ]
    assert mal.email == "vic@example.com" and mal.email_verified is False
    assert lead.possible_duplicates == [mal.contact_id]  # recorded, never merged (R7)


def test_replaying_the_victims_login_after_its_token_expired_is_refused(world: Oracle) -> None:
    issued = token({"exp": NOW + 600})  # valid for ten minutes after 10:00
    world.apply(
        ev.model(ev.login(WS, "vic-laptop", T.format(5), "vic", SECRET, identity_token=issued))
    )
    before = victim(world)
    replay = ev.login(
        WS, "mal-laptop", "2026-11-24T12:00:00Z", "vic", SECRET, identity_token=issued
    )
    result = world.apply(ev.model(replay), record_ms=(NOW + 7200) * 1000)
    assert result.outcome.reason == "expired_token"
    assert victim(world) == before


def test_a_page_view_carrying_the_victims_user_id_is_just_a_page_view(world: Oracle) -> None:
    before = victim(world)
    sneaky = {**ev.page_view(WS, "mal-tablet", T.format(4)), "user_id": "vic"}
    world.apply(ev.model(sneaky))
    assert victim(world) == before
    tablet = world.profiles()[ids.visitor_contact_id(WS, "mal-tablet", "origin")]
    assert tablet.type == "visitor" and tablet.user_id is None


def test_a_logout_for_the_victim_on_the_attackers_device_changes_nothing_of_hers(
    world: Oracle,
) -> None:
    before = victim(world)
    world.apply(ev.model(ev.logout(WS, "mal-laptop", T.format(4), "vic")))
    assert victim(world) == before
