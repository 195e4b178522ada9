"""Input messages produced by product telemetry (SPEC §3, input topics)."""

from __future__ import annotations

from typing import ClassVar

from pydantic import BaseModel, ConfigDict, model_validator

from schemas.time import Timestamp
from schemas.topics import CHAT_START, ERASE, LOGIN, LOGOUT, PAGE_VIEW, SIGNUP


class _Message(BaseModel):
    """Fields every input message carries. Unknown fields are ignored (forward compatibility)."""

    model_config = ConfigDict(frozen=True, extra="ignore", strict=True)

    topic: ClassVar[str]
    # The field that names the profile this event is about (SPEC R1).
    key_identifier: ClassVar[str] = "anonymous_id"

    event_id: str
    workspace_id: str


class _Input(_Message):
    """Telemetry: an event of one device."""

    anonymous_id: str
    timestamp: Timestamp


class PageView(_Input):
    """A page or screen seen by a device."""

    topic: ClassVar[str] = PAGE_VIEW

    url: str | None = None
    referrer: str | None = None
    city: str | None = None
    user_agent: str | None = None


class ChatStart(_Input):
    """A conversation started in the messenger: turns the visitor into a lead (R5)."""

    topic: ClassVar[str] = CHAT_START

    conversation_id: str
    email: str | None = None
    name: str | None = None
    city: str | None = None


# What `_Verified._needs_proof` enforces, in JSON Schema: a string user_hash or identity_token.
_PROOF_REQUIRED = {
    "anyOf": [
        {"required": [field], "properties": {field: {"type": "string"}}}
        for field in ("user_hash", "identity_token")
    ]
}


class _Verified(_Input):
    """An event that claims a user_id and must prove it (R9)."""

    model_config = ConfigDict(json_schema_extra=_PROOF_REQUIRED)  # type: ignore[typeddict-item]

    key_identifier: ClassVar[str] = "user_id"

    user_id: str
    user_hash: str | None = None
    identity_token: str | None = None
    email: str | None = None
    name: str | None = None

    @model_validator(mode="after")
    def _needs_proof(self) -> _Verified:
        if self.user_hash is None and self.identity_token is None:
            message = "user_hash or identity_token is required"
            raise ValueError(message)
        return self


class Signup(_Verified):
    """A new account created on a device."""

    topic: ClassVar[str] = SIGNUP

    created_at: Timestamp | None = None


class Login(_Verified):
    """A user logged in on a device."""

    topic: ClassVar[str] = LOGIN


class Logout(_Input):
    """A user logged out on a device (R10)."""

    topic: ClassVar[str] = LOGOUT
    key_identifier: ClassVar[str] = "user_id"

    user_id: str


class EraseRequest(_Message):
    """A request to erase a user or a device (R16), produced by the product's backend.

    `subject` is `user:<user_id>` or `device:<anonymous_id>`; `proof` the lowercase hex
    HMAC-SHA256(secret, "erase:" + subject) with a secret of the workspace.
    """

    topic: ClassVar[str] = ERASE
    key_identifier: ClassVar[str] = "subject"

    timestamp: Timestamp
    subject: str
    proof: str
    reason: str | None = None

    @property
    def anonymous_id(self) -> str:
        """The device a device erasure names ("" for a user): what names its processed marker."""
        kind, _, ident = self.subject.partition(":")
        return ident if kind == "device" else ""


InputEvent = PageView | ChatStart | Signup | Login | Logout | EraseRequest
INPUT_MODELS: dict[str, type[_Message]] = {
    model.topic: model for model in (PageView, ChatStart, Signup, Login, Logout, EraseRequest)
}
