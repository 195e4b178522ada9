"""The edge's batch logic on the in-memory store: replays, reused event_ids, core failures."""

from __future__ import annotations

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline.core import ids
from pipeline.core.erasure import erase_request
from pipeline.core.model import profile_from_bytes
from pipeline.core.oracle import Oracle
from pipeline.core.rules import CoreConfig
from pipeline.state.base import Keys
from pipeline.state.memory import MemoryStore
from pipeline.worker import processor as processor_module
from pipeline.worker.codec import Item, Source, decode
from pipeline.worker.decoded import DecodedRecords
from pipeline.worker.processor import Processor
from tests.support import events as ev
from tests.unit.core import test_identity_laws as laws
from tests.unit.core.test_identity_laws import EXAMPLES

SECRET = "processor-secret-0123456789abcdef0"
CONFIG = CoreConfig(secrets={"ws": (SECRET.encode(),)})


def item(event: dict, offset: int = 0, topic: str = "telemetry.page_view") -> Item:
    decoded = decode(Source(topic, 0, offset, b"k", orjson.dumps(event)))
    assert isinstance(decoded, Item)
    return decoded


async def test_a_replayed_batch_changes_nothing_and_emits_nothing() -> None:
    proc = Processor(MemoryStore(), Keys("t"), CONFIG)
    batch = [item(ev.page_view("ws", "d1", "2026-11-24T10:00:00Z")),
             item(ev.login("ws", "d1", "2026-11-24T10:01:00Z", "u1", SECRET), 1, "telemetry.login")]  # fmt: skip
    first = await proc.process(batch)
    # The merge, the visitor (sent once: merged away, its state at the end of the batch), the
    # user.
    assert first.tally.applied == 2
    assert [e.topic for e in first.emits] == [
        "identity.merged", "identity.profiles", "identity.profiles"
    ]  # fmt: skip
    by_type = {e.value.type: e.value for e in first.emits[1:]}
    assert by_type["visitor"].merged_into == by_type["user"].contact_id
    (outbox,) = first.outbox  # the outputs are kept with the state until delivered
    _, kept = processor_module.outbox_records(proc.store.records[outbox].data)
    assert [topic for topic, _, _ in kept] == [e.topic for e in first.emits]
    # The merge whole; the profiles by contact_id only: sent again, they are sent as they are.
    assert kept[0][2] is not None and [value for _, _, value in kept[1:]] == [None, None]
    assert {key.decode() for _, key, _ in kept[1:]} == set(by_type[t].contact_id for t in by_type)
    await proc.store.delete([outbox])
    records = dict(proc.store.records)
    again = await proc.process(batch)
    assert (again.tally.applied, again.tally.unchanged, again.emits, again.outbox) == (0, 2, [], [])
    assert proc.store.records == records


async def test_an_event_id_reused_with_other_content_is_refused() -> None:
    proc = Processor(MemoryStore(), Keys("t"), CONFIG)
    first = ev.page_view("ws", "d1", "2026-11-24T10:00:00Z")
    await proc.process([item(first)])
    # The same device, the same event_id, other content (an earlier time: it would change state).
    result = await proc.process([item({**first, "timestamp": "2026-11-24T09:00:00Z"}, 1)])
    assert result.tally.rejected == {"event_id_reused": 1}
    assert [e.value.reason for e in result.emits] == ["event_id_reused"]


async def test_an_event_id_of_another_device_is_another_event() -> None:
    # R12: an event is (workspace, topic, anonymous_id, event_id), so sending a victim's next
    # event_id from another device cannot block the victim's event.
    proc = Processor(MemoryStore(), Keys("t"), CONFIG)
    attacker = ev.page_view("ws", "attacker", "2026-11-24T10:00:00Z")
    await proc.process([item(attacker)])
    victim = await proc.process([item({**attacker, "anonymous_id": "victim"}, 1)])
    assert (victim.tally.applied, victim.tally.rejected) == (1, {})
    assert [e.value.anonymous_ids for e in victim.emits] == [["victim"]]


async def test_a_failing_core_refuses_that_event_only(monkeypatch: pytest.MonkeyPatch) -> None:
    real_apply = processor_module.apply

    def flaky(event, view, config):
        if event.anonymous_id == "poison":
            raise KeyError("a bug")
        return real_apply(event, view, config)

    monkeypatch.setattr(processor_module, "apply", flaky)
    proc = Processor(MemoryStore(), Keys("t"), CONFIG)
    result = await proc.process([item(ev.page_view("ws", "poison", "2026-11-24T10:00:00Z")),
                                 item(ev.page_view("ws", "d1", "2026-11-24T10:00:00Z"), 1)])  # fmt: skip
    assert result.tally.rejected == {"internal_error": 1} and result.tally.applied == 1
    assert {e.topic for e in result.emits} == {"identity.rejected", "identity.profiles"}


async def test_a_failing_check_at_the_edge_refuses_that_event_only(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    real_check = processor_module.check

    def flaky(event, config, *, record_ms=None):
        if event.anonymous_id == "poison":
            raise KeyError("a bug")
        return real_check(event, config, record_ms=record_ms)

    monkeypatch.setattr(processor_module, "check", flaky)
    proc = Processor(MemoryStore(), Keys("t"), CONFIG)
    result = await proc.process([item(ev.page_view("ws", "poison", "2026-11-24T10:00:00Z")),
                                 item(ev.page_view("ws", "d1", "2026-11-24T10:00:00Z"), 1)])  # fmt: skip
    assert result.tally.rejected == {"internal_error": 1} and result.tally.applied == 1
    (rejected,) = [e.value for e in result.emits if e.topic == "identity.rejected"]
    assert rejected.detail == "KeyError: 'a bug'"


# -- the processor against the reference driver of the core ---------------------------------

TOPICS = {"pv": "telemetry.page_view", "chat": "telemetry.chat_start", "login": "telemetry.login",
          "signup": "telemetry.signup", "logout": "telemetry.logout"}  # fmt: skip


def _contacts(store: MemoryStore) -> dict[str, dict]:
    """The profiles the processor stored, by contact_id (tombstones left out)."""
    return {
        key.rsplit(":", 1)[1]: profile_from_bytes(record.data).model_dump()
        for key, record in store.records.items()
        if ":contact:" in key and record.data
    }


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(laws.journeys(["w1", "w2"]), st.data())
async def test_batches_give_what_the_core_gives_one_event_at_a_time(
    events: list[dict], data: st.DataObject
) -> None:
    """However the events are cut into batches, the processor's shortcuts (page views decided
    from the prefetch, records loaded ahead, decisions made ahead) end where the plain core
    does: the same final profiles, merges and shutdowns."""
    oracle = Oracle(laws.CONFIG)
    for event in events:
        oracle.apply(ev.model(event))
    # Replay some events: a repeat must be decided as unchanged by every path.
    repeats = data.draw(st.lists(st.sampled_from(events), max_size=3))
    stream = [*events, *repeats]
    items = [item(e, i, TOPICS[e["event_id"].split("-")[0]]) for i, e in enumerate(stream)]
    cuts = sorted(data.draw(st.sets(st.integers(1, max(1, len(items) - 1)), max_size=4)))
    proc = Processor(MemoryStore(), Keys("t"), laws.CONFIG)
    if data.draw(
        st.booleans()
    ):  # every record's decoding kept (`DecodedRecords`), not the large only
        proc.decoded = DecodedRecords(min_bytes=0)
    emitted = []
    for start, end in zip([0, *cuts], [*cuts, len(items)], strict=True):
        result = await proc.process(items[start:end])
        emitted += result.emits
    assert _contacts(proc.store) == {cid: p.model_dump() for cid, p in oracle.profiles().items()}
    # What was sent ends as what is stored: each contact's last profile sent, tombstones too.
    sent: dict = {}
    for emit in emitted:
        if emit.topic == "identity.profiles":
            sent[emit.key] = None if emit.value is None else emit.value.model_dump()
    assert {cid: p for cid, p in sent.items() if p is not None} == _contacts(proc.store)

    def announced(emits: list) -> list[str]:
        topics = ("identity.merged", "identity.shutdown")
        return sorted(e.value.event_id for e in emits if e.topic in topics)

    assert announced(emitted) == announced(oracle.emitted)


async def test_delivered_outbox_records_go_with_the_next_read_or_a_flush() -> None:
    proc = Processor(MemoryStore(), Keys("t"), CONFIG)
    first = await proc.process([item(ev.page_view("ws", "d1", "2026-11-24T10:00:00Z"))])
    (outbox,) = first.outbox
    proc.forget(first.outbox)
    assert outbox in proc.store.records  # not yet: no round trip of its own
    # A new device: its batch reads the store (a known device's page view would not).
    middle = await proc.process([item(ev.page_view("ws", "d3", "2026-11-24T10:05:00Z"), 1)])
    assert outbox not in proc.store.records
    proc.forget(middle.outbox)
    second = await proc.process([item(ev.page_view("ws", "d2", "2026-11-24T10:00:00Z"), 2)])
    proc.forget(second.outbox)
    await proc.flush()
    assert not [key for key in proc.store.records if ":outbox:" in key]


class CountingStore(MemoryStore):
    """The in-memory store, counting round trips (reads and commits)."""

    def __init__(self) -> None:
        super().__init__()
        self.reads = 0
        self.commits = 0

    async def read(self, keys, *, discard=()):  # the Store's signature
        self.reads += 1
        return await super().read(keys, discard=discard)

    async def commit(self, commits):
        self.commits += 1
        return await super().commit(commits)


async def test_first_visits_are_decided_after_one_read_and_committed_in_one_more() -> None:
    store = CountingStore()
    proc = Processor(store, Keys("t"), CONFIG)
    batch = [item(ev.page_view("ws", f"d{i}", "2026-11-24T10:00:00Z"), i) for i in range(5)]
    result = await proc.process(batch)
    assert result.tally.applied == 5
    assert sorted(e.value.anonymous_ids[0] for e in result.emits) == [f"d{i}" for i in range(5)]
    # The device, its first visitor's contact and the event's marker come in the same read.
    assert (store.reads, store.commits) == (1, 1)


async def test_a_login_after_its_devices_first_page_view_in_one_batch_is_decided_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Deciding ahead sees what the batch's earlier events decided: a login whose device the
    batch's page view creates is not decided ahead against the device without it (and again)."""
    decided: list[str] = []
    real = processor_module.apply

    def counting(event, view, config):  # the core's signature
        result = real(event, view, config)
        if isinstance(result, processor_module.Transition):
            decided.append(event.event_id)
        return result

    monkeypatch.setattr(processor_module, "apply", counting)
    proc = Processor(MemoryStore(), Keys("t"), CONFIG)
    # An older device of the same user: the login reads it, her record and her profile.
    await proc.process([item(ev.login("ws", "d0", "2026-11-24T09:00:00Z", "u1", SECRET),
                             topic="telemetry.login")])  # fmt: skip
    decided.clear()
    view = ev.page_view("ws", "d1", "2026-11-24T10:00:00Z")
    login = ev.login("ws", "d1", "2026-11-24T10:01:00Z", "u1", SECRET)
    result = await proc.process([item(view, 1), item(login, 2, "telemetry.login")])
    assert result.tally.applied == 2
    assert sorted(decided) == sorted([view["event_id"], login["event_id"]])
    (user,) = [e.value for e in result.emits
               if e.topic == "identity.profiles" and e.value.type == "user"]  # fmt: skip
    assert user.anonymous_ids == ["d0", "d1"]


class LostReplyStore(MemoryStore):
    """Applies the first commit, then fails as if Redis went away before replying."""

    def __init__(self) -> None:
        super().__init__()
        self.lose_next_reply = True

    async def commit(self, commits):  # the Store's signature
        results = await super().commit(commits)
        if self.lose_next_reply:
            self.lose_next_reply = False
            raise ConnectionError("connection closed by server")
        return results


async def test_a_commit_whose_reply_is_lost_leaves_its_outputs_in_doubt_not_lost() -> None:
    proc = Processor(LostReplyStore(), Keys("t"), CONFIG)
    batch = [item(ev.page_view("ws", "d1", "2026-11-24T10:00:00Z"))]
    with pytest.raises(ConnectionError):
        await proc.process(batch)
    (in_doubt,) = proc.unsent  # the outbox record of the commit that was applied
    again = await proc.process(batch)  # what the worker does next: processes it again
    assert (again.tally.unchanged, again.emits) == (1, [])  # already applied: nothing new
    _, kept = processor_module.outbox_records(proc.store.records[in_doubt].data)
    assert [topic for topic, _, _ in kept] == ["identity.profiles"]  # the visitor, kept there


class RacedStore(MemoryStore):
    """Another worker commits just before the first commit; the second read finds Redis gone."""

    def __init__(self, config: CoreConfig, rival: list[Item]) -> None:
        super().__init__()
        self.rival = Processor(_SameRecords(self), Keys("t"), config)
        self.rival_batch = rival
        self.reads = 0

    async def read(self, keys, *, discard=()):  # the Store's signature
        self.reads += 1
        if self.reads == 2:
            raise ConnectionError("connection closed by server")
        return await super().read(keys, discard=discard)

    async def commit(self, commits):
        if self.rival_batch:
            batch, self.rival_batch = self.rival_batch, []
            await self.rival.process(batch)
        return await super().commit(commits)


class _SameRecords:
    """The other worker's store: the same records, without the raced store's interference."""

    def __init__(self, store: MemoryStore) -> None:
        self.store = store

    async def read(self, keys, *, discard=()):  # the Store's signature
        return await MemoryStore.read(self.store, keys, discard=discard)

    async def commit(self, commits):
        return await MemoryStore.commit(self.store, commits)


async def test_outputs_of_workspaces_committed_before_a_batch_failed_are_left_to_send() -> None:
    # Workspace "ws" commits in the first attempt; "ws2" loses a race with another worker and
    # is tried again, but Redis goes away before that read. Processing the batch again finds
    # "ws" applied and emits nothing for it: its outputs are in its outbox record, named.
    config = CoreConfig(secrets={"ws": (SECRET.encode(),), "ws2": (SECRET.encode(),)})
    store = RacedStore(config, [item(ev.page_view("ws2", "d2", "2026-11-24T10:00:00Z"), 9)])
    proc = Processor(store, Keys("t"), config)
    batch = [item(ev.page_view("ws", "d1", "2026-11-24T10:00:00Z")),
             item(ev.page_view("ws2", "d2", "2026-11-24T09:00:00Z"), 1)]  # fmt: skip
    with pytest.raises(ConnectionError):
        await proc.process(batch)
    (unsent,) = proc.unsent  # only the workspace that committed has an outbox record
    assert Keys("t").parse(unsent).workspace_id == "ws"
    _, kept = processor_module.outbox_records(store.records[unsent].data)
    assert [topic for topic, _, _ in kept] == ["identity.profiles"]  # d1's first visitor
    again = await proc.process(batch)
    # "ws" is applied already; "ws2" is decided on the rival's device (an earlier first visit).
    assert (again.tally.applied, again.tally.unchanged) == (1, 1)
    assert {e.value.workspace_id for e in again.emits} == {"ws2"}


async def test_a_user_read_whole_after_her_devices_retired_commits_at_once() -> None:
    # A traveller logs in on a new device every 3 h: 30 devices, one batch each. By the end
    # her devices before her point (her latest link minus a day) have retired into summary
    # records of her own. A chat on her first device, in her session there, has her read with
    # every device live; her summary is worked out anew and rewritten. Each record a commit
    # writes must have been read (the store takes a record written unread to be absent), so
    # the batch commits at the first attempt.
    proc = Processor(MemoryStore(), Keys("t"), CONFIG)
    offset = 0
    for n in range(30):
        ts, signed = ev.at_hour(3 * n), ev.at_hour(3 * n + 0.1)
        batch = [item(ev.page_view("ws", f"b{n}", ts), offset),
                 item(ev.login("ws", f"b{n}", signed, "u1", SECRET), offset + 1, "telemetry.login")]  # fmt: skip
        offset += 2
        assert (await proc.process(batch)).tally.applied == 2
    summary = Keys("t").of("ws", "chunk", "p:u1")
    assert proc.store.records[summary].version == 1  # written when her devices retired
    chat = ev.chat_start("ws", "b0", ev.at_hour(87.5), "conv-1")
    done = await proc.process([item(chat, offset, "telemetry.chat_start")])
    assert done.tally.applied == 1 and proc.conflicts == 0
    assert proc.store.records[summary].version == 2  # worked out anew and rewritten


async def test_the_profile_a_batch_wrote_is_read_back_undecoded_and_forgotten_once_erased() -> None:
    """u1 logs in on d1 (her profile is written); a chat of hers reads it back; u1 is erased."""
    proc = Processor(MemoryStore(), Keys("t"), CONFIG)
    proc.decoded = DecodedRecords(min_bytes=0)
    user_key = f"t:{{ws}}:contact:{ids.user_contact_id('ws', 'u1')}"
    await proc.process([item(ev.login("ws", "d1", "2026-11-24T10:00:00Z", "u1", SECRET), 0,
                             "telemetry.login")])  # fmt: skip
    written = proc.store.records[user_key].data
    hits = proc.decoded.hits
    chat = ev.chat_start("ws", "d1", "2026-11-24T10:05:00Z", "conv-1")
    result = await proc.process([item(chat, 1, "telemetry.chat_start")])
    assert result.tally.applied == 1
    assert proc.decoded.hits > hits  # her profile, as written, not decoded again
    assert proc.store.records[user_key].data != written  # the chat is on it now
    erase = erase_request("ws", "user:u1", SECRET.encode(), event_id="erase-1",
                          timestamp="2026-11-24T10:10:00Z")  # fmt: skip
    decoded = decode(Source("privacy.erase", 0, 2, b"u1", orjson.dumps(erase)))
    assert isinstance(decoded, Item)
    await proc.process([decoded])
    assert not proc.store.records[user_key].data  # tombstoned
    assert user_key not in proc.decoded.keys()  # and nothing of it kept in memory (R16)


async def test_a_record_one_decision_deletes_and_a_later_one_writes_again_is_kept() -> None:
    """u1 logs in on d1 at 10:01 and on d2 at 10:00; d2 then browses at 10:01 and 10:00.

    Her devices retire as soon as she links later (`laws.CONFIG`), so d2 retires into her
    summary records. Decided in one batch, the first page view is decided with her devices
    live, which deletes the summary records, and the second retires d2 again and writes them
    anew: the commit must keep them. A page view on d1 afterwards then still finds d2 in her
    summary, and her profile lists both devices, as one event at a time does.
    """
    secret = laws.SECRETS["w2"]
    events = [
        ev.login("w2", "d1", "2026-11-24T10:01:00Z", "u1", secret, event_id="login-1"),
        ev.login("w2", "d2", "2026-11-24T10:00:00Z", "u1", secret, event_id="login-2"),
        ev.page_view("w2", "d2", "2026-11-24T10:01:00Z", event_id="pv-3"),
        ev.page_view("w2", "d2", "2026-11-24T10:00:00Z", event_id="pv-4"),
    ]
    later = ev.page_view("w2", "d1", "2026-11-24T10:00:00Z", event_id="pv-5")
    proc = Processor(MemoryStore(), Keys("t"), laws.CONFIG)
    await proc.process([item(e, i, TOPICS[e["event_id"].split("-")[0]])
                        for i, e in enumerate(events)])  # fmt: skip
    summary = [k for k in proc.store.records if ":chunk:" in k and proc.store.records[k].data]
    assert sorted(summary) == ["t:{w2}:chunk:p%3Au1", "t:{w2}:chunk:r0%3Au1", "t:{w2}:chunk:v%3Au1"]
    await proc.process([item(later, 4)])
    profile = _contacts(proc.store)[ids.user_contact_id("w2", "u1")]
    assert profile["anonymous_ids"] == ["d1", "d2"]


async def test_the_summary_records_a_batch_wrote_are_kept_decoded_and_her_user_record_is_not() -> (
    None
):
    """u1 logs in on d1 at 10:01 and on d2 at 10:00: d2 retires into her summary records.

    Every record the commit wrote is kept as decoded (small ones too, with `min_bytes=0`), but
    for her user record: the one the decision wrote holds her retired summary, the record only
    its header. A page view on d1 then reads her summary records without decoding them.
    """
    secret = laws.SECRETS["w2"]
    proc = Processor(MemoryStore(), Keys("t"), laws.CONFIG)
    proc.decoded = DecodedRecords(min_bytes=0)
    events = [
        ev.login("w2", "d1", "2026-11-24T10:01:00Z", "u1", secret, event_id="login-1"),
        ev.login("w2", "d2", "2026-11-24T10:00:00Z", "u1", secret, event_id="login-2"),
    ]
    await proc.process([item(e, i, "telemetry.login") for i, e in enumerate(events)])
    kept = set(proc.decoded.keys())
    summary = {"t:{w2}:chunk:p%3Au1", "t:{w2}:chunk:r0%3Au1", "t:{w2}:chunk:v%3Au1"}
    assert summary <= kept
    assert "t:{w2}:user:u1" in proc.store.records and "t:{w2}:user:u1" not in kept
    hits = proc.decoded.hits
    await proc.process([item(ev.page_view("w2", "d1", "2026-11-24T10:02:00Z", event_id="pv-3"), 2)])
    assert proc.decoded.hits > hits
