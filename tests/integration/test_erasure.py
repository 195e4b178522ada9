"""Erasure (R16) through the real broker and Redis, requested with `idp erase`.

Ann uses her laptop and, after Bob, a shared computer; Bob keeps using the shared computer after
her. Erasing Ann tombstones her profile and the visitors merged into it, publishes one
`identity.erased`, leaves Bob's profile as it was, and leaves nothing of Ann in Redis.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
from datetime import UTC, datetime, timedelta

import redis.asyncio as aioredis

from pipeline.core import ids
from tests.integration.conftest import SECRETS
from tests.support import events as ev
from tests.support.kafka import PROJECT_ROOT, Pipeline

WS = "ws-a"
SECRET = SECRETS[WS]
ANN, BOB = "ann-4f9c2e", "bob-71d0aa"
ANN_EMAIL, ANN_NAME = "ann.4f9c2e@example.com", "Annabel Quartermaine"
START = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=30)


def at(minutes: int) -> str:
    return (START + timedelta(minutes=minutes)).isoformat().replace("+00:00", "Z")


async def idp_erase(pipeline: Pipeline, *args: str) -> subprocess.CompletedProcess:
    return await asyncio.to_thread(
        subprocess.run, [sys.executable, "-m", "pipeline.cli", "erase", WS, *args],
        cwd=PROJECT_ROOT, env=pipeline.env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip


async def everything_in(client: aioredis.Redis, namespace: str) -> bytes:
    """Every key and every field of every hash of the namespace, as one blob to search."""
    blob = []
    async for key in client.scan_iter(match=f"{namespace}:*", count=1000):
        blob.append(key)
        if await client.type(key) == b"hash":
            for field, value in (await client.hgetall(key)).items():
                blob += [field, value]
    return b"\n".join(blob)


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

    def profile(out, contact: str) -> dict | None:
        return out.latest_profiles().get(contact)

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
    await pipeline.wait_for(lambda out: out.of("identity.erased"), what="identity.erased")
    (erased,) = pipeline.outputs.values("identity.erased")
    assert erased["subject"] == f"user:{ANN}"
    removed = set(erased["contact_ids"])
    assert {ann_contact, *ann_before["merged_contact_ids"]} <= removed
    assert bob_contact not in removed
    # Every removed contact is tombstoned on the compacted topic; Bob's is untouched.
    await pipeline.wait_for(lambda out: not removed & set(out.latest_profiles()),
                            what="tombstones for every removed contact")  # fmt: skip
    assert profile(pipeline.outputs, bob_contact) == bob_before
    # Nothing of Ann is left in Redis: her user_id, e-mail, name or conversations. (The outbox
    # record of the erasure's outputs names the subject, as identity.erased does, until the
    # broker has them and the worker deletes it: await that first.)
    deadline = asyncio.get_running_loop().time() + 30
    while [k async for k in redis_client.scan_iter(match=f"{pipeline.namespace}:outbox:*")]:
        assert asyncio.get_running_loop().time() < deadline, "the outbox was never cleared"
        await asyncio.sleep(0.1)
    blob = await everything_in(redis_client, pipeline.namespace)
    for trace in (ANN.encode(), ANN_EMAIL.encode(), ANN_NAME.encode(), b"conv-ann-"):
        where = blob.find(trace)
        assert where < 0, blob[max(0, where - 300) : where + 100]
    # Her session events replayed (a signup, a login, a logout) are refused as erased.
    hers = [events[2], events[6], events[8]]
    for topic, event in hers:
        await pipeline.send(topic, event)

    def refused_erased(out) -> set[str]:
        return {
            r["input_event_id"] for r in out.values("identity.rejected") if r["reason"] == "erased"
        }

    await pipeline.wait_for(lambda out: refused_erased(out) == {e["event_id"] for _, e in hers},
                            what="her replayed session events refused as erased")  # fmt: skip
    # A later signup of the same user_id starts a new, empty profile.
    later = ev.signup(WS, "new-laptop", datetime.now(UTC).isoformat().replace("+00:00", "Z"),
                      ANN, SECRET)  # fmt: skip
    await pipeline.send("telemetry.signup", later)
    await pipeline.wait_for(lambda out: profile(out, ann_contact) is not None,
                            what="the new profile of the same user_id")  # fmt: skip
    fresh = profile(pipeline.outputs, ann_contact)
    assert (fresh["anonymous_ids"], fresh["conversation_ids"], fresh["email"]) == (
        ["new-laptop"], [], None)  # fmt: skip
