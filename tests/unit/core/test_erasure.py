"""Erasure (R16) in the pure core, with expectations worked out by hand from the SPEC.

The world of the first tests, workspace w1, erasure of ann at 10:30:

    d1  10:00 page view, 10:01 chat conv-ann-1 (ann@example.com, "Ann"), 10:02 ann signs up
        (a token signing ann@example.com), 10:03 chat conv-ann-2
    d2  (shared) 10:10 bob logs in, 10:11 chat conv-bob-1, 10:12 bob logs out, 10:13 ann logs
        in, 10:14 chat conv-ann-3, 10:15 ann logs out, 10:16 page view, 10:17 chat
        conv-visitor-1, 10:18 bob logs in again

Before: ann's profile holds conv-ann-1..3 and the visitors merged into it, d1's first visitor
(it browsed at 10:00) and d2's visitor after bob's logout (it exists from 10:12); bob's holds
conv-bob-1 and conv-visitor-1 (d2's visitor after ann's logout, merged by bob's login at
10:18). After: ann and both visitors merged into her are tombstoned, bob's profile is as it was.
"""

from __future__ import annotations

import hashlib
import hmac

from pipeline.core import ids
from pipeline.core.model import Applied, Refusal, Unchanged
from pipeline.core.oracle import Oracle
from pipeline.core.rules import CoreConfig
from schemas import Erased, EraseRequest
from tests.support import events as ev

SECRET = "secret-one-0123456789abcdef012345"
# Devices fold after two session facts (R15): erasure reaches into their chunk records too.
CONFIG = CoreConfig(
    secrets={"w1": (SECRET.encode(),), "w2": (b"secret-two-0123456789abcdef01234",)},
    fold_sessions=1,
    fold_margin_ms=0,
)
ANN_TOKEN = ev.jwt_hs256(SECRET, {"user_id": "ann", "exp": 1795600000, "email": "ann@example.com"})


def at(hhmm: str) -> str:
    return f"2026-11-24T{hhmm}:00Z"


def erase(subject: str, when: str = "10:30", *, ws: str = "w1", secret: str = SECRET,
          event_id: str = "erase-1") -> EraseRequest:  # fmt: skip
    proof = hmac.new(secret.encode(), f"erase:{subject}".encode(), hashlib.sha256).hexdigest()
    return EraseRequest.model_validate({"event_id": event_id, "workspace_id": ws,
                                        "timestamp": at(when), "subject": subject, "proof": proof})  # fmt: skip


def world(oracle: Oracle | None = None) -> tuple[Oracle, dict[str, str]]:
    oracle = oracle or Oracle(CONFIG)
    logout_bob = {**ev.logout("w1", "d2", at("10:12"), "bob"), "event_id": "logout-1"}
    logout_ann = {**ev.logout("w1", "d2", at("10:15"), "ann"), "event_id": "logout-2"}
    events = [
        ev.page_view("w1", "d1", at("10:00")),
        ev.chat_start("w1", "d1", at("10:01"), "conv-ann-1", email="ann@example.com", name="Ann"),
        ev.signup("w1", "d1", at("10:02"), "ann", SECRET, identity_token=ANN_TOKEN, name="Ann"),
        ev.chat_start("w1", "d1", at("10:03"), "conv-ann-2"),
        ev.login("w1", "d2", at("10:10"), "bob", SECRET),
        ev.chat_start("w1", "d2", at("10:11"), "conv-bob-1"),
        logout_bob,
        ev.login("w1", "d2", at("10:13"), "ann", SECRET),
        ev.chat_start("w1", "d2", at("10:14"), "conv-ann-3"),
        logout_ann,
        ev.page_view("w1", "d2", at("10:16")),
        ev.chat_start("w1", "d2", at("10:17"), "conv-visitor-1"),
        ev.login("w1", "d2", at("10:18"), "bob", SECRET),
    ]
    for index, event in enumerate(events):
        if event not in (logout_bob, logout_ann):  # ids by position: the same in every world
            event = {**event, "event_id": f"{event['event_id'].split('-')[0]}-w{index}"}
        oracle.apply(ev.model(event))
    contacts = {
        "ann": ids.user_contact_id("w1", "ann"),
        "bob": ids.user_contact_id("w1", "bob"),
        "d1 first": ids.visitor_contact_id("w1", "d1", "origin"),
        "d2 after bob": ids.visitor_contact_id("w1", "d2", logout_bob["event_id"]),
        "d2 after ann": ids.visitor_contact_id("w1", "d2", logout_ann["event_id"]),
    }
    return oracle, contacts


def stored_text(oracle: Oracle) -> str:
    """Every stored record of the state, as text (the processed-event log of the test aside).

    A tombstoned contact reads as absent, as one never published.
    """
    contacts = {k: v for k, v in oracle.contacts.items() if v is not None}
    tables = (oracle.devices, oracle.users, oracle.emails, contacts, oracle.tokens,
              oracle.erasures, oracle.chunks)  # fmt: skip
    return repr([sorted(table.items(), key=repr) for table in tables])


def test_the_world_before_the_erasure_is_as_worked_out() -> None:
    oracle, c = world()
    profiles = oracle.profiles()
    ann, bob = profiles[c["ann"]], profiles[c["bob"]]
    assert ann.conversation_ids == ["conv-ann-1", "conv-ann-2", "conv-ann-3"]
    assert ann.merged_contact_ids == sorted([c["d1 first"], c["d2 after bob"]])
    assert ann.email == "ann@example.com" and ann.name == "Ann"
    assert bob.conversation_ids == ["conv-bob-1", "conv-visitor-1"]
    assert bob.merged_contact_ids == [c["d2 after ann"]]


def test_erasing_a_user_on_two_devices_leaves_the_other_user_of_the_shared_one_as_he_was() -> None:
    oracle, c = world()
    bob_before = oracle.profiles()[c["bob"]]
    result = oracle.apply(erase("user:ann"))
    profiles = oracle.profiles()
    removed = sorted([c["ann"], c["d1 first"], c["d2 after bob"]])
    assert not set(removed) & set(profiles)
    assert profiles[c["bob"]] == bob_before
    tombstones = sorted(e.key for e in result.emits if e.topic == "identity.profiles")
    assert tombstones == removed  # a tombstone each, and no other profile is published
    assert all(e.value is None for e in result.emits if e.topic == "identity.profiles")
    (erased,) = [e for e in result.emits if e.topic == "identity.erased"]
    assert erased.key == "ann"
    assert isinstance(erased.value, Erased)
    assert erased.value.subject == "user:ann"
    assert erased.value.contact_ids == removed
    assert erased.value.anonymous_ids == ["d1", "d2"]
    assert {e.topic for e in result.emits} == {"identity.profiles", "identity.erased"}
    text = stored_text(oracle)
    for personal in ("ann", "Ann", "conv-ann-1", "conv-ann-2", "conv-ann-3"):
        assert personal not in text


def test_the_erased_user_s_late_events_are_refused_and_name_her_nowhere() -> None:
    oracle, c = world()
    oracle.apply(erase("user:ann"))
    profiles = oracle.profiles()
    login = oracle.apply(ev.model(ev.login("w1", "d3", at("10:20"), "ann", SECRET)))
    assert login.outcome == Refusal("erased", login.outcome.detail)  # type: ignore[union-attr]
    logout_event = ev.logout("w1", "d3", at("10:21"), "ann")
    logout = oracle.apply(ev.model(logout_event))
    assert getattr(logout.outcome, "reason", None) == "erased"
    # A chat stamped inside ann's session on the shared device is in no one's profile.
    chat = oracle.apply(ev.model(ev.chat_start("w1", "d2", at("10:14"), "conv-late")))
    assert not login.emits and not chat.emits
    assert all("conv-late" not in p.conversation_ids for p in oracle.profiles().values())
    # The logout still ends d3's session (whoever was there): a new visitor begins, no one's.
    (visitor,) = [e.value for e in logout.emits]
    assert visitor.contact_id == ids.visitor_contact_id("w1", "d3", logout_event["event_id"])
    assert visitor.type == "visitor" and visitor.user_id is None and visitor.merged_into is None
    assert c["ann"] not in oracle.profiles()
    assert {k: v for k, v in oracle.profiles().items() if k in profiles} == profiles
    text = stored_text(oracle)
    for personal in ("ann", "Ann", "conv-late"):
        assert personal not in text


def test_a_lead_typing_her_e_mail_after_her_erasure_is_matched_into_no_one() -> None:
    """A chat stamped before her erasure, with the e-mail she verified, read after it.

    Before the erasure it would have been a lead merged into her (R7), which the erasure
    removes: it is that lead, published nowhere, and her e-mail is stored nowhere. The device's
    visitor after the match begins as it would have: empty, no one's.
    """
    oracle, _ = world()
    oracle.apply(erase("user:ann"))
    profiles = oracle.profiles()
    chat = oracle.apply(ev.model({**ev.chat_start("w1", "d4", at("10:20"), "conv-phone",
                                                  email="Ann@Example.com", name="Ann"),
                                  "event_id": "chat-w13"}))  # fmt: skip
    assert chat.outcome == Applied()
    (after,) = [e.value for e in chat.emits]
    assert after is not None and after.anonymous_ids == ["d4"]
    assert after.contact_id == ids.visitor_contact_id("w1", "d4", ids.email_session("chat-w13"))
    assert (after.type, after.email, after.conversation_ids, after.merged_into) == (
        "visitor", None, [], None)  # fmt: skip
    assert {k: v for k, v in oracle.profiles().items() if k != after.contact_id} == profiles
    text = stored_text(oracle)
    for personal in ("ann@example.com", "Ann", "conv-phone"):
        assert personal not in text
    # After her erasure's time, the same e-mail is anyone's to type: a lead of its own.
    later = oracle.apply(ev.model(ev.chat_start("w1", "d4", at("10:40"), "conv-later",
                                                email="ann@example.com")))  # fmt: skip
    (lead,) = [e.value for e in later.emits if e.topic == "identity.profiles"]
    assert lead.type == "lead" and lead.email == "ann@example.com"
    assert lead.conversation_ids == ["conv-later"] and lead.merged_into is None


def test_a_chat_in_her_session_until_a_late_logout_is_gone() -> None:
    """Privacy first: a chat read while it lies in an erased user's session goes with it.

    On the shared d2 ann logs out at 10:15 and a visitor chats at 10:17; read in that order,
    the visitor keeps its conversation through ann's erasure. Read with the logout last, after
    the erasure, the chat lay in her session when her sessions were emptied: it is gone, and
    the logout then begins the visitor without it (the one case where the order of an
    erasure and the events changes the final profiles; the any-order law names it).
    """
    oracle = Oracle(CONFIG)
    logout = {**ev.logout("w1", "d2", at("10:15"), "ann"), "event_id": "logout-ann"}
    for event in (ev.login("w1", "d2", at("10:13"), "ann", SECRET),
                  ev.chat_start("w1", "d2", at("10:17"), "conv-visitor")):  # fmt: skip
        oracle.apply(ev.model(event))
    oracle.apply(erase("user:ann"))
    oracle.apply(ev.model(logout))
    visitor = ids.visitor_contact_id("w1", "d2", "logout-ann")
    assert all("conv-visitor" not in p.conversation_ids for p in oracle.profiles().values())
    assert oracle.profiles()[visitor].type == "visitor"  # the logout begins it, empty
    assert oracle.profiles()[visitor].conversation_ids == []
    assert "conv-visitor" not in stored_text(oracle)
    # In the other order the visitor keeps it.
    ordered = Oracle(CONFIG)
    for event in (ev.login("w1", "d2", at("10:13"), "ann", SECRET), logout,
                  ev.chat_start("w1", "d2", at("10:17"), "conv-visitor")):  # fmt: skip
        ordered.apply(ev.model(event))
    ordered.apply(erase("user:ann"))
    assert ordered.profiles()[visitor].conversation_ids == ["conv-visitor"]


def test_a_wrong_proof_is_refused_and_changes_nothing() -> None:
    oracle, _ = world()
    before = stored_text(oracle)
    for request in (erase("user:ann", secret="not-the-secret-0123456789abcdef0"),
                    erase("user:ann", ws="w2", secret="secret-two-0123456789abcdef01234")
                    .model_copy(update={"workspace_id": "w1"})):  # fmt: skip
        result = oracle.apply(request, dedup=False)
        assert result.outcome == Refusal("unverified_identity", result.outcome.detail)  # type: ignore[union-attr]
        assert not result.writes and not result.emits
    assert stored_text(oracle) == before


def test_erasing_twice_changes_nothing_the_second_time() -> None:
    oracle, _ = world()
    oracle.apply(erase("user:ann"))
    state = stored_text(oracle)
    for event_id in ("erase-1", "erase-2"):
        again = oracle.apply(erase("user:ann", event_id=event_id), dedup=False)
        assert again.outcome == Unchanged() and not again.writes and not again.emits
    assert stored_text(oracle) == state


def test_a_later_signup_of_the_erased_user_id_starts_a_new_empty_profile() -> None:
    oracle, c = world()
    oracle.apply(erase("user:ann"))
    oracle.apply(ev.model(ev.signup("w1", "d3", at("10:40"), "ann", SECRET)))
    ann = oracle.profiles()[c["ann"]]
    assert ann.anonymous_ids == ["d3"]
    assert ann.conversation_ids == [] and ann.merged_contact_ids == []
    assert ann.email is None and ann.name is None
    assert ann.created_at.isoformat() == "2026-11-24T10:40:00+00:00"
    # Her events before the erasure stay refused, also now that she has a record again.
    late = oracle.apply(ev.model(ev.login("w1", "d1", at("10:25"), "ann", SECRET)))
    assert getattr(late.outcome, "reason", None) == "erased"


def test_erasing_a_device_removes_its_visitors_and_its_facts_from_its_users() -> None:
    """d4: 10:00 page view, 10:01 chat conv-d4-1, 10:02 carol logs in, 10:03 chat conv-d4-2;
    d5: 10:05 carol logs in. Erasing d4 at 10:30 tombstones d4's first visitor; carol keeps
    her profile with d5 only and no conversation."""
    oracle = Oracle(CONFIG)
    for event in (
        ev.page_view("w1", "d4", at("10:00")),
        ev.chat_start("w1", "d4", at("10:01"), "conv-d4-1"),
        ev.login("w1", "d4", at("10:02"), "carol", SECRET),
        ev.chat_start("w1", "d4", at("10:03"), "conv-d4-2"),
        ev.login("w1", "d5", at("10:05"), "carol", SECRET),
    ):
        oracle.apply(ev.model(event))
    visitor = ids.visitor_contact_id("w1", "d4", "origin")
    carol = ids.user_contact_id("w1", "carol")
    assert oracle.profiles()[carol].conversation_ids == ["conv-d4-1", "conv-d4-2"]
    result = oracle.apply(erase("device:d4"))
    profiles = oracle.profiles()
    assert visitor not in profiles
    assert profiles[carol].anonymous_ids == ["d5"]
    assert profiles[carol].conversation_ids == [] and profiles[carol].merged_contact_ids == []
    (erased,) = [e.value for e in result.emits if e.topic == "identity.erased"]
    assert isinstance(erased, Erased)
    assert (erased.subject, erased.contact_ids, erased.anonymous_ids) == (
        "device:d4", [visitor], ["d4"])  # fmt: skip
    assert "conv-d4" not in stored_text(oracle)
    late = oracle.apply(ev.model(ev.page_view("w1", "d4", at("10:20"))))
    assert getattr(late.outcome, "reason", None) == "erased"
    oracle.apply(ev.model(ev.page_view("w1", "d4", at("10:40"))))
    assert profiles_created(oracle, visitor) == "2026-11-24T10:40:00+00:00"


def profiles_created(oracle: Oracle, contact_id: str) -> str:
    return oracle.profiles()[contact_id].created_at.isoformat()


def test_an_erasure_before_the_subject_s_events_gives_the_same_profiles() -> None:
    """As a replay into empty state reads them: the erasure first, then all of her events.

    Her chats go too, and the lead she was on d1 (her e-mail, verified by her signup) is
    matched into her as before: the state keeps nothing of hers either way.
    """
    after, _ = world()
    after.apply(erase("user:ann"))
    before = Oracle(CONFIG)
    before.apply(erase("user:ann"))
    world(before)
    assert before.profiles() == after.profiles()
    assert ("w1", "ann") not in before.users
    assert not any(f.user_id == "ann" for d in before.devices.values() for f in d.sessions)
    text = stored_text(before)
    for personal in ("ann", "Ann", "conv-ann-1", "conv-ann-2", "conv-ann-3"):
        assert personal not in text


def test_erasure_markers_are_found_under_any_configured_secret() -> None:
    """ann is erased while w1 has one secret; a new secret is then put first (a rotation).

    Her login stamped before the erasure (10:25 < 10:30) is still refused `erased`, erasing
    her again changes nothing, and her later signup still starts an empty profile.
    """
    oracle, c = world()
    oracle.apply(erase("user:ann"))
    rotated = CoreConfig(secrets={"w1": (b"secret-new-0123456789abcdef0123456", SECRET.encode())})
    oracle.config = rotated
    late = oracle.apply(ev.model(ev.login("w1", "d3", at("10:25"), "ann", SECRET)))
    assert getattr(late.outcome, "reason", None) == "erased"
    state = stored_text(oracle)
    again = oracle.apply(erase("user:ann", event_id="erase-2"), dedup=False)
    assert again.outcome == Unchanged() and not again.writes
    assert stored_text(oracle) == state
    oracle.apply(ev.model(ev.signup("w1", "d3", at("10:40"), "ann", SECRET)))
    assert oracle.profiles()[c["ann"]].anonymous_ids == ["d3"]
