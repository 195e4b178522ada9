"""Output messages consumed downstream (SPEC §3, output topics)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from schemas.time import Timestamp
from schemas.topics import ERASED, MERGED, PROFILES, REJECTED, SHUTDOWN

ORIGINAL_MAX_CHARS = 4096  # `original` of a rejection is truncated to this many characters
DETAIL_MAX_CHARS = 500  # and its `detail` to this many


class _Output(BaseModel):
    # Every field is emitted, those with a default too: the serialization-mode JSON Schema
    # lists them all as required.
    model_config = ConfigDict(
        frozen=True, extra="forbid", json_schema_serialization_defaults_required=True
    )


class Merged(_Output):
    """One contact merged into another (`identity.merged`, keyed by into_contact_id)."""

    event_id: str
    workspace_id: str
    kind: Literal["converted", "merged"]
    from_contact_id: str
    into_contact_id: str
    user_id: str | None
    reason: Literal["login", "signup", "email_match"]
    cause_event_id: str
    timestamp: Timestamp


class Shutdown(_Output):
    """A device session ended: the messenger must clear it (`identity.shutdown`)."""

    event_id: str
    workspace_id: str
    anonymous_id: str
    user_id: str | None
    contact_id: str
    reason: Literal["logout", "user_switch"]
    cause_event_id: str
    timestamp: Timestamp


class Profile(_Output):
    """The current profile of a contact (`identity.profiles`, compacted, keyed by contact_id).

    It is published whenever it changes; a contact merged away is published once more with
    `merged_into` set. A record keyed by a contact_id with a null value (a tombstone) removes
    that contact: it was erased (R16), or a late event showed that its history belongs to
    another contact. A tombstone has no value, so this schema never applies to it.
    """

    contact_id: str
    workspace_id: str
    type: Literal["visitor", "lead", "user"]
    user_id: str | None = None
    email: str | None = None
    email_verified: bool = False
    name: str | None = None
    pseudonym: str | None = None
    # Lists and objects are built per profile (default_factory), never one shared default.
    anonymous_ids: list[str] = Field(default_factory=list)
    merged_contact_ids: list[str] = Field(default_factory=list)
    conversation_ids: list[str] = Field(default_factory=list)
    possible_duplicates: list[str] = Field(default_factory=list)
    # Merged contacts whose only link to the user is an e-mail match (R7): their
    # conversations are unproven.
    email_matched_contact_ids: list[str] = Field(default_factory=list)
    flags: list[str] = Field(default_factory=list)
    # List name -> number of entries ever held, for lists truncated to the limit (R15).
    totals: dict[str, int] = Field(default_factory=dict)
    created_at: Timestamp
    updated_at: Timestamp
    merged_into: str | None = None


class Rejected(_Output):
    """An input that could not be applied, with why (`identity.rejected`, keyed as received)."""

    event_id: str
    workspace_id: str | None
    input_event_id: str | None
    reason: str
    detail: str = Field(max_length=DETAIL_MAX_CHARS)
    source_topic: str
    source_partition: int
    source_offset: int
    # The message as text: invalid UTF-8 replaced, truncated to ORIGINAL_MAX_CHARS characters
    # (code points, as JSON Schema's maxLength counts them).
    original: str = Field(max_length=ORIGINAL_MAX_CHARS)


class Erased(_Output):
    """A user or device was erased (`identity.erased`, keyed by its user_id or anonymous_id).

    `contact_ids` are every contact removed (each also got a tombstone on `identity.profiles`);
    `anonymous_ids` the devices whose facts were removed or rewritten. Downstream copies of
    those contacts must be deleted.
    """

    event_id: str
    workspace_id: str
    subject: str
    contact_ids: list[str]
    anonymous_ids: list[str]
    cause_event_id: str
    timestamp: Timestamp


OUTPUT_MODELS: dict[str, type[_Output]] = {
    MERGED: Merged,
    SHUTDOWN: Shutdown,
    PROFILES: Profile,
    REJECTED: Rejected,
    ERASED: Erased,
}
