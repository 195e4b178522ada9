"""Erasure (R16) through the real broker and Redis, requested with `idp erase`.

Ann uses her laptop and, after Bob, a shared computer; Bob keeps using the shared computer after
her. Erasing Ann tombstones her profile and the visitors merged into it, publishes one
`identity.erased`, leaves Bob's profile as it was, and leaves nothing of Ann in Redis; a replay
of the inputs from the beginning into empty state reproduces Bob and nothing of her.

Cara browses on her tablet and chats there as a lead; Dan chats on his phone. Erasing the tablet
tombstones its anonymous contacts, leaves Dan's as it was, and refuses the tablet's past events
when they come again. Requests whose proof is not the workspace's are refused and change nothing.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import re
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis.asyncio as aioredis
from aiokafka import AIOKafkaConsumer
from aiokafka.structs import TopicPartition

from pipeline.core import ids
from pipeline.ops.admin import remove_run, stop_consumer
from schemas.time import parse_timestamp, to_epoch_ms
from schemas.topics import OUTPUT_TOPICS, STATE_CHANGELOG
from tests.integration.conftest import SECRETS, TOKEN_EXP
from tests.support import events as ev
from tests.support.kafka import PROJECT_ROOT, OutputLog, Pipeline, read_topics
from tests.support.wire_schemas import schema_errors

WS = "ws-a"
SECRET = SECRETS[WS]
ANN, BOB = "ann-4f9c2e", "bob-71d0aa"
ANN_EMAIL, ANN_NAME = "ann.4f9c2e@example.com", "Annabel Quartermaine"
START = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=30)


def at(minutes: int) -> str:
    return (START + timedelta(minutes=minutes)).isoformat().replace("+00:00", "Z")


def erase_proof(secret: str, subject: str) -> str:
    """R16's proof, computed here rather than by the code under test."""
    return hmac.new(secret.encode(), b"erase:" + subject.encode(), hashlib.sha256).hexdigest()


async def idp_erase(
    pipeline: Pipeline, *args: str, workspace: str = WS
) -> subprocess.CompletedProcess:
    return await asyncio.to_thread(
        subprocess.run, [sys.executable, "-m", "pipeline.cli", "erase", workspace, *args],
        cwd=PROJECT_ROOT, env=pipeline.env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip


async def erase_requests(pipeline: Pipeline) -> list[tuple[bytes | None, dict[str, Any]]]:
    """(key, request) of every record on privacy.erase, as the worker reads them."""
    log = await read_topics(
        pipeline.bootstrap, [pipeline.prefix + "privacy.erase"], pipeline.prefix
    )
    return [(r.key, r.value) for r in log.of("privacy.erase") if r.value is not None]


async def dump(client: aioredis.Redis, namespace: str) -> dict[bytes, bytes]:
    """Every key of the namespace with everything its value holds, whatever its type."""
    found: dict[bytes, bytes] = {}
    async for key in client.scan_iter(match=f"{namespace}:*", count=1000):
        kind = await client.type(key)
        parts: list[Any]
        if kind == b"string":
            parts = [await client.get(key)]
        elif kind == b"hash":
            parts = [part for item in sorted((await client.hgetall(key)).items()) for part in item]
        elif kind == b"set":
            parts = sorted(await client.smembers(key))
        elif kind == b"zset":
            parts = list(await client.zrange(key, 0, -1))
        elif kind == b"list":
            parts = await client.lrange(key, 0, -1)
        elif kind == b"stream":
            parts = [repr(entry) for entry in await client.xrange(key) or []]
        elif kind == b"none":  # deleted since the scan saw it
            continue
        else:
            parts = [f"<{kind!r}>"]
        found[_bytes(key)] = b"\n".join(map(_bytes, parts))
    return found


def _bytes(value: object) -> bytes:
    return value if isinstance(value, bytes) else str(value).encode()


def traces(records: dict[bytes, bytes], needles: Iterable[str]) -> list[str]:
    """Where any of the needles occurs, case-insensitively, in a key or a value."""
    where = []
    for key, value in sorted(records.items()):
        text = (key + b" => " + value).decode(errors="replace")
        for needle in needles:
            offset = text.lower().find(needle.lower())
            if offset >= 0:
                where.append(f"{needle!r} in {text[max(0, offset - 200) : offset + 100]}")
    return where


def state_records(records: dict[bytes, bytes]) -> dict[bytes, bytes]:
    """The records without the outbox (outputs in transit, deleted once the broker has them)."""
    return {key: value for key, value in records.items() if b":outbox:" not in key}


async def changelog_view(pipeline: Pipeline) -> dict[bytes, bytes]:
    """The state changelog as compaction leaves it: each key's latest record (tombstones gone)."""
    topic = pipeline.prefix + STATE_CHANGELOG
    consumer = AIOKafkaConsumer(bootstrap_servers=pipeline.bootstrap, enable_auto_commit=False)
    await consumer.start()
    latest: dict[bytes, bytes | None] = {}
    try:
        await consumer._client.force_metadata_update()
        partitions = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or ()]
        wanted = {tp: end for tp, end in (await consumer.end_offsets(partitions)).items() if end}
        if wanted:
            consumer.assign(list(wanted))
            await consumer.seek_to_beginning(*wanted)
        while wanted:
            for tp, records in (await consumer.getmany(timeout_ms=1000)).items():
                for record in records:
                    if record.offset < wanted.get(tp, -1) and record.key is not None:
                        latest[record.key] = record.value
                if records and records[-1].offset + 1 >= wanted.get(tp, 0):
                    wanted.pop(tp, None)
    finally:
        await stop_consumer(consumer)
    return {key: value for key, value in latest.items() if value is not None}


async def no_traces_in_changelog(pipeline: Pipeline, needles: list[str], timeout: float = 30.0):
    """Await the changelog's latest records holding none of the needles; the traces left if not.

    The erasure's own records reach the changelog once its batch's outputs are delivered.
    """
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        found = traces(await changelog_view(pipeline), needles)
        if not found or asyncio.get_running_loop().time() > deadline:
            return found
        await asyncio.sleep(0.5)


async def outbox_cleared(client: aioredis.Redis, namespace: str, timeout: float = 30.0) -> None:
    """Await the worker deleting the outbox records of its delivered batches.

    An outbox record names what its outputs name (identity.erased names the subject) until the
    broker has them; a search for personal data in the state starts once they are gone.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while [k async for k in client.scan_iter(match=f"{namespace}:outbox:*")]:
        assert loop.time() < deadline, f"the outbox of {namespace} was never cleared"
        await asyncio.sleep(0.1)


def refused(out: OutputLog, reason: str) -> set[str]:
    """The input event_ids refused with `reason`."""
    return {r["input_event_id"] for r in out.values("identity.rejected") if r["reason"] == reason}


def refused_at_all(out: OutputLog) -> set[str]:
    """The input event_ids refused, whatever the reason."""
    return {r["input_event_id"] for r in out.values("identity.rejected")}


def profile(out: OutputLog, contact: str) -> dict | None:
    return out.latest_profiles().get(contact)


def last_record(out: OutputLog, contact: str) -> tuple[bool, dict | None]:
    """(published at all, its last value: None for a tombstone) of a contact on profiles."""
    records = [r for r in out.of("identity.profiles") if r.key == contact.encode()]
    return bool(records), records[-1].value if records else None


def tombstoned(out: OutputLog, contacts: Iterable[str]) -> bool:
    return all(last_record(out, c) == (True, None) for c in contacts)


def profile_records(out: OutputLog, contact: str) -> int:
    return sum(r.key == contact.encode() for r in out.of("identity.profiles"))


def matches(found: dict | None, **expected: Any) -> bool:
    return found is not None and all(found.get(k) == v for k, v in expected.items())


async def test_erasing_a_user_leaves_others_as_they_were_and_nothing_of_her(
    pipeline: Pipeline, redis_client: aioredis.Redis
) -> None:
    pipeline.start_worker()
    events = [
        ("telemetry.page_view", ev.page_view(WS, "ann-laptop", at(0))),
        ("telemetry.chat_start", ev.chat_start(WS, "ann-laptop", at(1), "conv-ann-1",
                                               email=ANN_EMAIL, name=ANN_NAME)),
        ("telemetry.signup", ev.signup(WS, "ann-laptop", at(2), ANN, SECRET, email=ANN_EMAIL,
                                       name=ANN_NAME)),
        ("telemetry.login", ev.login(WS, "shared", at(10), BOB, SECRET)),
        ("telemetry.chat_start", ev.chat_start(WS, "shared", at(11), "conv-bob-1")),
        ("telemetry.logout", ev.logout(WS, "shared", at(12), BOB)),
        ("telemetry.login", ev.login(WS, "shared", at(13), ANN, SECRET)),
        ("telemetry.chat_start", ev.chat_start(WS, "shared", at(14), "conv-ann-2")),
        ("telemetry.logout", ev.logout(WS, "shared", at(15), ANN)),
        ("telemetry.login", ev.login(WS, "shared", at(18), BOB, SECRET)),
        ("telemetry.chat_start", ev.chat_start(WS, "shared", at(19), "conv-bob-2")),
    ]  # fmt: skip
    for topic, event in events:
        await pipeline.send(topic, event)
    ann_contact, bob_contact = ids.user_contact_id(WS, ANN), ids.user_contact_id(WS, BOB)

    await pipeline.wait_for(
        lambda out: (
            (profile(out, ann_contact) or {}).get("conversation_ids")
            == ["conv-ann-1", "conv-ann-2"]
            and (profile(out, bob_contact) or {}).get("conversation_ids")
            == ["conv-bob-1", "conv-bob-2"]
        ),
        what="Ann's and Bob's profiles",
    )
    ann_before = profile(pipeline.outputs, ann_contact)
    bob_before = profile(pipeline.outputs, bob_contact)
    assert ann_before is not None

    # A request whose proof is not the workspace's: refused, nothing changes.
    forged = {"event_id": "erase-forged", "workspace_id": WS, "timestamp": at(25),
              "subject": f"user:{ANN}", "proof": "0" * 64}  # fmt: skip
    await pipeline.send("privacy.erase", forged, key=f"user:{ANN}")
    await pipeline.wait_for(lambda out: any(r["reason"] == "unverified_identity"
                                            for r in out.values("identity.rejected")),
                            what="the forged request refused")  # fmt: skip
    assert profile(pipeline.outputs, ann_contact) == ann_before
    request = await idp_erase(pipeline, "--user-id", ANN)
    assert request.returncode == 0, request.stderr
    await pipeline.wait_for(lambda out: bool(out.of("identity.erased")), what="identity.erased")
    (erased,) = pipeline.outputs.values("identity.erased")
    assert erased["subject"] == f"user:{ANN}"
    removed = set(erased["contact_ids"])
    assert {ann_contact, *ann_before["merged_contact_ids"]} <= removed
    assert bob_contact not in removed
    # Every removed contact is tombstoned on the compacted topic; Bob's is untouched.
    await pipeline.wait_for(lambda out: not removed & set(out.latest_profiles()),
                            what="tombstones for every removed contact")  # fmt: skip
    assert profile(pipeline.outputs, bob_contact) == bob_before
    # Nothing of Ann is left in Redis: her user_id, e-mail, name or conversations.
    await outbox_cleared(redis_client, pipeline.namespace)
    found = traces(await dump(redis_client, pipeline.namespace),
                   [ANN, ANN_EMAIL, ANN_NAME, "conv-ann-"])  # fmt: skip
    assert not found, "\n".join(found)
    # Nor in the state changelog, once compacted: each key's latest record holds nothing of hers
    # (the older ones go within max.compaction.lag.ms, README Privacy).
    found = await no_traces_in_changelog(pipeline, [ANN, ANN_EMAIL, ANN_NAME, "conv-ann-"])
    assert not found, "\n".join(found)
    assert traces(await changelog_view(pipeline), [BOB, "conv-bob-"])  # the search sees state
    # Her session events replayed (a signup, a login, a logout) are refused as erased.
    hers = [events[2], events[6], events[8]]
    for topic, event in hers:
        await pipeline.send(topic, event)
    await pipeline.wait_for(lambda out: refused(out, "erased") == {e["event_id"] for _, e in hers},
                            what="her replayed session events refused as erased")  # fmt: skip
    # A later signup of the same user_id starts a new, empty profile.
    later = ev.signup(WS, "new-laptop", datetime.now(UTC).isoformat().replace("+00:00", "Z"),
                      ANN, SECRET)  # fmt: skip
    await pipeline.send("telemetry.signup", later)
    await pipeline.wait_for(lambda out: profile(out, ann_contact) is not None,
                            what="the new profile of the same user_id")  # fmt: skip
    fresh = profile(pipeline.outputs, ann_contact)
    assert fresh is not None
    assert (fresh["anonymous_ids"], fresh["conversation_ids"], fresh["email"]) == (
        ["new-laptop"], [], None)  # fmt: skip


# --- A device erased: Cara's tablet, next to Dan's phone -----------------------------------------

TABLET, PHONE = "tablet-5e21c9", "phone-8c44aa"
CARA_TYPED_EMAIL, CARA_EMAIL = "Cara.Lind@Example.COM", "cara.lind@example.com"
CARA_NAME = "Cara Lindqvist-Obi"
DAN_EMAIL, DAN_NAME = "dan.okafor@example.org", "Dan Okafor"
# A logout on the tablet, where no one ever logged in: it ends the tablet's visitor all the same
# (R10), so the tablet has two anonymous contacts, the lead before it and the one after.
NOBODY_HERE = "cara-7d1e"


@dataclass
class DeviceErasure:
    """The tablet's events, its anonymous contacts and Dan's, and the request `idp erase` sent."""

    tablet_events: list[tuple[str, dict[str, Any]]]
    tablet_contacts: set[str]
    dan_contact: str
    dan_before: dict[str, Any]
    request: dict[str, Any]


async def the_tablet_and_the_phone(pipeline: Pipeline) -> tuple[list, str, str, str]:
    """Cara browses and chats on her tablet (a lead, then a new visitor); Dan chats on his phone.

    Returns the tablet's events and the contact_ids of the tablet's lead, of its visitor after the
    logout, and of Dan's lead, once their profiles are what SPEC makes of these events.
    """
    logout = ev.logout(WS, TABLET, at(4), NOBODY_HERE)
    tablet = [
        ("telemetry.page_view", ev.page_view(WS, TABLET, at(0), url="https://example.com/pricing")),
        ("telemetry.chat_start", ev.chat_start(WS, TABLET, at(1), "conv-cara-1",
                                               email=CARA_TYPED_EMAIL, name=CARA_NAME, city="Lyon")),
        ("telemetry.logout", logout),
        ("telemetry.page_view", ev.page_view(WS, TABLET, at(5))),
        ("telemetry.chat_start", ev.chat_start(WS, TABLET, at(6), "conv-cara-2")),
    ]  # fmt: skip
    phone = [
        ("telemetry.page_view", ev.page_view(WS, PHONE, at(2))),
        ("telemetry.chat_start", ev.chat_start(WS, PHONE, at(3), "conv-dan-1", email=DAN_EMAIL,
                                               name=DAN_NAME)),
    ]  # fmt: skip
    for topic, event in tablet + phone:
        await pipeline.send(topic, event)
    lead = ids.visitor_contact_id(WS, TABLET, ids.ORIGIN)
    after_logout = ids.visitor_contact_id(WS, TABLET, ids.logout_session(logout["event_id"]))
    dan = ids.visitor_contact_id(WS, PHONE, ids.ORIGIN)
    # R5: a chat makes the visitor a lead, named after its city; R3: the e-mail lower-cased; R7:
    # an e-mail typed into a chat is not verified. R10: the visitor after the logout is new.
    await pipeline.wait_for(
        lambda out: (
            matches(profile(out, lead), type="lead", user_id=None, email=CARA_EMAIL,
                    email_verified=False, name=CARA_NAME, anonymous_ids=[TABLET],
                    conversation_ids=["conv-cara-1"], merged_into=None)
            and matches(profile(out, after_logout), type="lead", email=None, name=None,
                        anonymous_ids=[TABLET], conversation_ids=["conv-cara-2"])
            and matches(profile(out, dan), type="lead", email=DAN_EMAIL, name=DAN_NAME,
                        anonymous_ids=[PHONE], conversation_ids=["conv-dan-1"])
        ),
        what="the tablet's two leads and Dan's",
    )  # fmt: skip
    lead_profile = profile(pipeline.outputs, lead)
    assert lead_profile is not None
    assert re.fullmatch(r"[A-Z][a-z]+ [A-Z][a-z]+ from Lyon", lead_profile["pseudonym"])
    return tablet, lead, after_logout, dan


async def erase_the_tablet(pipeline: Pipeline) -> DeviceErasure:
    """The tablet and the phone, then `idp erase --anonymous-id` of the tablet, applied."""
    pipeline.start_worker()
    tablet, lead, after_logout, dan = await the_tablet_and_the_phone(pipeline)
    dan_before = profile(pipeline.outputs, dan)
    assert dan_before is not None
    run = await idp_erase(pipeline, "--anonymous-id", TABLET)
    assert run.returncode == 0, run.stderr
    # The request as SPEC has it: keyed by its subject, proven with the workspace's secret.
    ((key, request),) = await erase_requests(pipeline)
    subject = f"device:{TABLET}"
    assert key == subject.encode()
    assert (request["workspace_id"], request["subject"]) == (WS, subject)
    assert request["proof"] == erase_proof(SECRET, subject)
    await pipeline.wait_for(lambda out: bool(out.of("identity.erased")), what="identity.erased")
    return DeviceErasure(tablet, {lead, after_logout}, dan, dan_before, request)


async def test_erasing_a_device_tombstones_its_contacts_and_refuses_its_past_events(
    pipeline: Pipeline,
) -> None:
    erasure = await erase_the_tablet(pipeline)
    # One identity.erased, keyed by the anonymous_id, with the fields of SPEC §3.
    ((erased_key, erased),) = [(r.key, r.value) for r in pipeline.outputs.of("identity.erased")]
    assert erased_key == TABLET.encode()
    assert erased is not None
    assert schema_errors("identity.erased", erased) == []
    assert {k: erased[k] for k in ("workspace_id", "subject", "anonymous_ids", "cause_event_id")} == {
        "workspace_id": WS, "subject": f"device:{TABLET}", "anonymous_ids": [TABLET],
        "cause_event_id": erasure.request["event_id"],
    }  # fmt: skip
    assert sorted(erased["contact_ids"]) == sorted(erasure.tablet_contacts)
    assert parse_timestamp(erased["timestamp"]) == parse_timestamp(erasure.request["timestamp"])
    assert erased["event_id"] and erased["event_id"] != erasure.request["event_id"]
    # A tombstone for each of the tablet's anonymous contacts; Dan's profile as it was.
    await pipeline.wait_for(lambda out: tombstoned(out, erasure.tablet_contacts),
                            what="a tombstone for each of the tablet's contacts")  # fmt: skip
    dan_records = profile_records(pipeline.outputs, erasure.dan_contact)
    assert profile(pipeline.outputs, erasure.dan_contact) == erasure.dan_before
    # The tablet's chats and logout, stamped before the erasure, come again: each is refused as
    # erased, and yields that rejection and nothing else. (Its page views come again in
    # test_a_page_view_of_an_erased_device_is_refused_right_after_the_erasure.)
    shutdowns = len(pipeline.outputs.of("identity.shutdown"))
    again = [(t, e) for t, e in erasure.tablet_events if t != "telemetry.page_view"]
    for topic, event in again:
        await pipeline.send(topic, event)
    expected = {event["event_id"] for _, event in again}
    await pipeline.wait_for(lambda out: refused(out, "erased") == expected,
                            what="the tablet's past events refused as erased")  # fmt: skip
    out = pipeline.outputs
    assert tombstoned(out, erasure.tablet_contacts)
    assert not [p for p in out.latest_profiles().values() if TABLET in p["anonymous_ids"]]
    assert len(out.of("identity.shutdown")) == shutdowns
    assert len(out.of("identity.erased")) == 1
    assert profile_records(out, erasure.dan_contact) == dan_records
    assert profile(out, erasure.dan_contact) == erasure.dan_before


async def test_erasing_a_device_leaves_nothing_of_it_in_redis(
    pipeline: Pipeline, redis_client: aioredis.Redis
) -> None:
    erasure = await erase_the_tablet(pipeline)
    await pipeline.wait_for(lambda out: tombstoned(out, erasure.tablet_contacts),
                            what="a tombstone for each of the tablet's contacts")  # fmt: skip
    await outbox_cleared(redis_client, pipeline.namespace)
    # R16: the state keeps no personal data of the subject, at most a keyed digest of it.
    found = traces(await dump(redis_client, pipeline.namespace),
                   [TABLET, CARA_EMAIL, CARA_NAME, "conv-cara-1", "conv-cara-2"])  # fmt: skip
    assert not found, "\n".join(found)


# A kiosk in each of these workspaces. Each workspace counts its device erasures apart (the count
# a worker re-reads every ERASURE_CHECK_S, `pipeline/worker/known.py`), so each kiosk's erasure
# would be a race of its own if the worker that applies it kept the kiosk in memory until then:
# one kiosk lost it in 13 of 18 tries before that worker forgot erased devices at once.
KIOSK_WORKSPACES = {
    f"ws-kiosk-{i}": f"secret-kiosk-{i}-0123456789abcdef0123456789" for i in range(6)
}


@pytest.fixture
def secrets_file(tmp_path: Path) -> Path:
    """The workspaces of the integration tests and the kiosks'."""
    path = tmp_path / "secrets.json"
    path.write_bytes(orjson.dumps({**SECRETS, **KIOSK_WORKSPACES}))
    return path


async def test_a_page_view_of_an_erased_device_is_refused_right_after_the_erasure(
    pipeline: Pipeline,
) -> None:
    pipeline.start_worker()
    kiosks = {ws: f"kiosk-{uuid.uuid4().hex[:8]}" for ws in KIOSK_WORKSPACES}
    views = {ws: ev.page_view(ws, kiosk, at(0)) for ws, kiosk in kiosks.items()}
    for view in views.values():
        await pipeline.send("telemetry.page_view", view)
    visitors = {ids.visitor_contact_id(ws, kiosk, ids.ORIGIN) for ws, kiosk in kiosks.items()}
    await pipeline.wait_for(lambda out: visitors <= set(out.latest_profiles()),
                            what="a visitor for every kiosk")  # fmt: skip
    for ws, kiosk in kiosks.items():
        run = await idp_erase(pipeline, "--anonymous-id", kiosk, workspace=ws)
        assert run.returncode == 0, run.stderr

        def erased(out: OutputLog, kiosk: str = kiosk) -> bool:
            return any(r.key == kiosk.encode() for r in out.of("identity.erased"))

        await pipeline.wait_for(erased, what=f"the erasure of {kiosk}")
        # The same page view again, then a malformed one of the same device: the same partition,
        # so once the second is refused the first has been decided.
        probe = {"event_id": f"probe-{kiosk}", "workspace_id": ws, "anonymous_id": kiosk,
                 "timestamp": "not a time"}  # fmt: skip
        await pipeline.send("telemetry.page_view", views[ws])
        await pipeline.send("telemetry.page_view", probe)

        def probed(out: OutputLog, probe_id: str = probe["event_id"]) -> bool:
            return probe_id in refused_at_all(out)

        await pipeline.wait_for(probed, what=f"the probe of {kiosk} refused")
    # R16: each page view, stamped before its device's erasure, is refused as erased.
    assert refused(pipeline.outputs, "erased") == {view["event_id"] for view in views.values()}


async def test_a_device_erasure_with_a_wrong_proof_is_refused_and_changes_nothing(
    pipeline: Pipeline, redis_client: aioredis.Redis
) -> None:
    pipeline.start_worker()
    tablet, lead, after_logout, dan = await the_tablet_and_the_phone(pipeline)
    await outbox_cleared(redis_client, pipeline.namespace)
    before = state_records(await dump(redis_client, pipeline.namespace))
    profiles_before = pipeline.outputs.latest_profiles()
    records_before = len(pipeline.outputs.of("identity.profiles"))
    subject = f"device:{TABLET}"
    wrong = {
        "another workspace's secret": erase_proof(SECRETS["ws-b"], subject),
        "another device's proof": erase_proof(SECRET, f"device:{PHONE}"),
        "a user's proof of the same id": erase_proof(SECRET, f"user:{TABLET}"),
        "no 'erase:' prefix": hmac.new(SECRET.encode(), subject.encode(),
                                       hashlib.sha256).hexdigest(),
        "not hex at all": "proof",
    }  # fmt: skip
    forged = [
        {"event_id": f"erase-forged-{i}", "workspace_id": WS, "timestamp": at(20),
         "subject": subject, "proof": proof}
        for i, proof in enumerate(wrong.values())
    ]  # fmt: skip
    for request in forged:
        await pipeline.send("privacy.erase", request, key=subject)
    expected = {request["event_id"] for request in forged}
    await pipeline.wait_for(lambda out: refused(out, "unverified_identity") == expected,
                            what="every forged request refused")  # fmt: skip
    rejections = {r["input_event_id"]: r for r in pipeline.outputs.values("identity.rejected")}
    assert {r["source_topic"].removeprefix(pipeline.prefix) for r in rejections.values()} == {
        "privacy.erase"
    }
    # Nothing changed: no erasure, no profile published again, the same records in Redis.
    assert not pipeline.outputs.of("identity.erased")
    assert len(pipeline.outputs.of("identity.profiles")) == records_before
    assert pipeline.outputs.latest_profiles() == profiles_before
    await outbox_cleared(redis_client, pipeline.namespace)
    assert state_records(await dump(redis_client, pipeline.namespace)) == before
    # The tablet is not erased: a chat stamped before the forged requests is still its lead's.
    chat = ev.chat_start(WS, TABLET, at(8), "conv-cara-3")
    await pipeline.send("telemetry.chat_start", chat)
    await pipeline.wait_for(
        lambda out: matches(profile(out, after_logout),
                            conversation_ids=["conv-cara-2", "conv-cara-3"]),
        what="the tablet's later chat on its lead",
    )  # fmt: skip
    assert not refused(pipeline.outputs, "erased")
    assert profile(pipeline.outputs, lead) == profiles_before[lead]
    assert profile(pipeline.outputs, dan) == profiles_before[dan]


# --- A replay after an erasure ---------------------------------------------------------------------

BOB_EMAIL = "bob.71d0aa@example.net"


@pytest.fixture
async def replay_name(servers: tuple[str, str]) -> AsyncIterator[str]:
    """A replay's name; its namespace (`replay-<name>`) and topics are removed afterwards."""
    name = uuid.uuid4().hex[:8]
    yield name
    await remove_run(servers[0], servers[1], f"replay.{name}.", f"replay-{name}")


@dataclass
class AnnErased:
    """Ann's and Bob's profiles before Ann's erasure, its record, and the profiles after it."""

    ann_before: dict[str, Any]
    bob_before: dict[str, Any]
    erased: dict[str, Any]
    live: dict[str, dict[str, Any]]
    session_events: set[str]  # Ann's signup, login and logout
    bob_events: set[str]


async def erase_ann(pipeline: Pipeline) -> AnnErased:
    """Live events of Ann and Bob, then `idp erase --user-id` of Ann, applied.

    Ann signs up on her laptop with a token that verifies her e-mail, so the lead she was on her
    phone, typing that e-mail into a chat, is merged into her (R7); she uses the shared computer
    between two sessions of Bob's, who also logs in on his own laptop.
    """
    pipeline.start_worker()
    iat = to_epoch_ms(parse_timestamp(at(2))) // 1000
    token = ev.jwt_hs256(SECRET, {"user_id": ANN, "email": ANN_EMAIL, "iat": iat, "exp": TOKEN_EXP})
    ann = [
        ("telemetry.page_view", ev.page_view(WS, "ann-laptop", at(0))),
        ("telemetry.chat_start", ev.chat_start(WS, "ann-laptop", at(1), "conv-ann-1",
                                               email=ANN_EMAIL, name=ANN_NAME)),
        ("telemetry.signup", ev.signup(WS, "ann-laptop", at(2), ANN, SECRET, identity_token=token,
                                       name=ANN_NAME)),
        ("telemetry.chat_start", ev.chat_start(WS, "ann-phone", at(5), "conv-ann-2",
                                               email=ANN_EMAIL)),
        ("telemetry.login", ev.login(WS, "shared", at(13), ANN, SECRET)),
        ("telemetry.chat_start", ev.chat_start(WS, "shared", at(14), "conv-ann-3")),
        ("telemetry.logout", ev.logout(WS, "shared", at(15), ANN)),
    ]  # fmt: skip
    bob = [
        ("telemetry.login", ev.login(WS, "shared", at(10), BOB, SECRET)),
        ("telemetry.chat_start", ev.chat_start(WS, "shared", at(11), "conv-bob-1")),
        ("telemetry.logout", ev.logout(WS, "shared", at(12), BOB)),
        ("telemetry.login", ev.login(WS, "shared", at(18), BOB, SECRET)),
        ("telemetry.chat_start", ev.chat_start(WS, "shared", at(19), "conv-bob-2")),
        ("telemetry.page_view", ev.page_view(WS, "bob-laptop", at(20))),
        ("telemetry.login", ev.login(WS, "bob-laptop", at(21), BOB, SECRET, email=BOB_EMAIL)),
        ("telemetry.chat_start", ev.chat_start(WS, "bob-laptop", at(22), "conv-bob-3")),
    ]  # fmt: skip
    for topic, event in sorted(ann + bob, key=lambda message: message[1]["timestamp"]):
        await pipeline.send(topic, event)
    ann_contact, bob_contact = ids.user_contact_id(WS, ANN), ids.user_contact_id(WS, BOB)
    laptop_lead = ids.visitor_contact_id(WS, "ann-laptop", ids.ORIGIN)
    phone_lead = ids.visitor_contact_id(WS, "ann-phone", ids.ORIGIN)

    def ann_and_bob(out: OutputLog) -> bool:
        mine, his = profile(out, ann_contact), profile(out, bob_contact)
        return (
            matches(mine, type="user", email=ANN_EMAIL, email_verified=True, name=ANN_NAME,
                    conversation_ids=["conv-ann-1", "conv-ann-2", "conv-ann-3"],
                    email_matched_contact_ids=[phone_lead])
            and mine is not None and {laptop_lead, phone_lead} <= set(mine["merged_contact_ids"])
            and set(mine["anonymous_ids"]) == {"ann-laptop", "shared"}  # R2: not her phone
            and matches(his, type="user", email=BOB_EMAIL,
                        conversation_ids=["conv-bob-1", "conv-bob-2", "conv-bob-3"])
            and his is not None and set(his["anonymous_ids"]) == {"shared", "bob-laptop"}
        )  # fmt: skip

    await pipeline.wait_for(ann_and_bob, what="Ann's and Bob's profiles")
    ann_before, bob_before = (
        profile(pipeline.outputs, ann_contact),
        profile(pipeline.outputs, bob_contact),
    )
    assert ann_before is not None and bob_before is not None
    run = await idp_erase(pipeline, "--user-id", ANN)
    assert run.returncode == 0, run.stderr
    await pipeline.wait_for(lambda out: bool(out.of("identity.erased")), what="identity.erased")
    (erased,) = pipeline.outputs.values("identity.erased")
    await pipeline.wait_for(lambda out: tombstoned(out, erased["contact_ids"]),
                            what="the tombstones of her erasure")  # fmt: skip
    sessions = ("telemetry.signup", "telemetry.login", "telemetry.logout")
    return AnnErased(
        ann_before=ann_before, bob_before=bob_before, erased=erased,
        live=pipeline.outputs.latest_profiles(),
        session_events={e["event_id"] for t, e in ann if t in sessions},
        bob_events={e["event_id"] for _, e in bob},
    )  # fmt: skip


async def replay(
    pipeline: Pipeline, redis_client: aioredis.Redis, name: str, log_dir: Path
) -> tuple[OutputLog, dict[bytes, bytes]]:
    """`idp replay <name>` of the live inputs from the beginning: its outputs and its state."""
    run = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "pipeline.cli", "replay", name, "--timeout", "120"],
        cwd=PROJECT_ROOT, env={**pipeline.env, "IDP_RUN_DIR": str(log_dir)},
        capture_output=True, text=True, timeout=240,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout + run.stderr
    assert "caught up" in run.stdout
    to_prefix = f"replay.{name}."
    replayed = await read_topics(pipeline.bootstrap, [to_prefix + t for t in OUTPUT_TOPICS],
                                 to_prefix)  # fmt: skip
    return replayed, await dump(redis_client, f"replay-{name}")


async def test_erasing_a_user_removes_the_lead_merged_into_her_by_email(pipeline: Pipeline) -> None:
    seen = await erase_ann(pipeline)
    merged_into_her = {ids.user_contact_id(WS, ANN), *seen.ann_before["merged_contact_ids"]}
    assert merged_into_her <= set(seen.erased["contact_ids"])
    assert not merged_into_her & set(seen.live)


async def test_a_replay_after_an_erasure_reproduces_the_others_and_no_profile_of_hers(
    pipeline: Pipeline, redis_client: aioredis.Redis, replay_name: str, tmp_path: Path
) -> None:
    seen = await erase_ann(pipeline)
    ann_contact, bob_contact = ids.user_contact_id(WS, ANN), ids.user_contact_id(WS, BOB)
    # Live: Bob's profile did not change because of her erasure.
    assert seen.live[bob_contact] == seen.bob_before
    replayed, state = await replay(pipeline, redis_client, replay_name, tmp_path)
    # The replay: Bob as live; no profile of hers, nor of the visitors her sessions took in.
    profiles = replayed.latest_profiles()
    assert profiles[bob_contact] == seen.live[bob_contact]
    taken_in = set(seen.ann_before["merged_contact_ids"]) - set(
        seen.ann_before["email_matched_contact_ids"]
    )
    assert taken_in and not taken_in & set(profiles)
    assert ann_contact not in profiles
    assert not [
        c for c, p in profiles.items() if p["user_id"] == ANN or p["merged_into"] == ann_contact
    ]
    # Her session events are the only ones the replay refuses, and as erased.
    rejections = replayed.values("identity.rejected")
    assert {r["reason"] for r in rejections} <= {"erased"}
    assert refused(replayed, "erased") <= seen.session_events
    # No record of the replay's state names her user_id (her e-mail, name and conversations:
    # see the next test).
    found = traces(state_records(state), [ANN])
    assert not found, "\n".join(found)


async def test_a_replay_after_an_erasure_keeps_nothing_of_her(
    pipeline: Pipeline, redis_client: aioredis.Redis, replay_name: str, tmp_path: Path
) -> None:
    seen = await erase_ann(pipeline)
    replayed, state = await replay(pipeline, redis_client, replay_name, tmp_path)
    mine = [ANN, ANN_EMAIL, ANN_NAME, "conv-ann-1", "conv-ann-2", "conv-ann-3"]
    # No replayed profile holds anything of hers, nor is one of the contacts merged into her.
    profiles = replayed.latest_profiles()
    found = traces({c.encode(): repr(p).encode() for c, p in profiles.items()}, mine)
    assert not found, "\n".join(found)
    assert not set(seen.ann_before["merged_contact_ids"]) & set(profiles)
    # Her signup, login and logout are all refused as erased (R16), whatever the order in which
    # the replay reads the topics.
    assert refused(replayed, "erased") == seen.session_events
    # Its state holds nothing of her (its outbox left aside: outputs in transit, which name her
    # as identity.erased and the rejections of her events do).
    found = traces(state_records(state), mine)
    assert not found, "\n".join(found)
