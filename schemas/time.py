"""Timestamps on the wire: RFC 3339 with a zone offset, or epoch milliseconds on input."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Annotated

from pydantic import BeforeValidator, PlainSerializer, WithJsonSchema

# RFC 3339 date-time: full date, 'T' (or 't'/' '), time, optional fraction, mandatory offset.
_RFC3339 = re.compile(
    r"\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(\.\d{1,9})?([Zz]|[+-]\d{2}:\d{2})\Z"
)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _canonical(value: str) -> bool:
    """The usual spelling, e.g. 2026-11-24T10:00:00Z or 2026-11-24T10:00:00.123Z, all ASCII.

    For these the separators' places and `datetime.fromisoformat` (which then reads every other
    place as a digit) check as much as the expression does, at a fraction of its cost.
    """
    length = len(value)
    return (
        (length == 20 or (length == 24 and value[19] == "."))
        and value[-1] == "Z"
        and value[10] == "T"
        and value[4] == value[7] == "-"
        and value[13] == value[16] == ":"
        and value.isascii()
    )


def parse_timestamp(value: object) -> datetime:
    """Accept an RFC 3339 string with a zone offset or an integer of epoch milliseconds."""
    if isinstance(value, str):
        if _canonical(value):
            try:
                return datetime.fromisoformat(value)
            except ValueError:
                pass  # e.g. month 13: the general path below says why
        if not _RFC3339.match(value):
            message = "timestamp must be RFC 3339 with a zone offset, e.g. 2026-11-24T10:00:00Z"
            raise ValueError(message)
        try:  # the common spellings, e.g. 2026-11-24T10:00:00.123Z, in one C call
            parsed = datetime.fromisoformat(value)
        except ValueError:  # 't', 'z', or more than 6 fractional digits
            text = value.upper().replace(" ", "T").replace("Z", "+00:00")
            parsed = datetime.fromisoformat(re.sub(r"(\.\d{6})\d+", r"\1", text))
        return parsed if parsed.tzinfo is UTC else parsed.astimezone(UTC)
    if isinstance(value, datetime):
        if value.tzinfo is None:
            message = "timestamp must carry a zone offset"
            raise ValueError(message)
        return value.astimezone(UTC)
    if isinstance(value, int) and not isinstance(value, bool):
        try:
            return _EPOCH + timedelta(milliseconds=value)
        except OverflowError as exc:
            message = "epoch milliseconds out of range"
            raise ValueError(message) from exc
    message = "timestamp must be an RFC 3339 string or an integer of epoch milliseconds"
    raise ValueError(message)


def format_timestamp(value: datetime) -> str:
    """RFC 3339 in UTC with millisecond precision, e.g. 2026-11-24T10:00:00.000Z."""
    return value.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def to_epoch_ms(value: datetime) -> int:
    """Whole epoch milliseconds, the pipeline's internal clock unit."""
    delta = value - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1000 + delta.microseconds // 1000


def from_epoch_ms(value: int) -> datetime:
    """The inverse of `to_epoch_ms`."""
    return _EPOCH + timedelta(milliseconds=value)


# The JSON Schema of a timestamp depends on the direction: an input may carry RFC 3339 or epoch
# milliseconds (validation mode), an output always carries `format_timestamp`'s spelling
# (serialization mode).
INPUT_TIMESTAMP_SCHEMA = {
    "anyOf": [
        {"type": "string", "format": "date-time", "pattern": "^" + _RFC3339.pattern[:-2] + "$",
         "description": "RFC 3339 with a zone offset, e.g. 2026-11-24T10:00:00Z"},
        {"type": "integer", "description": "epoch milliseconds"},
    ]
}  # fmt: skip
OUTPUT_TIMESTAMP_SCHEMA = {
    "type": "string",
    "format": "date-time",
    "pattern": r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$",
    "description": "RFC 3339 in UTC with millisecond precision, e.g. 2026-11-24T10:00:00.000Z",
}

Timestamp = Annotated[
    datetime,
    BeforeValidator(parse_timestamp),
    PlainSerializer(format_timestamp, return_type=str, when_used="json"),
    WithJsonSchema(INPUT_TIMESTAMP_SCHEMA, mode="validation"),
    WithJsonSchema(OUTPUT_TIMESTAMP_SCHEMA, mode="serialization"),
]
