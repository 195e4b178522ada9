"""Input events as the core trusts them: parsed, normalised and checked once, at the edge.

`check` turns a schema-valid input message into a checked event, or into the refusal that
needs nothing but the event: an unknown workspace, an unusable anonymous_id or event_id (R3,
R12), a time outside R14's bounds around the Kafka record's timestamp, and for an erase
request its subject and proof (R16). The rules (`rules.apply`) then use the checked values as
they are.

Some refusals come after a check that needs the state: a device erased after the event's
time is refused `erased` before its chat's conversation_id or its login's user_id and proof
are looked at. Those fields are checked here all the same, once, and a checked event carries
their refusal for the rules to give at that point, so the reasons and their precedence do not
depend on where the checking is done.

An event_id is kept as sent: it names the event's facts and its processed-event marker (R12).
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from typing import TYPE_CHECKING

from pipeline.core.erasure import proof_of
from pipeline.core.facts import SessionKind
from pipeline.core.identifiers import Refused, check_email, check_identifier
from pipeline.core.model import Refusal
from pipeline.core.verify import DEFAULT_POLICY, Verified, verify
from schemas import ChatStart, EraseRequest, InputEvent, Login, Logout, PageView, Signup
from schemas.time import to_epoch_ms

if TYPE_CHECKING:
    from pipeline.core.rules import CoreConfig

# Event times outside these bounds are refused as `timestamp_out_of_range`. The bounds ahead of
# the Kafka record's timestamp are R14's (never the wall clock, so a replay decides alike): a
# session event at most a minute ahead, so a login stamped in the future cannot claim a
# device's next session; a page view or chat at most five minutes (client clocks run ahead),
# so a chat cannot be planted in a later session of the device.
EARLIEST_MS = 946_684_800_000  # 2000-01-01T00:00:00Z
LATEST_MS = 4_102_444_800_000  # 2100-01-01T00:00:00Z
SESSION_AHEAD_OF_RECORD_MS = 60_000
ACTIVITY_AHEAD_OF_RECORD_MS = 300_000
ERASE_AHEAD_OF_RECORD_MS = 60_000  # an erasure stamped later than this after its record
MAX_TEXT_LENGTH = 256  # a free-text field (a name, a city) is cut to this many characters

# Checked events are built for every event the core decides, so they are not frozen (a frozen
# dataclass takes three times as long to build); they are never mutated all the same.


@dataclass(slots=True)
class CheckedPageView:
    """A page view: a device's activity at `at` (epoch ms)."""

    workspace_id: str
    event_id: str  # as sent
    anonymous_id: str  # trimmed (R3)
    at: int


@dataclass(slots=True)
class CheckedChat:
    """A conversation started on a device (R5).

    `conversation_id` is the checked identifier, or the refusal the rules give once the
    device's erasure is ruled out; `email` is normalised, junk dropped (R3); `name` and `city`
    are trimmed, blank meaning absent.
    """

    workspace_id: str
    event_id: str
    anonymous_id: str
    at: int
    conversation_id: str | Refusal
    email: str | None
    name: str | None
    city: str | None


@dataclass(slots=True)
class CheckedSession:
    """A signup, login or logout on a device.

    `user_id` is the checked identifier, or the refusal the rules give once the device's
    erasure is ruled out. `proof` is the verdict on a signup's or login's user_hash or
    identity_token (R9, R17; None for a logout and for a refused user_id). `email` and `name`
    are normalised as a chat's are. `identity_token` is kept as sent: its e-mail claim is a
    hint of what to load (`rules.likely_needs`) before its signature is checked.
    """

    workspace_id: str
    event_id: str
    anonymous_id: str
    at: int
    kind: SessionKind
    user_id: str | Refusal
    proof: Verified | Refusal | None = None
    email: str | None = None
    name: str | None = None
    identity_token: str | None = None


@dataclass(slots=True)
class CheckedErasure:
    """An erase request, proven (R16): `kind`:`ident` is the subject, `ident` checked (R3)."""

    workspace_id: str
    event_id: str
    kind: str  # "user" or "device"
    ident: str
    at: int


Checked = CheckedPageView | CheckedChat | CheckedSession | CheckedErasure
_SESSION_KINDS: dict[type, SessionKind] = {Signup: "signup", Login: "login", Logout: "logout"}


def check(
    event: InputEvent, config: CoreConfig, *, record_ms: int | None = None
) -> Checked | Refusal:
    """The event as the core trusts it, or why it is refused without looking at any state.

    `record_ms` is the Kafka record's timestamp, against which event times (R14), erasure
    times (R16) and identity tokens (R17) are checked. Without one (pure tests; every Kafka
    record has one) only the calendar bounds apply.
    """
    if isinstance(event, EraseRequest):
        return _check_erasure(event, config, record_ms)
    admitted = admit(event, config, record_ms=record_ms)
    if isinstance(admitted, Refusal):
        return admitted
    anonymous_id, at = admitted
    if isinstance(event, PageView):
        return CheckedPageView(event.workspace_id, event.event_id, anonymous_id, at)
    blocked = config.blocked_values
    if isinstance(event, ChatStart):
        return CheckedChat(
            event.workspace_id,
            event.event_id,
            anonymous_id,
            at,
            _identifier(event.conversation_id, "conversation_id", blocked),
            optional_email(event.email, blocked),
            _text(event.name),
            _text(event.city),
        )
    kind = _SESSION_KINDS[type(event)]
    user_id = _identifier(event.user_id, "user_id", blocked)
    session = CheckedSession(event.workspace_id, event.event_id, anonymous_id, at, kind, user_id)
    if isinstance(event, Logout):
        return session
    session.email = optional_email(event.email, blocked)
    session.name = _text(event.name)
    session.identity_token = event.identity_token
    if isinstance(user_id, str):
        proof = verify(user_id=user_id, user_hash=event.user_hash,
                       identity_token=event.identity_token,
                       secrets=config.secrets[event.workspace_id], event_ms=at,
                       record_ms=record_ms,
                       policy=config.policies.get(event.workspace_id, DEFAULT_POLICY))  # fmt: skip
        session.proof = Refusal(proof.reason, proof.detail) if isinstance(proof, Refused) else proof
    return session


def admit(
    event: InputEvent, config: CoreConfig, *, record_ms: int | None = None
) -> tuple[str, int] | Refusal:
    """The checks every device's event passes first: (trimmed anonymous_id, epoch ms) or why not.

    A known workspace, a usable anonymous_id and event_id (R3, R12), an event time within
    R14's bounds around the Kafka record's timestamp. On its own for callers in a hurry
    (`rules.browsing`), which need no more of a page view than these.
    """
    if event.workspace_id not in config.secrets:
        return Refusal("unknown_workspace", "no secret is configured for it")
    blocked = config.blocked_values
    anonymous_id = check_identifier(event.anonymous_id, blocked=blocked)
    if isinstance(anonymous_id, Refused):
        return Refusal(anonymous_id.reason, f"anonymous_id: {anonymous_id.detail}")
    event_id = check_identifier(event.event_id, blocked=blocked)
    if isinstance(event_id, Refused):
        return Refusal(event_id.reason, f"event_id: {event_id.detail}")
    at = to_epoch_ms(event.timestamp)
    if not EARLIEST_MS <= at < LATEST_MS:
        return Refusal("timestamp_out_of_range", "before 2000 or after 2099")
    if record_ms is not None:
        session = type(event) in _SESSION_KINDS
        lateness = config.session_lateness_ms if session else config.allowed_lateness_ms
        if at < record_ms - lateness:
            return Refusal("too_late", f"stamped {_span(record_ms - at)} before its Kafka record; "
                           f"at most {_span(lateness)} is allowed (R14)")  # fmt: skip
        ahead = SESSION_AHEAD_OF_RECORD_MS if session else ACTIVITY_AHEAD_OF_RECORD_MS
        if at > record_ms + ahead:
            return Refusal("timestamp_out_of_range", f"stamped {_span(at - record_ms)} after its "
                           f"Kafka record; at most {_span(ahead)} is allowed (R14)")  # fmt: skip
    return anonymous_id, at


def _check_erasure(
    request: EraseRequest, config: CoreConfig, record_ms: int | None
) -> CheckedErasure | Refusal:
    """The erase request proven, its subject checked and its time within bounds, or why not."""
    secrets = config.secrets.get(request.workspace_id)
    if secrets is None:
        return Refusal("unknown_workspace", "no secret is configured for it")
    blocked = config.blocked_values
    event_id = check_identifier(request.event_id, blocked=blocked)
    if isinstance(event_id, Refused):
        return Refusal(event_id.reason, f"event_id: {event_id.detail}")
    kind, colon, raw = request.subject.partition(":")
    if not colon or kind not in ("user", "device"):
        return Refusal("invalid_field", "subject: must be user:<user_id> or device:<anonymous_id>")
    ident = check_identifier(raw, blocked=blocked)
    if isinstance(ident, Refused):
        return Refusal(ident.reason, f"subject: {ident.detail}")
    if not any(hmac.compare_digest(proof_of(s, request.subject), request.proof) for s in secrets):
        return Refusal(
            "unverified_identity", "proof is not HMAC-SHA256(secret, 'erase:' + subject)"
        )
    at = to_epoch_ms(request.timestamp)
    if not EARLIEST_MS <= at < LATEST_MS:
        return Refusal("timestamp_out_of_range", "before 2000 or after 2099")
    if record_ms is not None and at > record_ms + ERASE_AHEAD_OF_RECORD_MS:
        # An erasure stamped in the future would refuse the subject's events until then.
        return Refusal("timestamp_out_of_range", "stamped more than 60 s after its Kafka record")
    return CheckedErasure(request.workspace_id, request.event_id, kind, ident, at)


def _identifier(value: str, field: str, blocked: frozenset[str]) -> str | Refusal:
    """A required identifier field, trimmed, or its refusal (naming the field)."""
    checked = check_identifier(value, blocked=blocked)
    if isinstance(checked, Refused):
        return Refusal(checked.reason, f"{field}: {checked.detail}")
    return checked


def optional_email(value: str | None, blocked: frozenset[str]) -> str | None:
    """An optional e-mail, normalised: junk is dropped and the event proceeds (R3)."""
    if value is None:
        return None
    checked = check_email(value, blocked=blocked)
    return checked if isinstance(checked, str) else None


def _text(value: str | None) -> str | None:
    """An optional free-text field, trimmed; blank means absent."""
    if value is None:
        return None
    value = value.strip()[:MAX_TEXT_LENGTH]
    return value or None


def _span(ms: int) -> str:
    """A duration for a refusal's detail, e.g. `3 d 2 h`, `5 min`, `61 s`."""
    seconds = ms // 1000
    if seconds < 120:
        return f"{seconds} s"
    if seconds < 7200:
        return f"{seconds // 60} min"
    days, hours = divmod(seconds // 3600, 24)
    return f"{days} d {hours} h" if days else f"{hours} h"
