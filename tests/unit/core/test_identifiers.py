import pytest

from pipeline.core.identifiers import Refused, check_email, check_identifier

GENERIC = ["", "   ", "undefined", "NULL", "None", "nil", "<nil>", "NaN", "0", "-1", "anonymous",
           "anon", "Guest", "unknown", "n/a", "N/A", "na", "id", "distinct_id", "email",
           "not_authenticated", "[object Object]", "true", "FALSE", "[]", "{}",
           "00000000-0000-0000-0000-000000000000", "000", "--", '"undefined"', "'null'",
           ' "Guest" ', "x" * 257]  # fmt: skip


@pytest.mark.parametrize("value", GENERIC)
def test_generic_values_are_refused(value: str) -> None:
    result = check_identifier(value)
    assert isinstance(result, Refused)
    assert result.reason == "blocked_identifier"


@pytest.mark.parametrize(
    ("value", "expected"),
    [("  abc-123 ", "abc-123"), ("User_42", "User_42"), ("x" * 256, "x" * 256), ("10", "10"),
     ("0a", "0a"), ("nullable", "nullable")],
)  # fmt: skip
def test_real_identifiers_are_trimmed_and_kept(value: str, expected: str) -> None:
    assert check_identifier(value) == expected


def test_control_characters_are_refused() -> None:
    result = check_identifier("dev\x00ice")
    assert isinstance(result, Refused) and result.reason == "invalid_identifier"


def test_extensible_block_list() -> None:
    blocked = frozenset({"test-user"})
    assert isinstance(check_identifier("TEST-USER", blocked=blocked), Refused)
    assert check_identifier("undefined", blocked=blocked) == "undefined"


@pytest.mark.parametrize(
    ("value", "expected"),
    [(" Ada@Example.COM ", "ada@example.com"), ('"bob@x.io"', "bob@x.io"),
     ("first.last+tag@sub.example.co.uk", "first.last+tag@sub.example.co.uk")],
)  # fmt: skip
def test_emails_are_normalised(value: str, expected: str) -> None:
    assert check_email(value) == expected


@pytest.mark.parametrize("value", ["ada", "ada@", "@example.com", "ada@example", "a b@c.io",
                                   "email", "undefined", "ada@@example.com"])  # fmt: skip
def test_invalid_emails_are_refused(value: str) -> None:
    assert isinstance(check_email(value), Refused)
