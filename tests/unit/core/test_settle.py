"""Folded devices (R15, `pipeline.core.settle`): a long history in chunk records behind a carry.

The expected values are worked out from the rules: where the cuts fall, what a record keeps,
that a late event behind the carry is decided as on the whole device, and that an erasure
reaches the chunk records.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import replace
from datetime import UTC, datetime

from pipeline.core import ids
from pipeline.core.facts import SessionFact, chunk_idents
from pipeline.core.oracle import Oracle
from pipeline.core.rules import CoreConfig
from pipeline.core.settle import cuts
from schemas import EraseRequest
from tests.support import events as ev

SECRET = "settle-secret-0123456789abcdef0123"
CONFIG = CoreConfig(secrets={"ws": (SECRET.encode(),)}, fold_sessions=4, fold_margin_ms=0)
WHOLE = replace(CONFIG, fold_sessions=10**9)
START = ev.HOURS_START
stamp, epoch_ms = ev.at_hour, ev.epoch_ms_at_hour


def library(sessions: int) -> list[dict]:
    """Reader n logs in at hour 2n, chats at 2n + 0.5 and logs out at 2n + 1."""
    events = []
    for n in range(sessions):
        reader = f"reader-{n}"
        events += [ev.login("ws", "lib", stamp(2 * n), reader, SECRET),
                   ev.chat_start("ws", "lib", stamp(2 * n + 0.5), f"conv-{n}"),
                   ev.logout("ws", "lib", stamp(2 * n + 1), reader)]  # fmt: skip
    return events


def run(events: list[dict], config: CoreConfig = CONFIG) -> Oracle:
    oracle = Oracle(config)
    for event in events:
        oracle.apply(ev.model(event))
    return oracle


def facts(ats: list[int]) -> tuple[SessionFact, ...]:
    return tuple(SessionFact(at, f"e{i}", "login", "u") for i, at in enumerate(ats))


def test_cuts_fall_every_size_facts_past_equal_times_and_keep_size_after() -> None:
    assert cuts(facts([1, 2, 3, 4, 5]), 2) == [2]  # a cut at 4 would keep one fact only
    assert cuts(facts([1, 2, 3, 4, 5, 6]), 2) == [2, 4]
    # Facts 1 and 2 share a time: the cut moves past both.
    assert cuts(facts([1, 2, 2, 3, 4, 5]), 2) == [3]
    assert cuts(facts([1, 2, 3]), 2) == []


def test_cuts_fall_a_margin_before_the_latest_fact_unless_four_chunks_come_after() -> None:
    # Facts at hours 0-39, a margin of 24 h: cuts at facts 4, 8, 12 (at or before hour 15),
    # then at 16, 20, 24 (16 facts or more after them); not at 28 (hour 28, 12 facts after).
    assert cuts(facts(list(range(40))), 4, 24) == [4, 8, 12, 16, 20, 24]
    # All ten facts within the margin: cut only while 8 or more come after.
    assert cuts(facts(list(range(10))), 2, 24) == [2]


def test_a_long_history_keeps_a_bounded_record_and_the_rest_in_chunks() -> None:
    events = library(20)  # 40 session facts, fact i at hour i; 4 a chunk
    oracle = run(events)
    device = oracle.devices["ws", "lib"]
    # Cuts before facts 4, 8, ..., 36, each leaving 4 or more: the record keeps facts 36-39.
    assert [f.at for f in device.sessions] == [epoch_ms(h) for h in (36, 37, 38, 39)]
    assert device.carry is not None and device.carry.chunks == 9
    # The device was between sessions there: reader-17's logout began the visitor it carries.
    assert device.carry.kind == "visitor" and device.carry.user_id is None
    assert device.carry.start_key == 2 * epoch_ms(35) and device.carry.chats == ()
    chunks = [oracle.chunks["ws", ident] for ident in chunk_idents("lib", device)]
    assert [len(c.sessions) for c in chunks] == [4] * 9
    assert sum(len(c.chats) for c in chunks) == 18  # the chats of readers 0-17
    assert [c.conversation_id for c in device.chats] == ["conv-18", "conv-19"]
    assert device.unfolded(chunks) == run(events, WHOLE).devices["ws", "lib"]


def test_a_new_session_reads_no_chunk_and_publishes_what_a_short_history_does() -> None:
    short, long = run(library(3)), run(library(30))
    for n, oracle in ((3, short), (30, long)):
        login = oracle.apply(ev.model(ev.login("ws", "lib", stamp(2 * n), f"reader-{n}", SECRET)))
        assert not any(table == "chunks" for table, _ in login.reads)
        assert len(login.reads) <= 12 and [e.topic for e in login.emits] == [
            "identity.merged", "identity.profiles", "identity.profiles"]  # fmt: skip


def test_a_late_logout_behind_the_carry_is_decided_on_the_whole_device() -> None:
    # Reader 2 logs out at hour 4.25, before the chat of hour 4.5: the chat becomes the
    # visitor's after her, as it would have been in order.
    late = ev.logout("ws", "lib", stamp(4.25), "reader-2")
    events = library(20)
    folded, whole = run(events), run(events, WHOLE)
    transition = folded.apply(ev.model(late))
    assert any(table == "chunks" for table, _ in transition.reads)
    assert transition.emits == whole.apply(ev.model(late)).emits
    assert folded.profiles() == whole.profiles()
    reader = folded.profiles()[ids.user_contact_id("ws", "reader-2")]
    assert reader.conversation_ids == []
    device = folded.devices["ws", "lib"]
    chunks = [folded.chunks["ws", ident] for ident in chunk_idents("lib", device)]
    assert device.unfolded(chunks) == whole.devices["ws", "lib"]


def test_erasing_a_user_of_a_folded_device_reaches_its_chunks() -> None:
    oracle = run(library(20))
    proof = hmac.new(SECRET.encode(), b"erase:user:reader-3", hashlib.sha256).hexdigest()
    oracle.apply(EraseRequest.model_validate({"event_id": "erase-1", "workspace_id": "ws",
                 "timestamp": stamp(100), "subject": "user:reader-3", "proof": proof}))  # fmt: skip
    text = repr(sorted(oracle.chunks.items())) + repr(sorted(oracle.devices.items()))
    assert "reader-3" not in text and "conv-3" not in text
    assert "reader-4" in text and "conv-4" in text  # another reader's history stays
    assert ids.user_contact_id("ws", "reader-3") not in oracle.profiles()


def laptop(sessions: int, *, chats: int | None = None) -> list[dict]:
    """Its owner logs in at hour 3n, chats at 3n + 0.5 (the first `chats` sessions) and logs
    out at 3n + 1."""
    events = []
    for n in range(sessions):
        events.append(ev.login("ws", "lap", stamp(3 * n), "owner", SECRET))
        if chats is None or n < chats:
            events.append(ev.chat_start("ws", "lap", stamp(3 * n + 0.5), f"conv-{n}"))
        events.append(ev.logout("ws", "lap", stamp(3 * n + 1), "owner"))
    return events


def test_a_folded_device_keeps_its_users_settled_part_in_their_records() -> None:
    events = laptop(20)  # 40 session facts; login n is fact 2n, logout n fact 2n + 1
    oracle = run(events)
    device = oracle.devices["ws", "lap"]
    # Cuts before facts 4, 8, ..., 36: the record keeps sessions 18 and 19, and carries the
    # visitor that logout 17 began (login 18 merges it, in the record).
    assert device.carry is not None and device.carry.key == 2 * epoch_ms(54)
    assert device.carry.kind == "visitor" and device.carry.parts
    part = oracle.users["ws", "owner"].past["lap"]
    first_login = next(e for e in events if e["event_id"].startswith("login"))
    assert part.first == (epoch_ms(0), first_login["event_id"])
    assert part.created == epoch_ms(0) and part.latest_start == epoch_ms(51)
    assert part.updated == epoch_ms(51.5)  # the chat of the 18th login, the last settled
    # Sessions 0-17 with their chats; the visitors of logouts 0-16, merged by logins 1-17 (the
    # first visitor never was one: the laptop logged in straight away).
    assert part.conversations_total == 18 and len(part.conversations) == 18
    assert part.merged_total == 17 and all(not by_email for _, _, by_email in part.merged)


def test_a_users_profile_with_settled_sessions_reads_no_chunk() -> None:
    events = laptop(20)
    folded, whole = run(events), run(events, WHOLE)
    login = ev.login("ws", "lap", stamp(60), "owner", SECRET)
    transition = folded.apply(ev.model(login))
    assert not any(table == "chunks" for table, _ in transition.reads)
    assert transition.emits == whole.apply(ev.model(login)).emits
    profile = folded.profiles()[ids.user_contact_id("ws", "owner")]
    assert profile == whole.profiles()[ids.user_contact_id("ws", "owner")]
    assert profile.created_at == datetime(2026, 11, 1, tzinfo=UTC)
    assert profile.conversation_ids == [f"conv-{n}" for n in range(20)]
    assert len(profile.merged_contact_ids) == 20  # the visitors of logouts 0-19


def test_a_settled_part_keeps_the_most_recent_entries_and_counts_the_rest() -> None:
    limited = replace(CONFIG, profile_list_limit=5)
    events = laptop(20, chats=10)  # conversations in the settled sessions only
    folded, whole = run(events, limited), run(events, replace(limited, fold_sessions=10**9))
    part = folded.users["ws", "owner"].past["lap"]
    assert [c for c, _, _ in part.conversations] == [f"conv-{n}" for n in range(5, 10)]
    assert part.conversations_total == 10 and len(part.merged) == 5 and part.merged_total == 17
    login = ev.login("ws", "lap", stamp(60), "owner", SECRET)
    transition = folded.apply(ev.model(login))
    assert not any(table == "chunks" for table, _ in transition.reads)
    whole.apply(ev.model(login))
    profile = folded.profiles()[ids.user_contact_id("ws", "owner")]
    assert profile == whole.profiles()[ids.user_contact_id("ws", "owner")]
    assert profile.conversation_ids == [f"conv-{n}" for n in range(5, 10)]
    assert profile.totals == {"conversation_ids": 10, "merged_contact_ids": 20}
    assert "truncated" in profile.flags


def test_erasing_a_folded_device_takes_its_users_settled_parts() -> None:
    oracle = run(library(20))
    parted = {u for (_, u), user in oracle.users.items() if "lib" in user.past}
    assert parted == {f"reader-{n}" for n in range(18)}  # readers 0-17 lie behind the carry
    proof = hmac.new(SECRET.encode(), b"erase:device:lib", hashlib.sha256).hexdigest()
    oracle.apply(EraseRequest.model_validate({"event_id": "erase-1", "workspace_id": "ws",
                 "timestamp": stamp(100), "subject": "device:lib", "proof": proof}))  # fmt: skip
    assert not any("lib" in user.past for user in oracle.users.values())
    assert ("ws", "lib") not in oracle.devices and not oracle.chunks


def test_a_device_folded_again_into_one_record_drops_its_users_settled_parts() -> None:
    oracle = run(laptop(20))
    assert "lap" in oracle.users["ws", "owner"].past
    # Chunks of 100 now: read whole for a late chat behind the carry, the device no longer
    # folds, and keeps every fact in its record.
    oracle.config = replace(CONFIG, fold_sessions=100)
    oracle.apply(ev.model(ev.chat_start("ws", "lap", stamp(1.5), "late")))
    assert oracle.devices["ws", "lap"].carry is None and not oracle.chunks
    assert "lap" not in oracle.users["ws", "owner"].past
    profile = oracle.profiles()[ids.user_contact_id("ws", "owner")]
    # The late chat is the visitor's after logout 0, merged by login 1: listed in time order.
    assert profile.conversation_ids[:3] == ["conv-0", "late", "conv-1"]
    assert len(profile.merged_contact_ids) == 19  # the visitors of logouts 0-18
