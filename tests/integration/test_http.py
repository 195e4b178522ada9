"""The worker's HTTP endpoints through the real broker and Redis (SPEC §4).

A journey is produced, and for every profile `identity.profiles` last carried the lookup API
answers that profile (or, for a contact merged away, the one it was merged into). The expected
contacts of devices, users and e-mails are worked out by hand from SPEC §2.
"""

from __future__ import annotations

import asyncio
import socket
import time
from typing import Any

import aiohttp
import orjson

from pipeline.core import ids
from tests.integration.conftest import SECRETS, TOKEN_EXP
from tests.support import events as ev
from tests.support.kafka import Pipeline, read_topics

WS = "ws-a"
SECRET = SECRETS[WS]
TOKEN = "api-token-for-the-tests-0123456789"
PV, CHAT, SIGNUP, LOGIN, LOGOUT = (
    f"telemetry.{t}" for t in ("page_view", "chat_start", "signup", "login", "logout")
)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def t(minute: int) -> str:
    return f"2026-11-24T12:{minute:02d}:00Z"


def user(user_id: str) -> str:
    return ids.user_contact_id(WS, user_id)


def token(user_id: str, email: str) -> str:
    return ev.jwt_hs256(SECRET, {"user_id": user_id, "email": email, "exp": TOKEN_EXP})


class Api:
    """A client of one worker's endpoints."""

    def __init__(self, session: aiohttp.ClientSession, port: int) -> None:
        self.session = session
        self.base = f"http://127.0.0.1:{port}"

    async def get(self, path: str, *, auth: str | None = TOKEN, **query: str
                  ) -> tuple[int, Any, str]:  # fmt: skip
        headers = {"Authorization": f"Bearer {auth}"} if auth is not None else {}
        async with self.session.get(self.base + path, params=query, headers=headers) as reply:
            body = await reply.read()
            kind = reply.headers.get("Content-Type", "")
            return reply.status, orjson.loads(body) if "json" in kind else body.decode(), kind

    async def profile(self, **query: str) -> tuple[int, Any]:
        status, body, _ = await self.get(f"/v1/workspaces/{WS}/profile", **query)
        return status, body

    async def until(self, path: str, status: int, *, timeout: float, log) -> Any:
        deadline = time.monotonic() + timeout
        last: object = None
        while time.monotonic() < deadline:
            try:
                last = await self.get(path)
                if last[0] == status:
                    return last[1]
            except aiohttp.ClientError as exc:
                last = exc
            await asyncio.sleep(0.2)
        raise AssertionError(f"{path} never answered {status}; last: {last}\n{log()}")

    async def until_true(self, condition, *, timeout: float, log) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if await condition():
                return
            await asyncio.sleep(0.2)
        raise AssertionError(f"timed out after {timeout}s\n{log()}")

    async def quiet(self, sent: int, *, timeout: float, log) -> None:
        """Until every input is accounted for and no batch's outputs are still on their way."""
        deadline = time.monotonic() + timeout
        values: dict[str, float] = {}
        while time.monotonic() < deadline:
            _, text, _ = await self.get("/metrics")
            values = metric_totals(text)
            done = sum(values.get(f"idp_events_{k}_total", 0)
                       for k in ("applied", "unchanged", "rejected"))  # fmt: skip
            if done >= sent and values.get("idp_outbox_in_flight", 1) == 0:
                return
            await asyncio.sleep(0.2)
        raise AssertionError(f"not quiet: {values}\n{log()}")


def metric_totals(text: str) -> dict[str, float]:
    """Sample name -> the sum over its labels."""
    totals: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name_labels, _, value = line.rpartition(" ")
            name = name_labels.split("{", 1)[0]
            totals[name] = totals.get(name, 0.0) + float(value)
    return totals


def journey() -> list[tuple[str, dict[str, Any]]]:
    """Devices d1..d6 of users u1..u5 (see the expectations in the test)."""
    return [
        # d1: a visitor becomes a lead and signs up as u1 with a verified e-mail.
        (PV, ev.page_view(WS, "d1", t(1))),
        (CHAT, ev.chat_start(WS, "d1", t(2), "conv-1", city="Paris")),
        (SIGNUP, ev.signup(WS, "d1", t(3), "u1", SECRET, identity_token=token("u1", "a@x.test"))),
        # d2: u1 logs in, then out; the next page view is a new visitor's.
        (LOGIN, ev.login(WS, "d2", t(4), "u1", SECRET)),
        (LOGOUT, ev.logout(WS, "d2", t(6), "u1")),
        (PV, ev.page_view(WS, "d2", t(7))),
        # d3: a lead typing u1's verified e-mail is merged into u1; the device stays unlinked.
        (CHAT, ev.chat_start(WS, "d3", t(2), "conv-3", email="a@x.test")),
        (PV, ev.page_view(WS, "d3", t(8))),
        # d4, d5: two users verify the same e-mail.
        (LOGIN, ev.login(WS, "d4", t(3), "u2", SECRET, identity_token=token("u2", "s@x.test"))),
        (LOGIN, ev.login(WS, "d5", t(3), "u3", SECRET, identity_token=token("u3", "s@x.test"))),
        # d6: u4 logs in, then u5 on the same device (u4's session there ends).
        (LOGIN, ev.login(WS, "d6", t(2), "u4", SECRET)),
        (LOGIN, ev.login(WS, "d6", t(4), "u5", SECRET)),
    ]


def live(latest: dict[str, dict[str, Any]], contact_id: str) -> dict[str, Any]:
    """The profile a contact ends in, following merged_into in the published profiles."""
    profile = latest[contact_id]
    while profile["merged_into"]:
        profile = latest[profile["merged_into"]]
    return profile


def unmerged_visitor_of(latest: dict[str, dict[str, Any]], device: str) -> str:
    (contact_id,) = [c for c, p in latest.items() if p["anonymous_ids"] == [device]
                     and p["type"] == "visitor" and p["merged_into"] is None]  # fmt: skip
    return contact_id


async def test_the_api_answers_what_identity_profiles_last_published(pipeline: Pipeline) -> None:
    port = free_port()
    pipeline.start_worker({"IDP_HTTP_PORT": str(port), "IDP_API_TOKEN": TOKEN})
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
        api = Api(session, port)
        assert await api.until("/healthz", 200, timeout=60, log=pipeline.worker_log) == {
            "status": "ok"
        }
        assert await api.until("/readyz", 200, timeout=60, log=pipeline.worker_log) == {
            "ready": True
        }
        events = journey()
        await pipeline.send_many([(topic, orjson.dumps(value), value["anonymous_id"].encode())
                                  for topic, value in events])  # fmt: skip
        await pipeline.wait_for(lambda out: user("u5") in out.latest_profiles(), timeout=60,
                                what="the journey's profiles")  # fmt: skip
        await api.quiet(len(events), timeout=60, log=pipeline.worker_log)
        published = await read_topics(pipeline.bootstrap, [pipeline.prefix + "identity.profiles"],
                                      pipeline.prefix)  # fmt: skip
        latest = published.latest_profiles()
        assert {user(u) for u in ("u1", "u2", "u3", "u4", "u5")} <= set(latest)

        # Every profile, by its contact_id: itself, or the profile it was merged into.
        for contact_id in latest:
            status, body = await api.profile(contact_id=contact_id)
            assert (status, body) == (200, live(latest, contact_id)), contact_id
        merged = [c for c, p in latest.items() if p["merged_into"]]
        assert merged, "the journey merges contacts"

        # Users by user_id; devices by their current session; e-mails by who verified them.
        for user_id in ("u1", "u2", "u3", "u4", "u5"):
            assert await api.profile(user_id=user_id) == (200, latest[user(user_id)])
        current = {
            "d1": user("u1"),  # linked by the signup
            "d2": unmerged_visitor_of(latest, "d2"),  # the visitor after the logout
            "d3": unmerged_visitor_of(latest, "d3"),  # matched by e-mail, never linked (R2, R7)
            "d4": user("u2"),
            "d5": user("u3"),
            "d6": user("u5"),  # u5's login ended u4's session there (R8)
        }
        assert current["d2"] != ids.visitor_contact_id(WS, "d2", "origin")
        for device, contact_id in current.items():
            assert await api.profile(anonymous_id=device) == (200, latest[contact_id]), device
        assert await api.profile(email="A@X.test ") == (200, latest[user("u1")])
        status, body = await api.profile(email="s@x.test")
        assert status == 409
        assert sorted(body["contact_ids"]) == sorted([user("u2"), user("u3")])

        # R1: of several identifiers, the contact_id decides, then user_id, e-mail, device.
        assert await api.profile(user_id="u2", anonymous_id="d6") == (200, latest[user("u2")])
        assert await api.profile(contact_id=user("u3"), user_id="u2") == (200, latest[user("u3")])

        # Nothing named: 404; no identifier: 400.
        for query in ({"user_id": "nobody"}, {"anonymous_id": "no-device"},
                      {"email": "none@x.test"}, {"contact_id": "0" * 24}):  # fmt: skip
            assert (await api.profile(**query))[0] == 404, query
        assert (await api.profile())[0] == 400

        # The bearer token: missing or wrong is 401.
        path = f"/v1/workspaces/{WS}/profile"
        assert (await api.get(path, auth=None, user_id="u1"))[0] == 401
        assert (await api.get(path, auth=TOKEN + "x", user_id="u1"))[0] == 401
        # Another workspace never sees this one's profiles (R13).
        assert (await api.get("/v1/workspaces/ws-b/profile", user_id="u1"))[0] == 404

        status, text, kind = await api.get("/metrics", auth=None)
        assert status == 200 and kind.startswith("text/plain")
        assert "idp_events_in_total" in text and "idp_redis_round_trip_seconds_bucket" in text
