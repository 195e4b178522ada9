"""Checks of wire messages against the published JSON Schemas (schemas/json/), by `jsonschema`.

The validator reads the files alone, never the pydantic models that generated them, so a test
with it checks what a consumer written against the files would accept.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import cache
from pathlib import Path
from typing import Any

import orjson
from jsonschema import Draft202012Validator

from pipeline.core import ids
from pipeline.core.model import Emit, Refusal
from pipeline.core.oracle import Oracle
from pipeline.tools import journey
from pipeline.tools.journey import user_hash
from pipeline.worker.codec import Item, Source, decode, rejection
from schemas.time import format_timestamp, parse_timestamp
from schemas.topics import CHAT_START, LOGIN, LOGOUT, PAGE_VIEW

JSON_DIR = Path(__file__).resolve().parents[2] / "schemas" / "json"
PROFILES = "identity.profiles"


@cache
def validator(topic: str) -> Draft202012Validator:
    """The validator of a topic's schema file, with date-time format checking on."""
    schema = orjson.loads((JSON_DIR / f"{topic}.schema.json").read_bytes())
    Draft202012Validator.check_schema(schema)
    return Draft202012Validator(schema, format_checker=Draft202012Validator.FORMAT_CHECKER)


def schema_errors(topic: str, value: Any) -> list[str]:
    """Every way `value` breaks the schema of `topic` (none: it conforms)."""
    return [
        f"{'/'.join(map(str, error.absolute_path)) or '(root)'}: {error.message}"
        for error in validator(topic).iter_errors(value)
    ]


def check_outputs(records: Iterable[tuple[str, bytes, bytes | Any]]) -> dict[str, int]:
    """Check every output record (topic, key, value) in order; count them by topic.

    A value (JSON text, or the JSON value it was read as) must conform to its topic's schema; a
    None value (a tombstone) is allowed only on the profiles topic, keyed by a contact_id
    published there before.
    """
    counts: dict[str, int] = {}
    published: set[bytes] = set()
    problems: list[str] = []
    for topic, key, value in records:
        counts[topic] = counts.get(topic, 0) + 1
        if not (JSON_DIR / f"{topic}.schema.json").exists():
            problems.append(f"{topic}: no schema file for an output topic")
            continue
        if value is None:
            if topic != PROFILES or key not in published:
                problems.append(f"{topic} {key!r}: a tombstone not keyed by a published contact")
            continue
        message = orjson.loads(value) if isinstance(value, bytes) else value
        problems += [f"{topic} {key!r}: {e}" for e in schema_errors(topic, message)]
        if topic == PROFILES:
            contact_id = message.get("contact_id") if isinstance(message, dict) else None
            if not isinstance(contact_id, str) or key != contact_id.encode():
                problems.append(f"{topic} {key!r}: not keyed by its contact_id")
            published.add(key)
    assert not problems, "\n".join(problems[:20])
    return counts


# --- A journey with everything the output topics can carry -------------------------------------


@dataclass(frozen=True, slots=True)
class Input:
    """One input record: its event time is also its Kafka record's timestamp (R14)."""

    topic: str
    key: bytes
    value: bytes
    at_ms: int
    reason: str | None = None  # an invalid input: the reason SPEC names for it, "" if none


def _ms(at: datetime) -> int:
    return int(at.timestamp() * 1000)


def journey_inputs(secrets: dict[str, str], start: datetime, *, people: int = 80) -> list[Input]:
    """`pipeline.tools.journey.generate`'s journey (junk included), its events moved to begin at `start`.

    The junk (generic anonymous_ids, broken JSON) is refused (R3): those inputs carry reason "".
    """
    shift = start - journey.START
    inputs: list[Input] = []
    at_ms = _ms(start)
    for record in journey.generate(secrets, people=people, seed=23, junk_ratio=0.05):
        if isinstance(record.value, bytes):  # broken JSON: no event time, stamped as the last
            inputs.append(Input(record.topic, record.key.encode(), record.value, at_ms, ""))
            continue
        at = parse_timestamp(record.value["timestamp"]) + shift
        at_ms = _ms(at)
        value = {**record.value, "timestamp": format_timestamp(at)}
        junk = value["anonymous_id"] in JUNK_IDS
        inputs.append(Input(record.topic, record.key.encode(), orjson.dumps(value), at_ms,
                            "" if junk else None))  # fmt: skip
    return inputs


JUNK_IDS = {"undefined", "null", "0"}  # the generic ids `journey.generate` sends (R3)


def invalid_inputs(workspace_id: str, secret: str, at: datetime) -> list[Input]:
    """Inputs that cannot be applied, each to yield one `identity.rejected` record (SPEC §3)."""
    stamp = format_timestamp(at)
    base = {"workspace_id": workspace_id, "timestamp": stamp}

    def event(name: str, **fields: Any) -> dict[str, Any]:
        return {"event_id": f"bad-{name}", "anonymous_id": f"bad-device-{name}", **base, **fields}

    login_without_proof = event("noproof", user_id="u-noproof")
    wrong_hash = event("wronghash", user_id="u-wrong", user_hash=user_hash(secret, "someone-else"))
    long_url = event("long", url="https://example.com/" + "x" * 6000)
    long_url["anonymous_id"] = "undefined"  # refused (R3), and its original is truncated
    cases: list[tuple[str, bytes, bytes, str]] = [
        (LOGIN, b"bad-device-noproof", orjson.dumps(login_without_proof), ""),
        (LOGIN, b"bad-device-wronghash", orjson.dumps(wrong_hash), "unverified_identity"),
        (PAGE_VIEW, b"bad-device-ws", orjson.dumps(event("ws", workspace_id="ws-unknown")),
         "unknown_workspace"),
        (PAGE_VIEW, b"bad-device-array", b"[1, 2, 3]", ""),
        (PAGE_VIEW, b"bad-device-utf8", b'{"event_id": "\xff\xfe"}', ""),
        (PAGE_VIEW, b"undefined", orjson.dumps(long_url), ""),
        (PAGE_VIEW, b"bad-device-huge", orjson.dumps(event("huge", url="y" * 70_000)), ""),
        (CHAT_START, b"bad-device-nochat", orjson.dumps(event("nochat")), ""),
        (LOGOUT, b"bad-device-time", orjson.dumps(event("time", user_id="u", timestamp="noon")), ""),
    ]  # fmt: skip
    return [Input(topic, key, value, _ms(at), reason) for topic, key, value, reason in cases]


def late_login(workspace_id: str, secret: str, at: datetime) -> tuple[Input, Input, str]:
    """A page view at `at` + 4 min, and a login on its device at `at`, to be read after it.

    Stamped before all the device's activity, the login makes the device the user's from the
    start, so the visitor the page view created never existed (R6, R11): its profile is
    tombstoned. Returns both inputs and that visitor's contact_id.
    """
    device = "late-login-device"
    view = {"event_id": "late-view", "workspace_id": workspace_id, "anonymous_id": device,
            "timestamp": format_timestamp(at + timedelta(minutes=4))}  # fmt: skip
    login = {"event_id": "late-login", "workspace_id": workspace_id, "anonymous_id": device,
             "timestamp": format_timestamp(at), "user_id": "late-user",
             "user_hash": user_hash(secret, "late-user")}  # fmt: skip
    return (
        Input(PAGE_VIEW, device.encode(), orjson.dumps(view), _ms(at + timedelta(minutes=4))),
        Input(LOGIN, device.encode(), orjson.dumps(login), _ms(at)),
        ids.visitor_contact_id(workspace_id, device, "origin"),
    )


def run_like_the_worker(oracle: Oracle, inputs: list[Input]) -> list[Emit]:
    """Decode, apply and reject as the worker does (one partition); the outputs in order."""
    outputs: list[Emit] = []
    for offset, sent in enumerate(inputs):
        source = Source(sent.topic, 0, offset, sent.key, sent.value, sent.at_ms)
        decoded = decode(source)
        if not isinstance(decoded, Item):
            outputs.append(decoded)
            continue
        before = len(oracle.emitted)
        result = oracle.apply(decoded.event, record_ms=sent.at_ms)
        outputs += oracle.emitted[before:]
        if isinstance(result.outcome, Refusal):
            outputs.append(rejection(source, result.outcome.reason, result.outcome.detail,
                                     workspace_id=decoded.event.workspace_id,
                                     input_event_id=decoded.event.event_id))  # fmt: skip
    return outputs
