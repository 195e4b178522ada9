"""Output messages consumed downstream (SPEC §3, output topics)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from schemas.time import Timestamp


class _Output(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


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
    """The current profile of a contact (`identity.profiles`, compacted, keyed by contact_id)."""

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
    detail: str
    source_topic: str
    source_partition: int
    source_offset: int
    original: str


OUTPUT_MODELS: dict[str, type[_Output]] = {
    "identity.merged": Merged,
    "identity.shutdown": Shutdown,
    "identity.profiles": Profile,
    "identity.rejected": Rejected,
}
