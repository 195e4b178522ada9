from datetime import UTC, datetime

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st
from jsonschema import Draft202012Validator
from pydantic import ValidationError

from schemas import INPUT_MODELS, Login, PageView, Profile, parse_timestamp
from schemas.generate import JSON_DIR, rendered
from tests.support.wire_schemas import schema_errors, validator

OUTPUT_TOPICS = ("identity.merged", "identity.shutdown", "identity.profiles", "identity.rejected")
NOW = "2026-11-24T10:00:00.000Z"


def test_json_schema_files_are_up_to_date() -> None:
    expected = rendered()
    on_disk = {path.name: path.read_bytes() for path in JSON_DIR.glob("*.json")}
    assert on_disk == expected, "run `python -m schemas.generate` and commit the result"


def test_one_schema_file_per_topic_of_the_spec() -> None:
    names = {name.removesuffix(".schema.json") for name in rendered()}
    assert names == {
        "telemetry.page_view", "telemetry.chat_start", "telemetry.signup", "telemetry.login",
        "telemetry.logout", "privacy.erase", "identity.merged", "identity.shutdown",
        "identity.profiles", "identity.rejected", "identity.erased",
    }  # fmt: skip


@pytest.mark.parametrize("name", sorted(rendered()))
def test_each_file_is_a_draft_2020_12_schema_with_an_absolute_id(name: str) -> None:
    schema = orjson.loads((JSON_DIR / name).read_bytes())
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["$id"] == f"https://identity-pipeline.dev/schemas/{name}"
    Draft202012Validator.check_schema(schema)


def test_format_checking_of_date_time_is_active() -> None:
    """jsonschema checks `format` only with its optional RFC 3339 dependency installed."""
    checker = Draft202012Validator.FORMAT_CHECKER
    assert checker.conforms("2026-11-24T10:00:00Z", "date-time")
    assert not checker.conforms("2026-11-24", "date-time")


def _timestamps(schema: dict) -> list[dict]:
    props = schema["properties"]
    return [props[name] for name in ("timestamp", "created_at", "updated_at") if name in props]


def _integer_anywhere(node: object) -> bool:
    if isinstance(node, dict):
        return node.get("type") == "integer" or any(map(_integer_anywhere, node.values()))
    return isinstance(node, list) and any(map(_integer_anywhere, node))


@pytest.mark.parametrize("topic", OUTPUT_TOPICS[:3])
def test_output_timestamps_are_rfc3339_strings_only(topic: str) -> None:
    schema = validator(topic).schema
    assert _timestamps(schema)
    for stamp in _timestamps(schema):
        assert stamp["type"] == "string" and stamp["format"] == "date-time"
        assert not _integer_anywhere(stamp)
    errors = schema_errors(topic, {"timestamp": 1795514400000, "created_at": 1795514400000})
    assert any("1795514400000 is not of type 'string'" in error for error in errors)


def test_input_timestamps_are_rfc3339_strings_or_epoch_milliseconds() -> None:
    view = {"event_id": "e", "workspace_id": "w", "anonymous_id": "a"}
    assert not schema_errors("telemetry.page_view", {**view, "timestamp": "2026-11-24T10:00:00Z"})
    assert not schema_errors("telemetry.page_view", {**view, "timestamp": 1795514400000})
    for wrong in ("2026-11-24", "2026-11-24T10:00:00", True, None):
        assert schema_errors("telemetry.page_view", {**view, "timestamp": wrong}), wrong


def _profile(**fields: object) -> dict:
    base = {"contact_id": "c", "workspace_id": "w", "type": "visitor", "created_at": NOW,
            "updated_at": NOW}  # fmt: skip
    return Profile.model_validate({**base, **fields}).model_dump(mode="json")


def test_the_profile_schema_requires_every_field_a_profile_carries() -> None:
    profile = _profile()
    assert set(validator("identity.profiles").schema["required"]) == set(profile)
    # SPEC §3 lists these, merged_into comes with a merged-away contact.
    assert set(profile) == {
        "contact_id", "workspace_id", "type", "user_id", "email", "email_verified", "name",
        "pseudonym", "anonymous_ids", "merged_contact_ids", "conversation_ids",
        "possible_duplicates", "email_matched_contact_ids", "flags", "totals", "created_at",
        "updated_at", "merged_into",
    }  # fmt: skip
    assert not schema_errors("identity.profiles", profile)
    for missing in ("totals", "email_matched_contact_ids", "merged_into", "flags"):
        assert schema_errors(
            "identity.profiles", {k: v for k, v in profile.items() if k != missing}
        )
    assert schema_errors("identity.profiles", {**profile, "created_at": 1795514400000})
    assert schema_errors("identity.profiles", {**profile, "totals": {"anonymous_ids": "many"}})
    assert schema_errors("identity.profiles", {**profile, "extra": 1})


def test_profile_lists_and_totals_are_never_shared_between_profiles() -> None:
    one, two = (Profile.model_validate(_profile()) for _ in range(2))
    assert one.email_matched_contact_ids == [] and one.totals == {}
    assert one.totals is not two.totals
    assert one.email_matched_contact_ids is not two.email_matched_contact_ids


def test_the_profile_schema_documents_tombstones() -> None:
    description = validator("identity.profiles").schema["description"]
    assert "tombstone" in description and "null value" in description


def test_the_original_of_a_rejection_is_bounded_to_4096_characters() -> None:
    rejected = {"event_id": "e", "workspace_id": None, "input_event_id": None, "reason": "r",
                "detail": "d", "source_topic": "t", "source_partition": 0, "source_offset": 0}  # fmt: skip
    assert not schema_errors("identity.rejected", {**rejected, "original": "\u00e9" * 4096})
    assert schema_errors("identity.rejected", {**rejected, "original": "x" * 4097})


_LOGIN = {"event_id": "e", "workspace_id": "w", "anonymous_id": "a",
          "timestamp": "2026-11-24T10:00:00Z", "user_id": "u"}  # fmt: skip


@pytest.mark.parametrize("topic", ["telemetry.login", "telemetry.signup"])
@pytest.mark.parametrize(
    ("proof", "valid"),
    [
        ({"user_hash": "ab12"}, True),
        ({"identity_token": "x.y.z"}, True),
        ({"user_hash": "ab12", "identity_token": "x.y.z"}, True),
        ({"user_hash": None, "identity_token": "x.y.z"}, True),
        ({}, False),
        ({"user_hash": None}, False),
        ({"user_hash": None, "identity_token": None}, False),
        ({"user_hash": 12}, False),
    ],
)
def test_the_schema_and_the_model_agree_on_the_proof(topic: str, proof: dict, valid: bool) -> None:
    message = {**_LOGIN, **proof}
    assert (not schema_errors(topic, message)) is valid
    try:
        INPUT_MODELS[topic].model_validate(message)
    except ValidationError:
        assert not valid
    else:
        assert valid


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("2026-11-24T10:00:00Z", datetime(2026, 11, 24, 10, tzinfo=UTC)),
        ("2026-11-24T11:00:00+01:00", datetime(2026, 11, 24, 10, tzinfo=UTC)),
        ("2026-11-24T10:00:00.123456789Z", datetime(2026, 11, 24, 10, 0, 0, 123456, tzinfo=UTC)),
        (1795514400000, datetime(2026, 11, 24, 10, tzinfo=UTC)),
    ],
)
def test_timestamps_accepted(raw: object, expected: datetime) -> None:
    assert parse_timestamp(raw) == expected


@pytest.mark.parametrize("raw", ["2026-11-24T10:00:00", "2026-11-24", "yesterday", True, 1.5, None])
def test_timestamps_refused(raw: object) -> None:
    with pytest.raises(ValueError, match="timestamp|epoch"):
        parse_timestamp(raw)


def test_unknown_fields_are_ignored() -> None:
    view = PageView.model_validate({"event_id": "e", "workspace_id": "w", "anonymous_id": "a",
                                    "timestamp": "2026-11-24T10:00:00Z", "new_field": 1})  # fmt: skip
    assert not hasattr(view, "new_field")


def test_login_needs_a_proof() -> None:
    with pytest.raises(ValidationError, match="user_hash or identity_token"):
        Login.model_validate({"event_id": "e", "workspace_id": "w", "anonymous_id": "a",
                              "timestamp": "2026-11-24T10:00:00Z", "user_id": "u"})  # fmt: skip


def test_wrong_types_are_not_coerced() -> None:
    with pytest.raises(ValidationError):
        PageView.model_validate({"event_id": 12, "workspace_id": "w", "anonymous_id": "a",
                                 "timestamp": "2026-11-24T10:00:00Z"})  # fmt: skip


_TEMPLATES = ("2026-11-24T10:00:00Z", "2026-11-24T10:00:00.123Z", "1999-02-28T23:59:59.999Z")
_MUTATIONS = "0123456789-:.TZtz +x\u0661\u0663"


def _strict(value: str) -> datetime:
    """RFC 3339 with a zone offset, checked by the full expression only (the slow path)."""
    import re

    from schemas.time import _RFC3339

    if not _RFC3339.match(value):
        raise ValueError(value)
    text = value.upper().replace(" ", "T").replace("Z", "+00:00")
    return datetime.fromisoformat(re.sub(r"(\.\d{6})\d+", r"\1", text)).astimezone(UTC)


@given(
    template=st.sampled_from(_TEMPLATES),
    edits=st.lists(st.tuples(st.integers(0, 23), st.sampled_from(_MUTATIONS)), max_size=3),
)
def test_the_fast_path_for_usual_timestamps_gives_the_strict_verdicts(
    template: str, edits: list[tuple[int, str]]
) -> None:
    chars = list(template)
    for position, char in edits:
        chars[position % len(chars)] = char
    value = "".join(chars)
    try:
        expected: object = _strict(value)
    except ValueError:
        expected = ValueError
    try:
        got: object = parse_timestamp(value)
    except ValueError:
        got = ValueError
    assert got == expected
    if isinstance(got, datetime):
        assert got.tzinfo is UTC
