"""Hypothesis properties of the pure core: the identity laws of SPEC R8, R11, R12, R13, R17."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import replace

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline.core import erasure, ids
from pipeline.core.facts import DeviceChunk, chunk_idents
from pipeline.core.model import View
from pipeline.core.oracle import Oracle
from pipeline.core.profiles import Lead, user_profile, visitor_profile
from pipeline.core.rules import CoreConfig, _Resolver
from tests.support import events as ev

SECRETS = {"w1": "secret-one-0123456789abcdef012345", "w2": "secret-two-0123456789abcdef012345"}
# Devices fold after two session facts (R15, `settle`), and a user's devices retire as soon as she
# links on another one later: every law holds over folded and retired history too.
CONFIG = CoreConfig(
    secrets={ws: (s.encode(),) for ws, s in SECRETS.items()},
    fold_sessions=1,
    fold_margin_ms=0,
    retire_margin_ms=0,
    retire_batch=1,
)
UNFOLDED = replace(CONFIG, fold_sessions=10**9)
UNRETIRED = replace(UNFOLDED, retire_margin_ms=None)
DEVICES = ["d1", "d2", "d3"]
USERS = ["u1", "u2", "u3"]
EMAILS = ["a@example.com", "b@example.com"]
EXAMPLES = int(os.environ.get("IDP_HYPOTHESIS_EXAMPLES", "150"))
LAW = settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def stamp(minute: int) -> str:
    return f"2026-11-24T10:{minute:02d}:00Z"


@st.composite
def an_event(
    draw: st.DrawFn, workspaces: Sequence[str], devices: Sequence[str] = DEVICES, minutes: int = 12
) -> dict:
    ws = draw(st.sampled_from(workspaces))
    device = draw(st.sampled_from(devices))
    ts = stamp(draw(st.integers(0, minutes)))
    kind = draw(st.sampled_from(["pv", "pv", "chat", "login", "signup", "logout"]))
    if kind == "pv":
        return ev.page_view(ws, device, ts)
    if kind == "chat":
        email = draw(st.none() | st.sampled_from(EMAILS))
        extra = {"email": email} if email else {}
        return ev.chat_start(ws, device, ts, f"conv-{draw(st.integers(0, 3))}", **extra)
    user = draw(st.sampled_from(USERS))
    if kind == "logout":
        return ev.logout(ws, device, ts, user)
    build = ev.login if kind == "login" else ev.signup
    proof = draw(st.sampled_from(["hash", "hash+email", "token", "token+email", "token+jti"]))
    extra: dict = {}
    if proof == "hash+email":
        extra["email"] = draw(st.sampled_from(EMAILS))
    if proof.startswith("token"):
        claims = {"user_id": user, "exp": 1795600000}
        if proof == "token+email":
            claims["email"] = draw(st.sampled_from(EMAILS))
        if proof == "token+jti":  # R17: bound to the device of its first use
            claims["jti"] = draw(st.sampled_from(["j1", "j2"]))
        extra["identity_token"] = ev.jwt_hs256(SECRETS[ws], claims)
    return build(ws, device, ts, user, SECRETS[ws], **extra)


def _renumber(events: list[dict]) -> list[dict]:
    """Event ids by position, so that a failing example reproduces and shrinks well."""
    return [{**e, "event_id": f"{e['event_id'].split('-')[0]}-{i}"} for i, e in enumerate(events)]


def journeys(
    workspaces: Sequence[str] = ("w1",),
    devices: Sequence[str] = DEVICES,
    size: int = 14,
    minutes: int = 12,
) -> st.SearchStrategy[list[dict]]:
    events = an_event(workspaces, devices, minutes)
    return st.lists(events, min_size=1, max_size=size).map(_renumber)


TRIP_DEVICES = [f"d{n}" for n in range(1, 10)]


@st.composite
def a_trip(draw: st.DrawFn) -> dict:
    """Mostly u1 on one device after another, which retires them (R15), among other events."""
    if draw(st.integers(0, 2)):
        return draw(an_event(("w1",), TRIP_DEVICES, 59))
    device = draw(st.sampled_from(TRIP_DEVICES))
    ts = stamp(draw(st.integers(0, 59)))
    kind = draw(st.sampled_from(["login", "login", "logout", "chat"]))
    if kind == "chat":
        return ev.chat_start("w1", device, ts, f"conv-{draw(st.integers(0, 3))}")
    if kind == "logout":
        return ev.logout("w1", device, ts, "u1")
    return ev.login("w1", device, ts, "u1", SECRETS["w1"])


TRAVELS = st.lists(a_trip(), min_size=1, max_size=30).map(_renumber)


def final_profiles(
    events: list[dict], workspace: str | None = None, *, config: CoreConfig = CONFIG
) -> dict:
    oracle = Oracle(config)
    for event in events:
        oracle.apply(ev.model(event))
    return {cid: p.model_dump() for cid, p in oracle.profiles(workspace).items()}


@LAW
@given(st.data())
def test_any_delivery_order_gives_the_same_final_profiles(data: st.DataObject) -> None:
    events = data.draw(journeys())
    shuffled = data.draw(st.permutations(events))
    assert final_profiles(shuffled) == final_profiles(events)


def from_scratch(oracle: Oracle, ws: str) -> dict:
    """Every profile derived at once from the final facts, as if no event had come before."""

    def table(records: dict) -> dict:
        return {key: value for (w, key), value in records.items() if w == ws}

    view = View(ws, devices=table(oracle.devices), users=table(oracle.users),
                emails=table(oracle.emails), tokens=table(oracle.tokens),
                erasures=table(oracle.erasures), chunks=table(oracle.chunks))  # fmt: skip
    resolver = _Resolver(view, oracle.config)  # folded devices read whole: their chunks are in
    limit = oracle.config.profile_list_limit
    found = {}
    for anonymous_id in view.devices:
        timeline = resolver.timeline(anonymous_id, new=False)
        for segment in timeline.visitors():
            if not erasure.erased_segment(segment):
                emails = {c.email: resolver.email(c.email, new=False)
                          for c in segment.chats if c.email}  # fmt: skip
                found[segment.contact_id] = visitor_profile(ws, Lead(segment, timeline), emails,
                                                            limit=limit)  # fmt: skip
    for user_id in view.users:
        profile = user_profile(ws, resolver.user_view(user_id), limit=limit)
        if profile is not None:
            found[profile.contact_id] = profile
    return {cid: p.model_dump() for cid, p in found.items()}


@LAW
@given(journeys(), st.sampled_from([10, 2, 1]))
def test_what_is_published_is_what_the_final_facts_derive(events: list[dict], limit: int) -> None:
    """Deciding an event re-derives only what it can change (R15), and that is all it changes.

    Also with the shared-identifier guard (R4) at one or two devices.
    """
    config = replace(CONFIG, shared_device_limit=limit, profile_list_limit=limit)
    oracle = Oracle(config)
    for event in events:
        oracle.apply(ev.model(event))
    published = {cid: p.model_dump() for cid, p in oracle.profiles("w1").items()}
    assert published == from_scratch(oracle, "w1")


@LAW
@given(st.data())
def test_folding_a_device_changes_no_output(data: st.DataObject) -> None:
    """A folded device (its history in chunk records behind a carry, R15) decides every event
    as the whole device does: the same outputs, in any delivery order, and the same facts."""
    events = data.draw(st.permutations(data.draw(journeys())))
    folded, whole = Oracle(CONFIG), Oracle(UNFOLDED)
    for event in events:
        assert folded.apply(ev.model(event)).emits == whole.apply(ev.model(event)).emits, event
    assert not [c for c in whole.chunks.values() if isinstance(c, DeviceChunk)]
    named = set()
    for (ws, anonymous_id), device in folded.devices.items():
        idents = chunk_idents(anonymous_id, device)
        named.update((ws, ident) for ident in idents)
        chunks = [c for i in idents if isinstance(c := folded.chunks[ws, i], DeviceChunk)]
        assert len(chunks) == len(idents)
        # The same facts; which users retired it differs (a folded device does not retire).
        assert replace(device.unfolded(chunks), retired_by=()) == replace(
            whole.devices[ws, anonymous_id], retired_by=()
        )
    assert len(folded.devices) == len(whole.devices)
    device_chunks = {k for k, c in folded.chunks.items() if isinstance(c, DeviceChunk)}
    assert device_chunks == named  # no chunk outlives its device's carry


@LAW
@given(st.data(), st.sampled_from([1000, 2, 1]))
def test_retiring_a_users_devices_changes_no_output(data: st.DataObject, limit: int) -> None:
    """A user's devices retired into her record's summary (R15) decide every event as her
    devices all listed live do: the same outputs in any delivery order, with lists of any
    length and the guard (R4) at any limit; and the summary lists no device she still uses."""
    events = data.draw(st.permutations(data.draw(TRAVELS)))
    retiring = Oracle(replace(UNFOLDED, profile_list_limit=limit, shared_device_limit=limit))
    live = Oracle(replace(UNRETIRED, profile_list_limit=limit, shared_device_limit=limit))
    for event in events:
        assert retiring.apply(ev.model(event)).emits == live.apply(ev.model(event)).emits, event
    assert retiring.profiles() == live.profiles()
    for key, user in retiring.users.items():
        whole = live.users[key]
        summary = retiring.retired(*key)
        listed = set(user.devices) | set(summary.ids if summary else ())
        assert listed == set(whole.devices)  # every device of hers is listed, live or retired
        if summary is not None:
            assert not (set(user.devices) - set(summary.returned)) & set(summary.ids)
            # Each retired device's record names her, and no other device's does (R15).
            marked = {d for (ws, d), device in retiring.devices.items()
                      if ws == key[0] and device.retired_for(key[1]) is not None}  # fmt: skip
            assert marked == set(summary.ids)


@LAW
@given(st.data())
def test_settled_parts_cut_to_the_list_limit_change_no_output(data: st.DataObject) -> None:
    """With lists of one entry, a user's settled parts (R15) keep one conversation and one merged
    contact each, and still give what the whole history gives, in any delivery order."""
    events = data.draw(st.permutations(data.draw(journeys())))
    folded = Oracle(replace(CONFIG, profile_list_limit=1))
    whole = Oracle(replace(UNFOLDED, profile_list_limit=1))
    for event in events:
        assert folded.apply(ev.model(event)).emits == whole.apply(ev.model(event)).emits, event
    assert folded.profiles() == whole.profiles()


@LAW
@given(st.data())
def test_truncated_lists_are_the_same_in_any_delivery_order(data: st.DataObject) -> None:
    """R15 with a limit of one: which entries a list keeps does not depend on arrival order."""
    events = data.draw(journeys())
    shuffled = data.draw(st.permutations(events))
    limited = replace(CONFIG, profile_list_limit=1)
    assert final_profiles(shuffled, config=limited) == final_profiles(events, config=limited)


@LAW
@given(journeys())
def test_processing_any_event_again_changes_nothing(events: list[dict]) -> None:
    oracle = Oracle(CONFIG)
    for event in events:
        oracle.apply(ev.model(event))
    before = dict(oracle.contacts), dict(oracle.devices), dict(oracle.users), dict(oracle.emails)
    for event in events:
        again = oracle.apply(ev.model(event), dedup=False)  # the transition itself, no marker
        assert not again.writes, event
        assert again.emits == () or all(e.topic == "identity.rejected" for e in again.emits)
    assert (oracle.contacts, oracle.devices, oracle.users, oracle.emails) == before


@LAW
@given(journeys())
def test_two_user_ids_never_end_in_one_contact(events: list[dict]) -> None:
    oracle = Oracle(CONFIG)
    for event in events:
        oracle.apply(ev.model(event))
    profiles = oracle.profiles()
    users = {cid for cid, p in profiles.items() if p.type == "user"}
    for cid, profile in profiles.items():
        if profile.type == "user":
            assert profile.merged_into is None
            assert cid == ids.user_contact_id(profile.workspace_id, profile.user_id)
            assert not set(profile.merged_contact_ids) & users
        else:
            assert profile.user_id is None
            assert profile.merged_into is None or profile.merged_into in users


@LAW
@given(journeys(["w1", "w2"]))
def test_nothing_crosses_workspaces(events: list[dict]) -> None:
    together = final_profiles(events)
    for ws in ("w1", "w2"):
        alone = final_profiles([e for e in events if e["workspace_id"] == ws])
        assert {cid: p for cid, p in together.items() if p["workspace_id"] == ws} == alone
    for profile in together.values():
        linked = [profile.get("merged_into")] + profile["merged_contact_ids"]
        others = final_profiles([e for e in events if e["workspace_id"] != profile["workspace_id"]])
        assert not set(filter(None, linked)) & set(others)
