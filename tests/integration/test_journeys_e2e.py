"""The Intercom journeys end to end through the real broker and Redis (issue: identity core).

Expected values are worked out by hand from SPEC §2. The five input topics are not ordered
with respect to each other, so each test awaits the final profiles rather than a sequence.
"""

from __future__ import annotations

from typing import Any

from pipeline.core import ids
from tests.integration.conftest import SECRETS, TOKEN_EXP
from tests.support import events as ev
from tests.support.kafka import OutputLog, Pipeline

WS = "ws-a"
SECRET = SECRETS[WS]
PV, CHAT, SIGNUP, LOGIN, LOGOUT = (
    f"telemetry.{t}" for t in ("page_view", "chat_start", "signup", "login", "logout")
)


def t(minute: int, second: int = 0) -> str:
    return f"2026-11-24T11:{minute:02d}:{second:02d}Z"


def visitor(anon: str, session: str = "origin") -> str:
    return ids.visitor_contact_id(WS, anon, session)


def user(user_id: str) -> str:
    return ids.user_contact_id(WS, user_id)


def has(contact_id: str, **expected: Any):
    def condition(out: OutputLog) -> bool:
        profile = out.latest_profiles().get(contact_id)
        return profile is not None and all(profile.get(k) == v for k, v in expected.items())

    return condition


async def test_visitor_becomes_lead_then_signs_up(pipeline: Pipeline) -> None:
    pipeline.start_worker()
    signup = ev.signup(WS, "a-dev", t(3), "a-user", SECRET)
    await pipeline.send(PV, ev.page_view(WS, "a-dev", t(1)))
    await pipeline.send(CHAT, ev.chat_start(WS, "a-dev", t(2), "a-conv", city="Lisbon"))
    await pipeline.send(SIGNUP, signup)
    await pipeline.wait_for(
        has(visitor("a-dev"), type="lead", merged_into=user("a-user")), what="the lead merged"
    )
    await pipeline.wait_for(
        has(user("a-user"), conversation_ids=["a-conv"]), what="the user with the chat"
    )
    lead = pipeline.outputs.latest_profiles()[visitor("a-dev")]
    assert lead["pseudonym"].endswith(" from Lisbon")
    account = pipeline.outputs.latest_profiles()[user("a-user")]
    assert account["anonymous_ids"] == ["a-dev"] and account["merged_contact_ids"] == [
        visitor("a-dev")
    ]
    await pipeline.wait_for(lambda out: len(out.values("identity.merged")) >= 1, what="a merge")
    merges = {(m["from_contact_id"], m["into_contact_id"], m["kind"], m["reason"], m["cause_event_id"])
              for m in pipeline.outputs.values("identity.merged")}  # fmt: skip
    assert merges == {(visitor("a-dev"), user("a-user"), "converted", "signup", signup["event_id"])}
    record = next(r for r in pipeline.outputs.of("identity.merged"))
    assert record.key.decode() == user("a-user")


async def test_lead_email_matches_a_verified_login_or_only_flags_an_unverified_one(
    pipeline: Pipeline,
) -> None:
    pipeline.start_worker()
    token = ev.jwt_hs256(SECRET, {"user_id": "b-user", "email": "B@Example.com", "exp": TOKEN_EXP})
    await pipeline.send(CHAT, ev.chat_start(WS, "b-dev1", t(1), "b-conv", email="b@example.com"))
    await pipeline.send(LOGIN, ev.login(WS, "b-dev2", t(5), "b-user", SECRET, identity_token=token))
    # The same story with an unverified e-mail, for another person.
    await pipeline.send(CHAT, ev.chat_start(WS, "c-dev1", t(1), "c-conv", email="c@example.com"))
    await pipeline.send(
        LOGIN, ev.login(WS, "c-dev2", t(5), "c-user", SECRET, email="c@example.com")
    )

    await pipeline.wait_for(has(user("b-user"), conversation_ids=["b-conv"], anonymous_ids=["b-dev2"],
                                email="b@example.com", email_verified=True), what="b's one profile")  # fmt: skip
    await pipeline.wait_for(
        has(visitor("b-dev1"), merged_into=user("b-user")), what="b's lead merged"
    )
    await pipeline.wait_for(
        has(visitor("c-dev1"), possible_duplicates=[user("c-user")]), what="c's lead flagged"
    )
    await pipeline.wait_for(
        has(user("c-user"), possible_duplicates=[visitor("c-dev1")]), what="c flagged"
    )
    profiles = pipeline.outputs.latest_profiles()
    assert profiles[visitor("c-dev1")]["merged_into"] is None
    assert profiles[user("c-user")]["conversation_ids"] == []
    merges = [
        (m["from_contact_id"], m["reason"]) for m in pipeline.outputs.values("identity.merged")
    ]
    assert merges == [(visitor("b-dev1"), "email_match")]


async def test_shared_computer_and_stale_cookie(pipeline: Pipeline) -> None:
    pipeline.start_worker()
    logout = ev.logout(WS, "shared", t(3), "alice")
    await pipeline.send(LOGIN, ev.login(WS, "shared", t(1), "alice", SECRET))
    await pipeline.send(CHAT, ev.chat_start(WS, "shared", t(2), "alice-conv"))
    await pipeline.send(LOGOUT, logout)
    await pipeline.send(PV, ev.page_view(WS, "shared", t(4)))  # the cookie was not rotated
    await pipeline.send(LOGIN, ev.login(WS, "shared", t(5), "bob", SECRET))
    await pipeline.send(CHAT, ev.chat_start(WS, "shared", t(6), "bob-conv"))

    between = visitor("shared", logout["event_id"])
    await pipeline.wait_for(has(user("bob"), conversation_ids=["bob-conv"], merged_contact_ids=[between]),
                            what="bob's profile")  # fmt: skip
    await pipeline.wait_for(
        has(user("alice"), conversation_ids=["alice-conv"]), what="alice's profile"
    )

    # The topics are read in no particular order: if the logout is read before alice's login,
    # its first shutdown names nobody and a corrected one names alice once the login arrives.
    def alice_shut_down(out: OutputLog) -> bool:
        return any(s["user_id"] == "alice" for s in out.values("identity.shutdown"))

    await pipeline.wait_for(alice_shut_down, what="alice's shutdown")
    alice = pipeline.outputs.latest_profiles()[user("alice")]
    assert alice["merged_contact_ids"] == [] and alice["anonymous_ids"] == ["shared"]
    record = next(
        r for r in pipeline.outputs.of("identity.shutdown") if r.value["user_id"] == "alice"
    )
    shutdown = record.value
    assert (shutdown["reason"], shutdown["contact_id"], shutdown["anonymous_id"]) == (
        "logout",
        user("alice"),
        "shared",
    )
    assert shutdown["cause_event_id"] == logout["event_id"] and record.key == b"shared"
    assert all(
        s["cause_event_id"] == logout["event_id"]
        for s in pipeline.outputs.values("identity.shutdown")
    )


async def test_one_user_two_devices_and_a_user_switch(pipeline: Pipeline) -> None:
    pipeline.start_worker()
    switch = ev.login(WS, "e-dev2", t(4), "f-user", SECRET)
    await pipeline.send(LOGIN, ev.login(WS, "e-dev1", t(1), "e-user", SECRET))
    await pipeline.send(LOGIN, ev.login(WS, "e-dev2", t(2), "e-user", SECRET))
    await pipeline.send(LOGIN, switch)
    await pipeline.wait_for(
        has(user("e-user"), anonymous_ids=["e-dev1", "e-dev2"]), what="one profile, two devices"
    )
    await pipeline.wait_for(has(user("f-user"), anonymous_ids=["e-dev2"]), what="the second user")
    await pipeline.wait_for(
        lambda out: len(out.values("identity.shutdown")) == 1, what="the switch"
    )
    (shutdown,) = pipeline.outputs.values("identity.shutdown")
    assert (shutdown["reason"], shutdown["user_id"], shutdown["cause_event_id"]) == (
        "user_switch",
        "e-user",
        switch["event_id"],
    )


async def test_forged_claims_are_rejected_and_change_nothing(pipeline: Pipeline) -> None:
    pipeline.start_worker()
    victim = ev.login(WS, "victim-dev", t(1), "victim", SECRET)
    await pipeline.send(LOGIN, victim)
    await pipeline.wait_for(has(user("victim"), anonymous_ids=["victim-dev"]), what="the victim")
    attacks = {
        "forged-hash": {**ev.login(WS, "evil-1", t(2), "victim", SECRET), "user_hash": "f" * 64},
        "other-secret": ev.login(WS, "evil-2", t(2), "victim", SECRET, identity_token=ev.jwt_hs256(
            SECRETS["ws-b"], {"user_id": "victim", "exp": TOKEN_EXP})),
        "alg-none": ev.login(WS, "evil-3", t(2), "victim", SECRET, identity_token=ev.jwt_hs256(
            SECRET, {"user_id": "victim", "exp": TOKEN_EXP}, header={"alg": "none"})),
        "expired": ev.login(WS, "evil-4", t(2), "victim", SECRET, identity_token=ev.jwt_hs256(
            SECRET, {"user_id": "victim", "exp": 1795500000})),
    }  # fmt: skip
    for key, event in attacks.items():
        await pipeline.send(LOGIN, event, key=key)
    await pipeline.wait_for(
        lambda out: len(out.values("identity.rejected")) == 4, what="four rejections"
    )
    reasons = {r.key.decode(): r.value["reason"] for r in pipeline.outputs.of("identity.rejected")}
    assert reasons == {"forged-hash": "unverified_identity", "other-secret": "unverified_identity",
                       "alg-none": "invalid_token", "expired": "expired_token"}  # fmt: skip
    assert pipeline.outputs.latest_profiles()[user("victim")]["anonymous_ids"] == ["victim-dev"]
    assert (
        len(
            [
                p
                for p in pipeline.outputs.values("identity.profiles")
                if p["contact_id"] == user("victim")
            ]
        )
        == 1
    )
