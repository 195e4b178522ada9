"""The processor's kept decodings of large records (`pipeline.worker.decoded`)."""

from __future__ import annotations

import pytest

from pipeline.worker.decoded import DecodedRecords


class Decoder:
    """Decodes bytes to their text, counting the calls."""

    def __init__(self) -> None:
        self.calls: list[bytes] = []

    def __call__(self, data: bytes) -> object:
        self.calls.append(data)
        return {"text": data.decode()}


def test_a_large_record_read_again_with_the_same_bytes_is_decoded_once() -> None:
    decoded, decode = DecodedRecords(min_bytes=8), Decoder()
    first = decoded.decode("k", b"x" * 10, decode)
    again = decoded.decode("k", bytes(b"x" * 10), decode)  # equal bytes, another object
    assert again is first
    assert decode.calls == [b"x" * 10]


def test_a_record_whose_bytes_changed_is_decoded_anew() -> None:
    decoded, decode = DecodedRecords(min_bytes=8), Decoder()
    decoded.decode("k", b"a" * 10, decode)
    assert decoded.decode("k", b"b" * 10, decode) == {"text": "b" * 10}
    assert decoded.decode("k", b"a" * 10, decode) == {"text": "a" * 10}
    assert len(decode.calls) == 3


def test_the_same_bytes_under_another_key_are_decoded_for_that_key() -> None:
    decoded, decode = DecodedRecords(min_bytes=8), Decoder()
    decoded.decode("k", b"a" * 10, decode)
    decoded.decode("other", b"a" * 10, decode)
    assert len(decode.calls) == 2


def test_small_records_are_decoded_every_time() -> None:
    decoded, decode = DecodedRecords(min_bytes=8), Decoder()
    decoded.decode("k", b"short", decode)
    decoded.decode("k", b"short", decode)
    assert len(decode.calls) == 2
    assert len(decoded) == 0


def test_the_least_recently_read_go_first_beyond_the_budget() -> None:
    decoded, decode = DecodedRecords(min_bytes=8, budget_bytes=25), Decoder()
    decoded.decode("a", b"a" * 10, decode)
    decoded.decode("b", b"b" * 10, decode)
    decoded.decode("a", b"a" * 10, decode)  # read again: now the most recent
    decoded.decode("c", b"c" * 10, decode)  # 30 bytes: "b" goes
    assert len(decoded) == 2
    decoded.decode("a", b"a" * 10, decode)
    decoded.decode("b", b"b" * 10, decode)
    assert decode.calls == [b"a" * 10, b"b" * 10, b"c" * 10, b"b" * 10]


def test_an_unreadable_record_is_not_kept() -> None:
    decoded = DecodedRecords(min_bytes=8)

    def broken(data: bytes) -> object:
        raise ValueError("damaged")

    for _ in range(2):
        with pytest.raises(ValueError, match="damaged"):
            decoded.decode("k", b"z" * 10, broken)
    assert len(decoded) == 0


def test_what_was_written_is_given_back_for_its_bytes_without_decoding() -> None:
    decoded, decode = DecodedRecords(min_bytes=8), Decoder()
    written = {"text": "w" * 10}
    decoded.keep("k", b"w" * 10, written)
    assert decoded.decode("k", b"w" * 10, decode) is written
    assert decoded.decode("k", b"v" * 10, decode) == {"text": "v" * 10}  # rewritten since
    assert decode.calls == [b"v" * 10]
