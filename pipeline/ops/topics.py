"""The topics of SPEC §3 and how the project creates them."""

from __future__ import annotations

from dataclasses import dataclass, replace

from schemas.topics import (
    ERASE,
    ERASED,
    INPUT_TOPICS,
    MERGED,
    PROFILES,
    REJECTED,
    SHUTDOWN,
    STATE_CHANGELOG,
)

WEEK_MS = 7 * 24 * 3600 * 1000
# How soon an erased profile's values leave the compacted profiles topic (R16): a tombstone
# makes its key's older records eligible for compaction at once, and the log cleaner must
# compact a segment holding one within a day (KIP-354); the tombstone itself stays a day, so
# a consumer reading the topic from the start within that time sees it.
PROFILES_COMPACTION_LAG_MS = 24 * 3600 * 1000
PROFILES_TOMBSTONE_RETENTION_MS = 24 * 3600 * 1000


@dataclass(frozen=True, slots=True)
class TopicSpec:
    """How one topic is created: partitions and broker-side configuration."""

    name: str
    partitions: int
    config: dict[str, str]


def topic_specs(
    prefix: str,
    partitions: int,
    *,
    timestamp_type: str = "CreateTime",
    retention_ms: int = WEEK_MS,
) -> list[TopicSpec]:
    """All topics with their settings.

    Input topics have the same partition count, keyed by anonymous_id (co-partitioning helps
    the known-devices cache, correctness does not depend on it), and are kept 7 days, long
    enough to replay a week for analytics. Their record timestamps bound event time (R14):
    `CreateTime` trusts the producer's (the product's backend), `LogAppendTime` makes the
    broker stamp each record as it arrives (see the README, *Security*). `privacy.erase` is
    compacted and kept forever. `identity.profiles` is compacted: the latest profile of every
    contact is kept forever, so a consumer rebuilds its view by reading it from the start, and
    an erased one is gone within the bounds above (R16). The event topics keep 7 days too.
    `state.changelog` (internal) is compacted and kept forever, with the profiles' bounds.
    """
    week = {"retention.ms": str(retention_ms)}
    inputs = {**week, "message.timestamp.type": timestamp_type}
    specs = [TopicSpec(prefix + name, partitions, inputs) for name in INPUT_TOPICS if name != ERASE]
    # Erase requests are kept forever (the latest per subject), so a replay erases again.
    forever = {"cleanup.policy": "compact", "retention.ms": "-1"}
    specs.append(
        TopicSpec(prefix + ERASE, partitions, {**forever, "message.timestamp.type": timestamp_type})
    )
    specs += [
        TopicSpec(prefix + MERGED, partitions, week),
        TopicSpec(prefix + SHUTDOWN, partitions, week),
        TopicSpec(prefix + REJECTED, partitions, week),
        TopicSpec(prefix + ERASED, partitions, week),
        TopicSpec(
            prefix + PROFILES,
            partitions,
            {
                "cleanup.policy": "compact",
                "min.compaction.lag.ms": "60000",
                "max.compaction.lag.ms": str(PROFILES_COMPACTION_LAG_MS),
                "delete.retention.ms": str(PROFILES_TOMBSTONE_RETENTION_MS),
            },
        ),
        # The state's system of record: the latest of every record, kept forever; an erased
        # record's values go within the profiles' bounds (its tombstone, a day later).
        TopicSpec(
            prefix + STATE_CHANGELOG,
            partitions,
            {
                "cleanup.policy": "compact",
                "retention.ms": "-1",
                "max.compaction.lag.ms": str(PROFILES_COMPACTION_LAG_MS),
                "delete.retention.ms": str(PROFILES_TOMBSTONE_RETENTION_MS),
            },
        ),
    ]
    return specs


def default_replication_factor(brokers: int) -> int:
    """SPEC §4: 1, or 3 when the cluster has at least three brokers."""
    return 3 if brokers >= 3 else 1


def min_insync_replicas(replication_factor: int) -> int | None:
    """2 from a replication factor of 3 on (one broker may be lost), else the broker's default.

    With `acks=all` (the worker's producer and the tests'), a write is acknowledged once two
    brokers have it; with one of three brokers down, topics stay writable.
    """
    return 2 if replication_factor >= 3 else None


def replicated(specs: list[TopicSpec], replication_factor: int) -> list[TopicSpec]:
    """The specs with the `min.insync.replicas` their replication factor calls for."""
    isr = min_insync_replicas(replication_factor)
    if isr is None:
        return specs
    return [
        replace(spec, config={**spec.config, "min.insync.replicas": str(isr)}) for spec in specs
    ]
