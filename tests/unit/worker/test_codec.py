import orjson
import pytest

from pipeline.core.model import Emit
from pipeline.worker.codec import MAX_MESSAGE_BYTES, Item, Source, decode, parse
from schemas.outputs import ORIGINAL_MAX_CHARS

VALID = {
    "event_id": "e1",
    "workspace_id": "ws",
    "anonymous_id": "a",
    "timestamp": "2026-11-24T10:00:00Z",
}


def source(value: bytes | None, topic: str = "telemetry.page_view", offset: int = 7) -> Source:
    return Source(topic=topic, partition=1, offset=offset, key=b"k", value=value)


def reason(value: bytes | None, topic: str = "telemetry.page_view") -> str:
    result = decode(source(value, topic))
    assert isinstance(result, Emit), result
    return result.value.reason


def test_valid_page_view_decodes() -> None:
    result = decode(source(orjson.dumps(VALID)))
    assert isinstance(result, Item)
    assert result.event.anonymous_id == "a"


def test_parse_gives_the_event_of_a_valid_record_and_nothing_for_any_other() -> None:
    event = parse("telemetry.page_view", orjson.dumps(VALID))
    assert event is not None
    assert (event.event_id, event.anonymous_id) == ("e1", "a")
    too_large = orjson.dumps({**VALID, "url": "x" * MAX_MESSAGE_BYTES})
    for topic, value in [
        ("telemetry.page_view", b"not json"),
        ("telemetry.page_view", None),
        ("telemetry.page_view", too_large),
        ("telemetry.login", orjson.dumps(VALID)),  # no user_id, no proof
        ("telemetry.unknown", orjson.dumps(VALID)),
    ]:
        assert parse(topic, value) is None, (topic, value[:40] if value else value)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (b"\xc3\x28", "invalid_utf8"),
        (b"not json", "invalid_json"),
        (None, "invalid_json"),
        (b'"a string"', "not_an_object"),
        (b"null", "not_an_object"),
        (orjson.dumps({**VALID, "timestamp": "tomorrow"}), "invalid_timestamp"),
        (orjson.dumps({**VALID, "anonymous_id": 5}), "wrong_type"),
        (orjson.dumps({k: v for k, v in VALID.items() if k != "workspace_id"}), "missing_field"),
        (b" " * (MAX_MESSAGE_BYTES + 1), "too_large"),
    ],
)
def test_reasons(value: bytes | None, expected: str) -> None:
    assert reason(value) == expected


def test_login_without_proof_is_a_missing_field() -> None:
    login = orjson.dumps({**VALID, "user_id": "u"})
    assert reason(login, "telemetry.login") == "missing_field"


def test_rejection_is_keyed_as_received_and_deterministic() -> None:
    first = decode(source(b"junk"))
    again = decode(source(b"junk"))
    other = decode(source(b"junk", offset=8))
    assert isinstance(first, Emit) and isinstance(again, Emit) and isinstance(other, Emit)
    assert first.key == b"k"
    assert first.value.event_id == again.value.event_id != other.value.event_id
    assert first.value.source_partition == 1 and first.value.source_offset == 7


def test_original_is_truncated() -> None:
    result = decode(source(b"x" * 10_000))
    assert isinstance(result, Emit)
    assert len(result.value.original) == ORIGINAL_MAX_CHARS


def test_readable_ids_are_kept_on_rejection() -> None:
    result = decode(source(orjson.dumps({**VALID, "timestamp": None})))
    assert isinstance(result, Emit)
    assert result.value.workspace_id == "ws" and result.value.input_event_id == "e1"


def test_a_chat_start_on_the_login_topic_is_on_the_wrong_topic() -> None:
    chat = orjson.dumps({**VALID, "conversation_id": "c1"})
    result = decode(source(chat, "telemetry.login"))
    assert isinstance(result, Emit)
    assert result.value.reason == "wrong_topic"
    assert "telemetry.chat_start" in result.value.detail


def test_a_login_on_the_chat_topic_is_on_the_wrong_topic() -> None:
    login = orjson.dumps({**VALID, "user_id": "u1", "user_hash": "ab"})
    assert reason(login, "telemetry.chat_start") == "wrong_topic"


def test_a_login_event_on_the_page_view_topic_is_a_page_view() -> None:
    """Unknown fields are ignored: the user_id of a page view proves nothing and is dropped."""
    login = orjson.dumps({**VALID, "user_id": "victim"})
    assert isinstance(decode(source(login, "telemetry.page_view")), Item)
