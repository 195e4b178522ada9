"""A batch of Kafka records decoded: events to process, rejections to publish, page views decided.

Pure but for `browsing`, the in-memory check of a page view against the devices this worker
knows (`Processor.browsing`), which decides most events of a busy site without building
anything more for them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from pipeline.core.model import Emit
from pipeline.worker.codec import Item, Source, explain, parse
from schemas import InputEvent

# Whether a parsed event (with its record's timestamp, ms) is a page view that changes nothing.
Browsing = Callable[[InputEvent, int | None], bool]


@dataclass(slots=True)
class Decoded:
    """One batch, decoded."""

    items: list[Item] = field(default_factory=list)
    rejected: list[Emit] = field(default_factory=list)
    browsing: int = 0  # page views that change nothing (`rules.browsing`), decided in memory
    topics: dict[str, int] = field(default_factory=dict)  # records read, by logical topic


def decode_batch(
    messages: Iterable[Any], logical: Mapping[str, str], browsing: Browsing
) -> Decoded:
    """Decode Kafka messages (`topic`, `partition`, `offset`, `key`, `value`, `timestamp` in s).

    `logical` maps each physical input topic to its name without the prefix.
    """
    decoded = Decoded()
    topics = decoded.topics
    for message in messages:
        physical = message.topic
        topic = logical.get(physical, physical)
        topics[topic] = topics.get(topic, 0) + 1
        stamp = int(message.timestamp * 1000) if message.timestamp else None
        parsed = parse(topic, message.value)
        if parsed is not None and browsing(parsed, stamp):
            decoded.browsing += 1
            continue
        source = Source(topic, message.partition, message.offset, message.key, message.value,
                        stamp, physical)  # fmt: skip
        item = Item(parsed, source) if parsed is not None else explain(source)
        if isinstance(item, Item):
            decoded.items.append(item)
        else:
            decoded.rejected.append(item)
    return decoded
