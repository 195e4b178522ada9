"""Identifier hygiene (R3): trimming, e-mail normalisation and the refusal of generic values."""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

MAX_IDENTIFIER_LENGTH = 256

# Values clients send when they have no real identifier. Compared after trimming, lower-casing
# and removing wrapping quotes, so '"Undefined"' and " NULL " are refused too.
BLOCKED_VALUES = frozenset(
    {
        "", "undefined", "null", "none", "nil", "<nil>", "nan", "0", "-1", "anonymous", "anon",
        "guest", "unknown", "n/a", "na", "id", "distinct_id", "email", "not_authenticated",
        "[object object]", "true", "false", "[]", "{}",
    }
)  # fmt: skip
_ZEROS_AND_DASHES = re.compile(r"[0-]+")
# Deliberately simple: one @, a non-empty local part, a dotted domain, no spaces.
_EMAIL = re.compile(r"[^@\s\"'<>(),;:\\\[\]]+@[a-z0-9](?:[a-z0-9-]*[a-z0-9])?(?:\.[a-z0-9-]+)+")


@dataclass(frozen=True, slots=True)
class Refused:
    """Why a value cannot serve as an identifier."""

    reason: str
    detail: str


def _unquoted(value: str) -> str:
    while len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'`":
        value = value[1:-1].strip()
    return value


# Identifiers up to this length have their verdict cached: at most CACHED_VERDICTS of them,
# so hostile input cannot grow the cache beyond a few megabytes.
CACHED_LENGTH = 80
CACHED_VERDICTS = 32_768


def check_identifier(value: str, *, blocked: frozenset[str] = BLOCKED_VALUES) -> str | Refused:
    """The trimmed identifier, or why it is refused."""
    if len(value) <= CACHED_LENGTH:  # the same identifiers come back at every event
        return _check_cached(value, blocked)
    return _check(value, blocked)


def _check(value: str, blocked: frozenset[str]) -> str | Refused:
    trimmed = value.strip()
    if len(trimmed) > MAX_IDENTIFIER_LENGTH:
        return Refused("blocked_identifier", f"longer than {MAX_IDENTIFIER_LENGTH} characters")
    if not trimmed.isprintable():  # control, format or separator characters (C code: fast)
        return Refused("invalid_identifier", "contains control or invisible characters")
    bare = _unquoted(trimmed).lower()
    if bare in blocked or _ZEROS_AND_DASHES.fullmatch(bare):
        return Refused("blocked_identifier", f"generic value {trimmed[:40]!r}")
    return trimmed


_check_cached = lru_cache(maxsize=CACHED_VERDICTS)(_check)


def check_email(value: str, *, blocked: frozenset[str] = BLOCKED_VALUES) -> str | Refused:
    """The normalised (trimmed, lower-cased) e-mail, or why it is refused."""
    checked = check_identifier(value, blocked=blocked)
    if isinstance(checked, Refused):
        return checked
    email = _unquoted(checked).lower()
    if not _EMAIL.fullmatch(email):
        return Refused("invalid_email", "not a syntactically valid e-mail address")
    return email
