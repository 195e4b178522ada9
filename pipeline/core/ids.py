"""Deterministic identifiers (R12): contact_ids, pseudonyms and output event_ids.

Every id is a hash of the input that defines it, so replaying the same topics into empty
state, in any order, reproduces the same ids. Parts are JSON-encoded before hashing so that
("a|b", "c") and ("a", "b|c") can never collide.
"""

from __future__ import annotations

import hashlib
from functools import lru_cache

import orjson

COLOURS = (
    "Amber", "Azure", "Blue", "Bronze", "Coral", "Crimson", "Cyan", "Emerald", "Golden",
    "Green", "Grey", "Indigo", "Ivory", "Jade", "Lavender", "Lemon", "Lilac", "Magenta",
    "Maroon", "Mint", "Navy", "Olive", "Orange", "Peach", "Pink", "Plum", "Purple", "Red",
    "Ruby", "Rust", "Sapphire", "Scarlet", "Silver", "Teal", "Turquoise", "Violet", "White",
    "Yellow",
)  # fmt: skip
NOUNS = (
    "Bird", "Breeze", "Brook", "Butterfly", "Cloud", "Comet", "Dawn", "Dew", "Dream", "Dune",
    "Feather", "Fern", "Field", "Fire", "Flower", "Fog", "Forest", "Frost", "Glade", "Harbor",
    "Hill", "Lake", "Leaf", "Meadow", "Moon", "Mountain", "Ocean", "Pebble", "Pine", "Rain",
    "River", "Shadow", "Sky", "Snow", "Star", "Stone", "Sun", "Thunder", "Tree", "Wave",
    "Wind", "Wood",
)  # fmt: skip


def _digest(*parts: str, size: int = 12) -> str:
    return hashlib.blake2b(orjson.dumps(parts), digest_size=size).hexdigest()


# Contact ids are derived again at every decision that touches their contact; the same few
# thousand active devices and users come back all the time. Identifiers are at most 256
# characters (R3), so the caches stay within a few megabytes.
CACHED_IDS = 16_384


@lru_cache(maxsize=CACHED_IDS)
def user_contact_id(workspace_id: str, user_id: str) -> str:
    """A user's contact_id: from (workspace_id, user_id) alone, so every device agrees (R6)."""
    return _digest("user", workspace_id, user_id)


# What names a visitor's session (R10), from which its contact_id derives: what began it.
ORIGIN = "origin"  # the device's first session


def logout_session(logout_event_id: str) -> str:
    """The session a logout begins: named by the logout's event_id."""
    return logout_event_id


def email_session(chat_event_id: str) -> str:
    """The session an e-mail match (R7) begins: named by the chat that carried the e-mail."""
    return f"email:{chat_event_id}"


@lru_cache(maxsize=CACHED_IDS)
def visitor_contact_id(workspace_id: str, anonymous_id: str, session: str) -> str:
    """A device's visitor in one anonymous session (R10).

    `session` names what started the session: `ORIGIN` for the device's first, else the logout
    (`logout_session`) or the e-mail match (`email_session`, R7) that began it. Naming a
    session by its cause rather than by a counter keeps every other visitor's id stable when a
    late logout arrives.
    """
    return _digest("visitor", workspace_id, anonymous_id, session)


def event_identity(topic: str, anonymous_id: str, event_id: str) -> str:
    """What names one input event (R12): its topic, device and event_id, within a workspace.

    An event_id is the client's word: scoped by device, one client cannot block another
    device's events by sending their event_ids first.
    """
    return _digest("event", topic, anonymous_id, event_id, size=16)


def output_event_id(kind: str, *parts: str) -> str:
    """The event_id of an output, from what caused it (R12)."""
    return _digest("output", kind, *parts, size=16)


def pseudonym(contact_id: str, city: str | None) -> str:
    """A lead's friendly name, e.g. "Blue Cloud from Paris", derived from its contact_id (R5)."""
    index = int(hashlib.blake2b(contact_id.encode(), digest_size=8).hexdigest(), 16)
    colour = COLOURS[index % len(COLOURS)]
    noun = NOUNS[(index // len(COLOURS)) % len(NOUNS)]
    return f"{colour} {noun} from {city}" if city else f"{colour} {noun}"
