"""The one codec: raw Kafka records in, validated pydantic events or recorded rejections out."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

import orjson
from pydantic import ValidationError

from pipeline.core import ids
from pipeline.core.events import Checked
from pipeline.core.model import Emit, OutputMessage, Refusal
from schemas import INPUT_MODELS, InputEvent, Rejected
from schemas.outputs import ORIGINAL_MAX_CHARS
from schemas.topics import CHAT_START, LOGIN, LOGOUT, PAGE_VIEW, REJECTED, SIGNUP

MAX_MESSAGE_BYTES = 64 * 1024  # larger inputs are refused unparsed (reason `too_large`)

_WRONG_TYPE = {"string_type", "int_type", "bool_type", "float_type", "model_type", "dict_type"}


# Source and Item are built for every input, so they are not frozen (a frozen dataclass takes
# four times as long to build); they are never mutated all the same, but for an Item's
# `checked`, filled once.
@dataclass(slots=True)
class Source:
    """Where a record came from; `topic` is the logical name, `physical_topic` as read."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    timestamp_ms: int | None = None
    physical_topic: str | None = None  # None: the same as `topic` (no prefix)


@dataclass(slots=True)
class Item:
    """A decoded, schema-valid input event and its source record.

    `checked` is the event as the core trusts it, or its refusal (`processor.checked` fills
    it the first time it is needed, so an event is checked once however often it is decided).
    """

    event: InputEvent
    source: Source
    checked: Checked | Refusal | None = None


def rejection(
    source: Source,
    reason: str,
    detail: str,
    *,
    workspace_id: str | None = None,
    input_event_id: str | None = None,
) -> Emit:
    """The `identity.rejected` record of an input, keyed as received.

    Its event_id derives from the record's position (physical topic, partition, offset), so
    processing the same record again yields the same rejection (R12), and records of two
    prefixes (or of a topic created again) never share one. A record without a key gets a
    rejection without a key.
    """
    topic = source.physical_topic or source.topic
    original = redact((source.value or b"").decode("utf-8", errors="replace"))
    message = Rejected(
        event_id=ids.output_event_id("rejected", topic, str(source.partition), str(source.offset)),
        workspace_id=workspace_id,
        input_event_id=input_event_id,
        reason=reason,
        detail=detail[:500],
        source_topic=topic,
        source_partition=source.partition,
        source_offset=source.offset,
        original=original,
    )
    return Emit(REJECTED, source.key, message)


# A proof's value in a message's text, JSON-escaped or not, wherever it is: in a message that
# is truncated or not JSON at all the same search finds it. The value ends at its closing
# quote (an escaped quote inside it does not end it), or at the end of the text.
_PROOF = re.compile(r'("(?:user_hash|identity_token|proof)"\s*:\s*")((?:[^"\\]|\\.)*)("?)')


_PROOFS = ("user_hash", "identity_token", "proof")  # `proof`: an erase request's (R16)


def fingerprint(proof: str) -> str:
    """What stands for a proof in a rejection: the first 8 hex digits of its SHA-256."""
    return "sha256:" + hashlib.sha256(proof.encode("utf-8", "replace")).hexdigest()[:8]


def redact(text: str) -> str:
    """`text` with every `user_hash` and `identity_token` value replaced by its fingerprint.

    A rejection never carries a usable proof: `identity.rejected` is read by downstream teams
    and a `user_hash` never expires. The result is truncated to ORIGINAL_MAX_CHARS after the
    proofs are replaced, so a cut can never leave part of one behind.
    """
    if "user_hash" in text or "identity_token" in text or "proof" in text:
        text = _PROOF.sub(lambda m: m.group(1) + fingerprint(m.group(2)) + m.group(3), text)
    if "\\u" in text:  # a field name spelt with JSON escapes: redact the parsed object
        try:
            raw = orjson.loads(text)
        except orjson.JSONDecodeError:
            raw = None
        if isinstance(raw, dict) and any(
            isinstance(raw.get(f), str) and not raw[f].startswith("sha256:") for f in _PROOFS
        ):
            raw = {k: fingerprint(v) if k in _PROOFS and isinstance(v, str) else v
                   for k, v in raw.items()}  # fmt: skip
            text = orjson.dumps(raw).decode()
    return text[:ORIGINAL_MAX_CHARS]


# The common case in one step: pydantic parses and validates the JSON in Rust (its validator
# called directly: `model_validate_json` adds a Python frame per event).
_VALIDATE_JSON = {topic: model.__pydantic_validator__.validate_json
                  for topic, model in INPUT_MODELS.items()}  # fmt: skip


def parse(topic: str, value: bytes | None) -> InputEvent | None:
    """The event, if `value` is a valid message of the input topic `topic`; else None.

    Nothing is built for the record itself, so the worker can decide a page view of a known
    device without more; for what is not valid, `explain` says why.
    """
    validate = _VALIDATE_JSON.get(topic)
    if validate is None or value is None or len(value) > MAX_MESSAGE_BYTES:
        return None
    try:
        return validate(value)
    except ValidationError:
        return None


def decode(source: Source) -> Item | Emit:
    """Decode one input record, or return the rejection that records why it cannot be."""
    event = parse(source.topic, source.value)
    return Item(event, source) if event is not None else explain(source)


def explain(source: Source) -> Item | Emit:
    """Decode a record `parse` found no event in: its rejection, with the precise reason.

    (Should the Python validation below ever accept what the JSON one refused, the event.)
    """
    value = source.value
    model = INPUT_MODELS.get(source.topic)
    if model is None:
        return rejection(source, "unknown_topic", f"not an input topic: {source.topic}")
    if value is None:
        return rejection(source, "invalid_json", "the record has no value (a tombstone)")
    if len(value) > MAX_MESSAGE_BYTES:
        return rejection(source, "too_large", f"{len(value)} bytes > {MAX_MESSAGE_BYTES}")
    try:
        value.decode("utf-8")
    except UnicodeDecodeError as exc:
        return rejection(source, "invalid_utf8", str(exc))
    try:
        raw = orjson.loads(value)
    except orjson.JSONDecodeError as exc:
        return rejection(source, "invalid_json", str(exc))
    if not isinstance(raw, dict):
        return rejection(source, "not_an_object", f"a JSON {type(raw).__name__}, not an object")
    workspace_id = raw.get("workspace_id") if isinstance(raw.get("workspace_id"), str) else None
    event_id = raw.get("event_id") if isinstance(raw.get("event_id"), str) else None
    try:
        event = model.model_validate(raw)
    except ValidationError as exc:
        reason, detail = _explain(exc)
        other = _fitting_topic(raw, source.topic)
        if other is not None:
            reason, detail = "wrong_topic", f"has the shape of {other}, not of {source.topic}"
        return rejection(source, reason, detail, workspace_id=workspace_id, input_event_id=event_id)
    return Item(event, source)  # type: ignore[arg-type]


def _fitting_topic(raw: dict, topic: str) -> str | None:
    """Another input topic the message belongs to.

    It must fit that topic's schema and carry a field only that topic defines (a
    `conversation_id` on the login topic, say). A login that merely lacks its proof is not a
    logout: it stays `missing_field`.
    """
    own = set(INPUT_MODELS[topic].model_fields)
    for other in (SIGNUP, LOGIN, LOGOUT, CHAT_START, PAGE_VIEW):
        if other == topic or not (raw.keys() & (set(INPUT_MODELS[other].model_fields) - own)):
            continue
        try:
            INPUT_MODELS[other].model_validate(raw)
        except ValidationError:
            continue
        return other
    return None


def _explain(exc: ValidationError) -> tuple[str, str]:
    """The reason and detail of the first validation error."""
    error = exc.errors(include_url=False)[0]
    field = ".".join(str(part) for part in error["loc"]) or "event"
    if error["type"] == "missing":
        return "missing_field", f"{field} is required"
    if error["loc"] and error["loc"][0] in ("timestamp", "created_at"):
        return "invalid_timestamp", f"{field}: {error['msg']}"
    if error["type"] in _WRONG_TYPE:
        return "wrong_type", f"{field}: {error['msg']}"
    if not error["loc"]:  # a model-level rule, e.g. neither user_hash nor identity_token
        return "missing_field", error["msg"].removeprefix("Value error, ")
    return "invalid_field", f"{field}: {error['msg']}"


Wire = tuple[str, bytes | None, bytes | None]  # (logical topic, key, value): an output as sent


def encode(value: OutputMessage) -> bytes:
    """Wire JSON of an output message."""
    return orjson.dumps(value.model_dump(mode="json"))


def encode_output(emit: Emit) -> Wire:
    """An output as it is sent (a None value is a tombstone)."""
    key = emit.key if isinstance(emit.key, bytes | None) else emit.key.encode()
    return emit.topic, key, None if emit.value is None else encode(emit.value)
