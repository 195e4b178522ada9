"""The history benchmark's shapes: copies of one under other names, from another origin."""

from __future__ import annotations

from datetime import timedelta

import pytest

from pipeline.tools import history

NAMED = ("anonymous_id", "user_id", "email", "conversation_id", "event_id")


def names(records: list) -> set[str]:
    return {str(r.value[f]) for r in records for f in NAMED if f in r.value}


@pytest.mark.parametrize("shape", sorted(history.SHAPES))
def test_a_copy_of_a_shape_shares_no_name_and_keeps_the_times(shape: str) -> None:
    unit = history.SHAPES[shape][1]
    first = [r for n in range(3) for r in unit(n)]
    copy = [r for n in range(3) for r in unit(n, 1)]
    assert names(first).isdisjoint(names(copy))
    assert [r.timestamp_ms for r in copy] == [r.timestamp_ms for r in first]
    assert [r.topic for r in copy] == [r.topic for r in first]


@pytest.mark.parametrize("shape", sorted(history.SHAPES))
def test_a_shape_from_a_later_origin_is_shifted_by_it(shape: str) -> None:
    unit = history.SHAPES[shape][1]
    later = history.START + timedelta(days=400)
    shifted = [r.timestamp_ms for n in range(3) for r in unit(n, 2, later)]
    assert shifted == [(r.timestamp_ms or 0) + 400 * 86_400_000
                       for n in range(3) for r in unit(n, 2)]  # fmt: skip
