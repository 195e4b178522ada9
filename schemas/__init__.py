"""Pydantic v2 models of every message of SPEC §3, the wire contract of identity-pipeline."""

from schemas.inputs import (
    INPUT_MODELS,
    ChatStart,
    EraseRequest,
    InputEvent,
    Login,
    Logout,
    PageView,
    Signup,
)
from schemas.outputs import OUTPUT_MODELS, Erased, Merged, Profile, Rejected, Shutdown
from schemas.time import Timestamp, format_timestamp, parse_timestamp

__all__ = [
    "INPUT_MODELS",
    "OUTPUT_MODELS",
    "ChatStart",
    "EraseRequest",
    "Erased",
    "InputEvent",
    "Login",
    "Logout",
    "Merged",
    "PageView",
    "Profile",
    "Rejected",
    "Shutdown",
    "Signup",
    "Timestamp",
    "format_timestamp",
    "parse_timestamp",
]
