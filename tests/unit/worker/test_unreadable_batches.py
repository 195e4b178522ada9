"""A partition's fetched records end before a batch that cannot be read, and say where it is."""

from __future__ import annotations

import inspect
import struct

from aiokafka.consumer import fetcher as aiokafka_fetcher
from aiokafka.consumer.fetcher import FetchResult, PartitionRecords
from aiokafka.record.default_records import DefaultRecordBatchBuilder
from aiokafka.record.memory_records import MemoryRecords
from aiokafka.structs import TopicPartition

from pipeline.worker.fetching import GatheringFetcher, GuardedRecords, Unreadable, skip_command

TP = TopicPartition("telemetry.page_view", 2)
READ_UNCOMMITTED = 0


def batch(base_offset: int, values: list[bytes]) -> bytes:
    builder = DefaultRecordBatchBuilder(magic=2, compression_type=0, is_transactional=0,
                                        producer_id=-1, producer_epoch=-1, base_sequence=-1,
                                        batch_size=1 << 20)  # fmt: skip
    for delta, value in enumerate(values):
        builder.append(delta, timestamp=None, key=b"k", value=value, headers=[])
    data = bytearray(builder.build())
    struct.pack_into(">q", data, 0, base_offset)  # the base offset is outside the CRC
    return bytes(data)


def guarded(data: bytes, fetch_offset: int = 0) -> tuple[GuardedRecords, list[Unreadable]]:
    found: list[Unreadable] = []
    inner = PartitionRecords(TP, MemoryRecords(data), [], fetch_offset, None, None, True,
                             READ_UNCOMMITTED)  # fmt: skip
    return GuardedRecords(inner, found.append), found


def test_readable_batches_pass_through_unchanged() -> None:
    records, found = guarded(batch(0, [b"a", b"b"]) + batch(2, [b"c"]))
    assert [(r.offset, r.value) for r in records] == [(0, b"a"), (1, b"b"), (2, b"c")]
    assert records.next_fetch_offset == 3
    assert found == []


def test_a_corrupt_batch_ends_the_records_before_it_and_is_reported_with_its_offsets() -> None:
    corrupt = bytearray(batch(3, [b"d", b"e"]))
    corrupt[-1] ^= 0xFF  # a flipped byte in the last record: the CRC no longer matches
    records, found = guarded(batch(0, [b"a", b"b", b"c"]) + bytes(corrupt) + batch(5, [b"f"]))

    assert [r.value for r in records] == [b"a", b"b", b"c"]
    assert records.next_fetch_offset == 3  # where the partition's position stays
    assert len(found) == 1
    unreadable = found[0]
    assert (unreadable.tp, unreadable.offset, unreadable.skip_to) == (TP, 3, 5)
    assert unreadable.batch == "offsets 3..4, codec none"
    assert unreadable.error.startswith("CorruptRecordException")
    assert list(records) == []  # it stays ended


def test_the_skip_command_moves_the_group_past_the_batch(monkeypatch) -> None:
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "broker:9092")
    monkeypatch.setenv("IDP_TOPIC_PREFIX", "staging.")
    unreadable = Unreadable(TP, 3, "CorruptRecordException", 5, "offsets 3..4, codec none")
    assert skip_command(unreadable) == (
        "idp stack kafka-tool kafka-consumer-groups --bootstrap-server broker:9092 "
        "--group identity-pipeline-staging. --topic telemetry.page_view:2 --reset-offsets "
        "--to-offset 5 --execute"
    )


def test_the_private_aiokafka_parts_it_relies_on_still_have_their_shape() -> None:
    # GuardedRecords swaps PartitionRecords._records before the first record is read, and
    # FetchResult reads next_fetch_offset; a release that changes these bypasses the guard.
    unpack = inspect.getsource(PartitionRecords._unpack_records)
    assert "records = self._records" in unpack
    assert "records.next_batch()" in unpack
    assert "self._tp" in unpack
    assert "self._partition_records = partition_records" in inspect.getsource(FetchResult)
    assert "next_fetch_offset" in inspect.getsource(FetchResult.check_assignment)
    assert "PartitionRecords(" in inspect.getsource(aiokafka_fetcher.Fetcher._proc_fetch_request)
    assert "for tp in assignment.tps:" in inspect.getsource(
        GatheringFetcher.__mro__[1]._get_actions_per_node
    )
