from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from schemas import Login, PageView, parse_timestamp
from schemas.generate import JSON_DIR, rendered


def test_json_schema_files_are_up_to_date() -> None:
    expected = rendered()
    on_disk = {path.name: path.read_bytes() for path in JSON_DIR.glob("*.json")}
    assert on_disk == expected, "run `python -m schemas.generate` and commit the result"


def test_one_schema_file_per_topic_of_the_spec() -> None:
    names = {name.removesuffix(".schema.json") for name in rendered()}
    assert names == {
        "telemetry.page_view", "telemetry.chat_start", "telemetry.signup", "telemetry.login",
        "telemetry.logout", "identity.merged", "identity.shutdown", "identity.profiles",
        "identity.rejected",
    }  # fmt: skip


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
