"""Builders of input events for tests, so each test states only what matters to it."""

from __future__ import annotations

import base64
import hashlib
import hmac
import itertools
import json
from datetime import UTC, datetime, timedelta
from typing import Any

_ids = itertools.count(1)
HOURS_START = datetime(2026, 11, 1, tzinfo=UTC)  # hour 0 of `at_hour`


def at_hour(hours: float) -> str:
    """An event timestamp `hours` after `HOURS_START`."""
    return (HOURS_START + timedelta(hours=hours)).strftime("%Y-%m-%dT%H:%M:%SZ")


def epoch_ms_at_hour(hours: float) -> int:
    """The epoch ms of `at_hour(hours)`, as the core stores event times."""
    return int((HOURS_START + timedelta(hours=hours)).timestamp() * 1000)


def next_id(prefix: str = "e") -> str:
    return f"{prefix}-{next(_ids)}"


def user_hash(secret: str, user_id: str) -> str:
    return hmac.new(secret.encode(), user_id.encode(), hashlib.sha256).hexdigest()


def jwt_hs256(secret: str, claims: dict[str, Any], *, header: dict[str, Any] | None = None) -> str:
    """A JWT built by hand (not with PyJWT), so tests do not trust the code under test."""

    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    head = b64(json.dumps(header or {"alg": "HS256", "typ": "JWT"}).encode())
    body = b64(json.dumps(claims).encode())
    signature = hmac.new(secret.encode(), f"{head}.{body}".encode(), hashlib.sha256).digest()
    return f"{head}.{body}.{b64(signature)}"


def page_view(ws: str, anon: str, ts: str, **extra: Any) -> dict[str, Any]:
    return {"event_id": next_id("pv"), "workspace_id": ws, "anonymous_id": anon,
            "timestamp": ts, **extra}  # fmt: skip


def chat_start(ws: str, anon: str, ts: str, conversation_id: str, **extra: Any) -> dict[str, Any]:
    return {"event_id": next_id("chat"), "workspace_id": ws, "anonymous_id": anon,
            "timestamp": ts, "conversation_id": conversation_id, **extra}  # fmt: skip


def login(ws: str, anon: str, ts: str, user_id: str, secret: str, **extra: Any) -> dict[str, Any]:
    proof = {} if "identity_token" in extra else {"user_hash": user_hash(secret, user_id)}
    return {"event_id": next_id("login"), "workspace_id": ws, "anonymous_id": anon,
            "timestamp": ts, "user_id": user_id, **proof, **extra}  # fmt: skip


def signup(ws: str, anon: str, ts: str, user_id: str, secret: str, **extra: Any) -> dict[str, Any]:
    event = login(ws, anon, ts, user_id, secret, **extra)
    event["event_id"] = next_id("signup")
    return event


def logout(ws: str, anon: str, ts: str, user_id: str) -> dict[str, Any]:
    return {"event_id": next_id("logout"), "workspace_id": ws, "anonymous_id": anon,
            "timestamp": ts, "user_id": user_id}  # fmt: skip


TOPIC_OF = {"pv": "telemetry.page_view", "chat": "telemetry.chat_start", "signup": "telemetry.signup",
            "login": "telemetry.login", "logout": "telemetry.logout"}  # fmt: skip


def model(event: dict[str, Any]):
    """The pydantic input model of an event dict built by this module (by its event_id prefix)."""
    from schemas import INPUT_MODELS

    topic = TOPIC_OF[event["event_id"].split("-")[0]]
    return INPUT_MODELS[topic].model_validate(event)


def model_of(topic: str, value: dict[str, Any]):
    """The pydantic input model of an event of `topic`."""
    from schemas import INPUT_MODELS

    return INPUT_MODELS[topic].model_validate(value)
