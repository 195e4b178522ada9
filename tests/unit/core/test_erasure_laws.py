"""Hypothesis laws of erasure (R16), over the journeys of the identity laws.

A journey of w1 and w2 (events at 10:00-10:12) and erase requests at 10:30 for some of w1's
users and devices: the erasure is idempotent, any delivery order of the erase requests and
the events gives the same final profiles, no output after an erasure names the erased subject,
and an erasure in one workspace changes nothing in another.
"""

from __future__ import annotations

import jwt
from hypothesis import assume, given
from hypothesis import strategies as st

from pipeline.core.erasure import erase_request
from pipeline.core.oracle import Oracle
from schemas import EraseRequest
from tests.support import events as ev
from tests.unit.core.test_identity_laws import CONFIG, DEVICES, LAW, SECRETS, USERS, journeys

ERASED_AT = "2026-11-24T10:30:00Z"


def request(subject: str, ws: str = "w1", index: int = 0) -> EraseRequest:
    message = erase_request(ws, subject, SECRETS[ws].encode(), event_id=f"erase-{index}",
                            timestamp=ERASED_AT)  # fmt: skip
    return EraseRequest.model_validate(message)


subjects = st.lists(
    st.sampled_from([f"user:{u}" for u in USERS] + [f"device:{d}" for d in DEVICES]),
    min_size=1, max_size=2, unique=True,
)  # fmt: skip


def run(items: list) -> Oracle:
    oracle = Oracle(CONFIG)
    for item in items:
        oracle.apply(item if isinstance(item, EraseRequest) else ev.model(item))
    return oracle


def profiles(oracle: Oracle, workspace: str | None = None) -> dict:
    return {cid: p.model_dump() for cid, p in oracle.profiles(workspace).items()}


def names(subject: str, emitted: object) -> bool:
    """Whether an output value names the subject (its user_id or its anonymous_id)."""
    kind, _, ident = subject.partition(":")
    if emitted is None:
        return False
    data = emitted.model_dump()  # type: ignore[attr-defined]
    if kind == "user":
        return data.get("user_id") == ident
    return ident in (data.get("anonymous_ids") or []) or data.get("anonymous_id") == ident


@LAW
@given(journeys(["w1", "w2"]), subjects)
def test_erasing_again_changes_nothing(events: list[dict], erased: list[str]) -> None:
    oracle = run([*events, *(request(s, index=i) for i, s in enumerate(erased))])
    state = profiles(oracle), dict(oracle.devices), dict(oracle.users), dict(oracle.emails)
    for i, subject in enumerate(erased):
        again = oracle.apply(request(subject, index=i), dedup=False)
        assert not again.writes and not again.emits
    assert (profiles(oracle), oracle.devices, oracle.users, oracle.emails) == state


def moved_after(items: list) -> bool:
    """Whether a login or logout after a user's erasure may move a chat read before it.

    Read last, a boundary on the chat's device can move it out of the erased user's session
    (or out of a visitor merged into her: a login at her login's time, say), and another
    user's verification of the e-mail the chat carried can make its lead someone else's (R7:
    matched into her alone, or into nobody); read before them, the chat is hers when the
    erasure (or a marker that came first) empties her sessions and leads, conversation and
    all. Privacy comes first, so the final profiles differ: the one exception to the law (see
    `test_a_chat_in_her_session_until_a_late_logout_is_gone`, test_erasure.py).

    Also: a user's erasure leaves her e-mail verification in the e-mail's marker (so that leads
    typing it stay matched into her), and a later erasure of the device whose login carried the
    verification does not take that back, while a device erasure read before hers removes the
    claim itself: with both erased, such a lead may end matched into her, or nobody's
    (docs/design.md, *Erasure*).
    """
    erased = {item.subject for item in items if isinstance(item, EraseRequest)}
    for item in items:
        if isinstance(item, dict) and "user_id" in item and item.get("identity_token"):
            claim = jwt.decode(item["identity_token"], options={"verify_signature": False})
            both = {f"user:{item['user_id']}", f"device:{item['anonymous_id']}"}
            if claim.get("email") and both <= erased:
                return True
    erasing = False
    chats: list[dict] = []
    for item in items:
        if isinstance(item, EraseRequest):
            erasing = erasing or item.subject.startswith("user:")
        elif "conversation_id" in item:
            chats.append(item)
        elif "user_id" in item and erasing:
            token = item.get("identity_token")
            claim = jwt.decode(token, options={"verify_signature": False}) if token else {}
            if any(c["anonymous_id"] == item["anonymous_id"] for c in chats):
                return True
            if claim.get("email") and any(c.get("email") == claim["email"] for c in chats):
                return True
    return False


@LAW
@given(st.data())
def test_erasures_and_events_in_any_order_give_the_same_final_profiles(
    data: st.DataObject,
) -> None:
    events = data.draw(journeys(["w1"]))
    erased = data.draw(subjects)
    items = [*events, *(request(s, index=i) for i, s in enumerate(erased))]
    shuffled = data.draw(st.permutations(items))
    assume(not moved_after(shuffled))
    assert profiles(run(shuffled)) == profiles(run(items))


@LAW
@given(st.data())
def test_no_output_after_an_erasure_names_the_erased_subject(data: st.DataObject) -> None:
    events = data.draw(journeys(["w1"]))
    (subject,) = data.draw(subjects.map(lambda s: s[:1]))
    before = data.draw(st.integers(0, len(events)))
    oracle = run(events[:before])
    oracle.apply(request(subject))
    final = profiles(oracle)
    for event in events[before:]:
        result = oracle.apply(ev.model(event))
        for emit in result.emits:
            if emit.topic != "identity.rejected":
                assert not names(subject, emit.value), (subject, emit)
    for profile in oracle.profiles().values():
        assert not names(subject, profile)
    del final


@LAW
@given(journeys(["w1", "w2"]), subjects)
def test_an_erasure_changes_nothing_in_another_workspace(
    events: list[dict], erased: list[str]
) -> None:
    alone = profiles(run(events), "w2")
    with_erasures = run([*(request(s, index=i) for i, s in enumerate(erased)), *events])
    assert profiles(with_erasures, "w2") == alone
