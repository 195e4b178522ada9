"""A user's retired devices (R15, `facts.Retired`): the devices she no longer uses, summarised.

The expected values are worked out from the rules: which devices retire (every fact of theirs
a margin before her latest link), that her profile still lists them all, that the guard (R4)
still counts those within its window, and that an event landing before her point, or an
erasure, is decided with all her devices live.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import replace
from datetime import timedelta

import pytest

from pipeline.core import ids, profiles
from pipeline.core.facts import Retired, SettledPart
from pipeline.core.model import View
from pipeline.core.oracle import Oracle
from pipeline.core.rules import CoreConfig, Timelines
from schemas import EraseRequest
from tests.support import events as ev

SECRET = "retire-secret-0123456789abcdef01234"
HOUR = 3_600_000
CONFIG = CoreConfig(secrets={"ws": (SECRET.encode(),)}, retire_margin_ms=6 * HOUR, retire_batch=1)
LIVE = replace(CONFIG, retire_margin_ms=None)  # every device listed live, as a reference
START = ev.HOURS_START
stamp, epoch_ms = ev.at_hour, ev.epoch_ms_at_hour
TRAVELLER = ids.user_contact_id("ws", "t")


def travels(devices: int) -> list[dict]:
    """Device b<n> browses at hour 3n and the traveller logs in on it 6 minutes later."""
    events = []
    for n in range(devices):
        events += [ev.page_view("ws", f"b{n}", stamp(3 * n)),
                   ev.login("ws", f"b{n}", stamp(3 * n + 0.1), "t", SECRET)]  # fmt: skip
    return events


def run(events: list[dict], config: CoreConfig = CONFIG) -> Oracle:
    oracle = Oracle(config)
    for event in events:
        oracle.apply(ev.model(event))
    return oracle


def test_devices_a_margin_before_her_latest_link_retire_and_her_profile_lists_them_all() -> None:
    oracle = run(travels(10))
    user = oracle.users["ws", "t"]
    # Her latest link is at hour 27.1, so her point is 21.1: b0-b6 (last fact 18.1) retire;
    # b7 (its login at 21.1 is not before the point), b8 and b9 stay live.
    assert user.devices == ("b7", "b8", "b9")
    summary = oracle.retired("ws", "t")
    assert summary is not None and summary.ids == tuple(f"b{n}" for n in range(7))
    assert user.retired.point == epoch_ms(21.1)
    assert user.retired.devices_total == 7
    profile = oracle.profiles()[TRAVELLER]
    assert profile.anonymous_ids == sorted(f"b{n}" for n in range(10))
    assert profile.totals == {}
    # Each login merged its device's visitor (10 of them); her first activity is b0's at 0.
    assert len(profile.merged_contact_ids) == 10
    assert profile.created_at == START and profile.updated_at == START + timedelta(hours=27.1)
    assert oracle.profiles() == run(travels(10), LIVE).profiles()


def test_a_new_device_reads_her_live_devices_only() -> None:
    for size in (10, 40):
        oracle = run(travels(size))
        page_view, login = travels(size + 1)[-2:]
        oracle.apply(ev.model(page_view))
        transition = oracle.apply(ev.model(login))
        read = sorted(key for table, key in transition.reads if table == "devices")
        # The new device, and the three live before it (as after `travels(10)`), whatever the
        # number of her retired devices.
        assert read == sorted(f"b{n}" for n in range(size - 3, size + 1)), size


def test_her_records_stay_the_same_size_however_many_devices_she_retired() -> None:
    limited = replace(CONFIG, profile_list_limit=5)
    sizes = {}
    for size in (40, 640):
        oracle = run(travels(size), limited)
        page_view, login = travels(size + 1)[-2:]
        oracle.apply(ev.model(page_view))
        transition = oracle.apply(ev.model(login))
        # Her point is hour 3 * size - 5.9: all but her last three devices and the new one
        # retired, their ids in chunks of 500, the last of which takes the newly retired one.
        summary = oracle.retired("ws", "t")
        assert summary is not None and len(summary.ids) == size - 2
        last = (size - 3) // 500
        assert set(transition.chunks) == {f"r{last}:t", "p:t", "v:t"}
        chunks = [oracle.chunks["ws", f"r{n}:t"] for n in range(last + 1)]
        assert [len(c.ids) for c in chunks] == ([500, size - 502] if last else [size - 2])
        # The summary's lists hold the 5 most recent entries, as the profile's do.
        assert [d for d, _ in summary.devices] == [f"b{n}" for n in range(size - 7, size - 2)]
        record = oracle.users["ws", "t"].to_bytes()
        part, listed = oracle.chunks["ws", "p:t"], oracle.chunks["ws", "v:t"]
        sizes[size] = (len(record), len(part.to_bytes()), len(listed.to_bytes()))
    # Her record and each summary record differ by a few bytes (a digit more in each device name
    # and count they hold), not by the 600 more devices' ids (some 6 KB).
    assert all(big - small <= 16 for small, big in zip(sizes[40], sizes[640], strict=True)), sizes


def test_the_guard_counts_her_retired_devices_within_its_window() -> None:
    guarded = replace(CONFIG, shared_device_limit=3)
    events = [ev.login("ws", d, stamp(h), "t", SECRET) for d, h in
              (("g0", 0), ("g1", 7), ("g2", 14))]  # fmt: skip
    oracle = run(events, guarded)
    # Her point is 8: g0 (hour 0) and g1 (hour 7) retired, and both are within the 24 h window.
    user = oracle.users["ws", "t"]
    assert user.devices == ("g2",) and user.retired is not None
    assert user.retired.accepted == ((epoch_ms(0), "g0"), (epoch_ms(7), "g1"))
    fourth = ev.login("ws", "g3", stamp(15), "t", SECRET)
    outcome = oracle.apply(ev.model(fourth)).outcome
    assert getattr(outcome, "reason", None) == "shared_identifier"  # a fourth device within 24 h
    assert "shared_identifier" in oracle.profiles()[TRAVELLER].flags
    # A day after g0, g1 and g2, a new device is accepted again.
    fifth = ev.login("ws", "g4", stamp(38.5), "t", SECRET)
    assert getattr(oracle.apply(ev.model(fifth)).outcome, "reason", None) is None
    assert oracle.profiles() == run([*events, fourth, fifth], replace(LIVE,
                                    shared_device_limit=3)).profiles()  # fmt: skip


def test_a_late_link_before_her_point_is_decided_with_all_her_devices() -> None:
    retired, live = run(travels(10)), run(travels(10), LIVE)
    late = ev.login("ws", "b2", stamp(5), "t", SECRET)  # before her point (21.1)
    transition = retired.apply(ev.model(late))
    read = {key for table, key in transition.reads if table == "devices"}
    assert read >= {f"b{n}" for n in range(10)}
    assert transition.emits == live.apply(ev.model(late)).emits
    assert retired.profiles() == live.profiles()


def test_a_retired_device_she_comes_back_to_is_listed_live_again() -> None:
    retired, live = run(travels(10)), run(travels(10), LIVE)
    back = ev.login("ws", "b1", stamp(30), "t", SECRET)
    transition = retired.apply(ev.model(back))
    read = {key for table, key in transition.reads if table == "devices"}
    assert read <= {"b1", "b7", "b8", "b9"}  # not the other retired devices
    assert transition.emits == live.apply(ev.model(back)).emits
    user = retired.users["ws", "t"]
    # Her point moves to 24: b7 (last fact 21.1) retires, b8 (24.1) does not; b1 is live
    # again, its earlier segments of hers in the summary up to the point it came back at.
    assert user.devices == ("b1", "b8", "b9")
    assert user.retired is not None and user.retired.returned == {"b1": epoch_ms(21.1)}
    assert retired.profiles() == live.profiles()
    assert retired.profiles()[TRAVELLER].anonymous_ids == sorted(f"b{n}" for n in range(10))


def test_a_chat_on_a_retired_device_is_decided_with_all_her_devices() -> None:
    retired, live = run(travels(10)), run(travels(10), LIVE)
    chat = ev.chat_start("ws", "b3", stamp(30), "conv-late")  # in her session there: hers
    assert retired.apply(ev.model(chat)).emits == live.apply(ev.model(chat)).emits
    assert retired.profiles()[TRAVELLER].conversation_ids == ["conv-late"]
    assert retired.profiles() == live.profiles()


def test_lists_cut_to_the_limit_count_her_retired_devices() -> None:
    limited = replace(CONFIG, profile_list_limit=4)
    oracle = run(travels(10), limited)
    profile = oracle.profiles()[TRAVELLER]
    # The four devices of her latest sessions, of ten.
    assert profile.anonymous_ids == ["b6", "b7", "b8", "b9"]
    assert profile.totals["anonymous_ids"] == 10 and "truncated" in profile.flags
    assert oracle.profiles() == run(travels(10), replace(LIVE, profile_list_limit=4)).profiles()


def erase(subject: str) -> EraseRequest:
    proof = hmac.new(SECRET.encode(), f"erase:{subject}".encode(), hashlib.sha256).hexdigest()
    return EraseRequest.model_validate({"event_id": f"erase-{subject}", "workspace_id": "ws",
                                        "timestamp": stamp(100), "subject": subject,
                                        "proof": proof})  # fmt: skip


def test_erasing_her_reaches_her_retired_devices() -> None:
    oracle = run(travels(10))
    oracle.apply(erase("user:t"))
    assert ("ws", "t") not in oracle.users
    text = repr(sorted(oracle.devices.items()))
    assert "'t'" not in text  # no device names her any more, retired or live
    assert not [ident for _, ident in oracle.chunks if ident.endswith(":t")]  # nor any chunk
    assert TRAVELLER not in oracle.profiles()


def replays(devices: int) -> list[dict]:
    """Her user_hash replayed from a new device r<n> every 30 minutes (R4 refuses most)."""
    return [ev.login("ws", f"r{n:03}", stamp(n / 2), "t", SECRET) for n in range(devices)]


def test_devices_of_refused_links_retire_with_their_verdicts() -> None:
    events = replays(200)  # 100 hours
    retired, live = run(events), run(events, LIVE)
    user = retired.users["ws", "t"]
    # Her point is 6 h before her latest link (hour 99.5): r187-r199 (hours 93.5-99.5) are live.
    assert user.devices == tuple(f"r{n:03}" for n in range(187, 200))
    summary = retired.retired("ws", "t")
    assert user.retired is not None and summary is not None and len(summary.ids) == 187
    # The guard accepts 10 devices a day: hours 0-4.5, 24-28.5, 48-52.5, 72-76.5 and 96-99.5
    # (48 links); the other 152 are refused, 147 of them before the point (not 93.5-95.5),
    # each kept on its device.
    marks = sorted(e for d in retired.devices.values() for e in d.refused)
    assert len(marks) == 147 and user.retired.flagged
    # Where the guard stands at the point: the links of hours 72-76.5, r144-r153.
    assert [d for _, d in user.retired.accepted] == [f"r{n:03}" for n in range(144, 154)]
    assert retired.profiles() == live.profiles()
    # A visitor chatting later on a device whose link was refused stays a lead of its own.
    chat = ev.chat_start("ws", "r010", stamp(101), "conv-r")
    assert retired.apply(ev.model(chat)).emits == live.apply(ev.model(chat)).emits
    # The guard still decides the next link as on her whole history.
    more = ev.login("ws", "r999", stamp(100.1), "t", SECRET)
    assert retired.apply(ev.model(more)).emits == live.apply(ev.model(more)).emits
    assert retired.profiles() == live.profiles()


def test_erasing_one_of_her_retired_devices_takes_it_from_her_profile() -> None:
    retired, live = run(travels(10)), run(travels(10), LIVE)
    assert retired.apply(erase("device:b3")).emits == live.apply(erase("device:b3")).emits
    profile = retired.profiles()[TRAVELLER]
    assert profile.anonymous_ids == sorted(f"b{n}" for n in range(10) if n != 3)
    assert retired.profiles() == live.profiles()


def test_inspecting_a_retired_device_names_its_refused_link() -> None:
    oracle = run(replays(200))
    view = View("ws", devices={a: d for (_, a), d in oracle.devices.items()},
                users={u: r for (_, u), r in oracle.users.items()})  # fmt: skip
    timelines = Timelines(view, CONFIG)
    # r010 (hour 5) was refused: the day's 10 devices were r000-r009. r000 was accepted.
    (link,) = oracle.devices["ws", "r010"].sessions
    assert oracle.devices["ws", "r010"].refused == {link.event_id}  # settled on the device
    assert timelines.refusals("r010") == {link.event_id: "shared_identifier"}
    assert timelines.refusals("r000") == {}
    assert not timelines.missing().devices


def test_a_summary_read_again_is_gathered_once_and_handed_out_as_a_copy(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    part = SettledPart(first=(5, "s0"), created=1, updated=9, merged=(("c1", 7, False),),
                       merged_total=1)  # fmt: skip
    summary = Retired(point=10, ids=("d1", "d2"), part=part, devices=(("d1", 3), ("d2", 5)),
                      devices_total=2)  # fmt: skip
    gathered = []
    plain = profiles._Contributions.retired
    monkeypatch.setattr(profiles._Contributions, "retired",
                        lambda self, r: (gathered.append(r), plain(self, r))[1])  # fmt: skip
    first = profiles._Contributions.of_retired(summary)
    first.devices["d3"] = 8  # what a live device adds, to the copy only
    first.merged["c2"] = (8, True)
    # Her record's header is rebuilt at each decision; the summary's records are the same.
    again = profiles._Contributions.of_retired(replace(summary, ids=("d1", "d2")))
    assert len(gathered) == 1
    assert again.devices == {"d1": 3, "d2": 5}
    assert again.merged == {"c1": (7, False)}
    assert (again.first, again.created, again.updated) == ((5, "s0"), 1, 9)
    assert again.devices_total() == 2
    # Another summary (its records read anew: other objects, equal or not) is gathered anew.
    profiles._Contributions.of_retired(replace(summary, part=replace(part)))
    assert len(gathered) == 2
