"""The HTTP endpoints without a broker: lookups over the in-memory store, auth, readiness.

Expected contacts are worked out by hand from SPEC §2 (R1, R6, R7, R10), never taken from
the code's output.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass

import orjson
import pytest
from aiohttp.test_utils import TestClient, TestServer
from pydantic import SecretStr

from pipeline.core import ids
from pipeline.core.facts import Device, EmailEntry, SessionFact
from pipeline.core.rules import CoreConfig
from pipeline.state.base import Keys, Record
from pipeline.state.memory import MemoryStore
from pipeline.worker import metrics
from pipeline.worker.http import ProfileLookup, Readiness, bearer_ok, build_web_app

WS = "ws-a"
KEYS = Keys("idp")
TOKEN = "the-api-token"


def put(store: MemoryStore, kind: str, ident: str, data: bytes) -> None:
    store.records[KEYS.of(WS, kind, ident)] = Record(1, data)  # type: ignore[arg-type]


def profile(contact_id: str, **fields: object) -> bytes:
    return orjson.dumps({"contact_id": contact_id, "workspace_id": WS, "merged_into": None,
                         **fields})  # fmt: skip


def user(user_id: str) -> str:
    return ids.user_contact_id(WS, user_id)


@pytest.fixture
def store() -> MemoryStore:
    return MemoryStore()


@pytest.fixture
def lookup(store: MemoryStore) -> ProfileLookup:
    return ProfileLookup(store, KEYS, CoreConfig())


async def find(lookup: ProfileLookup, **query: str) -> tuple[int, dict]:
    answer = await lookup.find(WS, query)
    return answer.status, orjson.loads(answer.body)


async def test_a_contact_id_follows_merged_into(store: MemoryStore, lookup: ProfileLookup) -> None:
    put(store, "contact", "v1", profile("v1", merged_into=user("u1")))
    put(store, "contact", user("u1"), profile(user("u1"), user_id="u1"))
    assert await find(lookup, contact_id="v1") == (
        200,
        orjson.loads(profile(user("u1"), user_id="u1")),
    )
    # The stored bytes themselves: what identity.profiles last carried.
    assert (await lookup.find(WS, {"contact_id": user("u1")})).body == profile(
        user("u1"), user_id="u1"
    )


async def test_a_merge_cycle_or_a_missing_target_ends(store: MemoryStore, lookup: ProfileLookup
                                                      ) -> None:  # fmt: skip
    put(store, "contact", "a", profile("a", merged_into="b"))
    put(store, "contact", "b", profile("b", merged_into="a"))
    put(store, "contact", "c", profile("c", merged_into="gone"))
    status, _ = await find(lookup, contact_id="a")
    assert status == 200
    assert (await find(lookup, contact_id="c"))[0] == 404
    put(store, "contact", "t", b"")  # a tombstone
    assert (await find(lookup, contact_id="t"))[0] == 404


async def test_a_user_id_names_the_users_contact(store: MemoryStore, lookup: ProfileLookup) -> None:
    put(store, "contact", user("u1"), profile(user("u1"), user_id="u1"))
    assert (await find(lookup, user_id=" u1 "))[1]["user_id"] == "u1"  # trimmed (R3)
    assert (await find(lookup, user_id="u2"))[0] == 404


async def test_an_email_names_its_one_user_or_answers_409(store: MemoryStore,
                                                          lookup: ProfileLookup) -> None:  # fmt: skip
    put(store, "contact", user("u1"), profile(user("u1"), user_id="u1"))
    put(store, "email", "one@x.test", EmailEntry(verified={"u1": (1, "e1")}).to_bytes())
    both = EmailEntry(verified={"u2": (1, "e2"), "u3": (2, "e3")}, unverified=("u1",))
    put(store, "email", "two@x.test", both.to_bytes())
    put(store, "email", "claimed@x.test", EmailEntry(unverified=("u1",)).to_bytes())
    put(store, "email", "lead@x.test", EmailEntry(leads=((1, "c1", "d9"),)).to_bytes())
    assert (await find(lookup, email=" One@X.test"))[1]["user_id"] == "u1"
    status, body = await find(lookup, email="two@x.test")  # the verified ones, not the claim
    assert status == 409 and sorted(body["contact_ids"]) == sorted([user("u2"), user("u3")])
    assert (await find(lookup, email="claimed@x.test"))[1]["user_id"] == "u1"
    assert (await find(lookup, email="lead@x.test"))[0] == 404  # a chat names no user (R2)
    assert (await find(lookup, email="none@x.test"))[0] == 404


async def test_a_device_names_its_current_sessions_contact(store: MemoryStore,
                                                           lookup: ProfileLookup) -> None:  # fmt: skip
    linked = Device().with_session(SessionFact(1000, "login-1", "login", "u1"))
    put(store, "dev", "d1", linked.to_bytes())
    put(store, "contact", user("u1"), profile(user("u1"), user_id="u1"))
    assert (await find(lookup, anonymous_id="d1"))[1]["contact_id"] == user("u1")

    left = linked.with_session(SessionFact(2000, "logout-1", "logout", "u1"))
    put(store, "dev", "d2", left.to_bytes())
    after = ids.visitor_contact_id(WS, "d2", "logout-1")  # R10: a new visitor after the logout
    put(store, "contact", after, profile(after, type="visitor"))
    assert (await find(lookup, anonymous_id="d2"))[1]["contact_id"] == after

    put(store, "dev", "d3", Device(first_activity=5).to_bytes())  # a visitor merged away later
    origin = ids.visitor_contact_id(WS, "d3", "origin")
    put(store, "contact", origin, profile(origin, merged_into=user("u1")))
    assert (await find(lookup, anonymous_id="d3"))[1]["contact_id"] == user("u1")
    assert (await find(lookup, anonymous_id="d-none"))[0] == 404


async def test_r1_priority_decides_between_several_identifiers(store: MemoryStore,
                                                               lookup: ProfileLookup) -> None:  # fmt: skip
    for u in ("u1", "u2"):
        put(store, "contact", user(u), profile(user(u), user_id=u))
    put(store, "email", "e@x.test", EmailEntry(verified={"u2": (1, "e")}).to_bytes())
    assert (await find(lookup, user_id="u1", email="e@x.test"))[1]["user_id"] == "u1"
    assert (await find(lookup, contact_id=user("u2"), user_id="u1"))[1]["user_id"] == "u2"
    assert (await find(lookup, email="e@x.test", anonymous_id="d"))[1]["user_id"] == "u2"
    assert (await find(lookup))[0] == 400
    assert (await find(lookup, user_id="  "))[0] == 400
    assert (await find(lookup, user_id="x" * 257))[0] == 400


def test_the_bearer_token_is_compared_exactly() -> None:
    token = SecretStr(TOKEN)
    assert bearer_ok(f"Bearer {TOKEN}", token)
    assert bearer_ok(f"bearer {TOKEN}", token)  # the scheme is case-insensitive (RFC 7235)
    for header in (None, "", TOKEN, f"Basic {TOKEN}", f"Bearer {TOKEN}x", f"Bearer {TOKEN[:-1]}",
                   "Bearer "):  # fmt: skip
        assert not bearer_ok(header, token), header


@dataclass
class Checks:
    redis: str | None = None
    slow: bool = False

    async def group(self) -> str | None:
        return None

    async def kafka(self) -> str | None:
        if self.slow:
            await asyncio.sleep(60)
        return None

    async def redis_check(self) -> str | None:
        return self.redis


@pytest.fixture
async def client_for(store: MemoryStore, lookup: ProfileLookup) -> AsyncIterator:
    clients: list[TestClient] = []

    async def make(token: str | None, checks: Checks | None = None) -> TestClient:
        checks = checks or Checks()
        readiness = Readiness([checks.group, checks.kafka, checks.redis_check])
        app = build_web_app(lookup=lookup, readiness=readiness,
                            api_token=SecretStr(token) if token is not None else None)  # fmt: skip
        client = TestClient(TestServer(app))
        await client.start_server()
        clients.append(client)
        return client

    yield make
    for client in clients:
        await client.close()


async def test_v1_needs_the_token_and_is_closed_without_one(store: MemoryStore, client_for
                                                            ) -> None:  # fmt: skip
    put(store, "contact", user("u1"), profile(user("u1"), user_id="u1"))
    path = f"/v1/workspaces/{WS}/profile?user_id=u1"
    client = await client_for(TOKEN)
    assert (await client.get(path)).status == 401
    reply = await client.get(path, headers={"Authorization": "Bearer nope"})
    assert reply.status == 401 and reply.headers["WWW-Authenticate"].startswith("Bearer")
    reply = await client.get(path, headers={"Authorization": f"Bearer {TOKEN}"})
    assert reply.status == 200 and (await reply.json())["user_id"] == "u1"
    assert reply.content_type == "application/json"

    closed = await client_for(None)
    assert (await closed.get(path, headers={"Authorization": f"Bearer {TOKEN}"})).status == 403
    empty = await client_for("")
    assert (await empty.get(path, headers={"Authorization": "Bearer "})).status == 403


async def test_health_readiness_and_metrics(client_for, monkeypatch) -> None:
    checks = Checks()
    client = await client_for(TOKEN, checks)
    assert (await client.get("/healthz")).status == 200
    reply = await client.get("/readyz")
    assert reply.status == 200 and await reply.json() == {"ready": True}

    checks.redis = "redis: PING not answered"
    reply = await client.get("/readyz")
    assert reply.status == 503
    assert await reply.json() == {"ready": False, "reasons": ["redis: PING not answered"]}

    checks.redis, checks.slow = None, True
    monkeypatch.setattr("pipeline.worker.http.PROBE_TIMEOUT_S", 0.05)
    reply = await client.get("/readyz")
    assert reply.status == 503 and (await reply.json())["reasons"][0].startswith("kafka")

    metrics.CONFLICTS.inc(0)
    reply = await client.get("/metrics")
    assert reply.status == 200 and "idp_commit_conflicts_total" in await reply.text()
    assert reply.headers["Content-Type"].startswith("text/plain")


@dataclass(frozen=True)
class TP:
    topic: str
    partition: int


def test_lag_is_highwater_minus_committed_and_revoked_partitions_drop() -> None:
    exported: set[tuple[str, str]] = set()
    a, b = TP("lag.t", 0), TP("lag.t", 1)
    highwater = {a: 10, b: 7}
    committed = {a: 4, b: None}
    metrics.sample_lag([a, b], highwater.get, committed.get, exported)
    assert metrics.CONSUMER_LAG.labels("lag.t", "0")._value.get() == 6
    assert exported == {("lag.t", "0")}  # nothing known of b yet: no series
    metrics.sample_lag([b], highwater.get, {b: 7}.get, exported)
    assert exported == {("lag.t", "1")}
    samples = {s.labels["partition"] for m in metrics.CONSUMER_LAG.collect() for s in m.samples
               if s.labels.get("topic") == "lag.t"}  # fmt: skip
    assert samples == {"1"}


async def test_the_timed_store_observes_each_round_trip(store: MemoryStore) -> None:
    timed = metrics.TimedStore(store)

    def count(op: str) -> float:
        for family in metrics.REDIS_SECONDS.collect():
            for sample in family.samples:
                if sample.name.endswith("_count") and sample.labels == {"op": op}:
                    return sample.value
        return 0.0

    before = count("read"), count("commit")
    await timed.read(["k"])
    await timed.commit([])
    assert (count("read"), count("commit")) == (before[0] + 1, before[1] + 1)
