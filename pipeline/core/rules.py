"""The transition function: (state an event touches, event) -> new state and outputs."""

from __future__ import annotations

from dataclasses import dataclass

from pipeline.core import ids
from pipeline.core.identifiers import BLOCKED_VALUES, Refused, check_identifier
from pipeline.core.model import (
    Applied,
    DeviceState,
    Emit,
    NeedMore,
    Refusal,
    Transition,
    Unchanged,
    View,
)
from pipeline.topics import PROFILES
from schemas import InputEvent, PageView, Profile
from schemas.time import from_epoch_ms, to_epoch_ms


@dataclass(frozen=True, slots=True)
class CoreConfig:
    """Deployment choices the rules depend on (pure data)."""

    blocked_values: frozenset[str] = BLOCKED_VALUES
    # Workspaces that have a verification secret; events of any other are refused.
    workspaces: frozenset[str] = frozenset()


def apply(event: InputEvent, view: View, config: CoreConfig) -> Transition | NeedMore:
    """Decide what `event` does to the state in `view`."""
    if event.workspace_id not in config.workspaces:
        return Transition(Refusal("unknown_workspace", "no secret is configured for it"))
    anonymous_id = check_identifier(event.anonymous_id, blocked=config.blocked_values)
    if isinstance(anonymous_id, Refused):
        return Transition(Refusal(anonymous_id.reason, f"anonymous_id: {anonymous_id.detail}"))
    if isinstance(event, PageView):
        return _page_view(event, anonymous_id, view)
    return Transition(Unchanged())


def _page_view(event: PageView, anonymous_id: str, view: View) -> Transition | NeedMore:
    """A page view creates the device's visitor, or moves its first-seen time earlier."""
    if anonymous_id not in view.devices:
        return NeedMore(devices=(anonymous_id,))
    device = view.devices[anonymous_id] or DeviceState()
    generation = 0
    at = to_epoch_ms(event.timestamp)
    first_seen = device.first_seen.get(generation)
    if first_seen is not None and first_seen <= at:
        return Transition(Unchanged())
    contact_id = ids.visitor_contact_id(view.workspace_id, anonymous_id, generation)
    if contact_id not in view.contacts:
        return NeedMore(contacts=(contact_id,))
    current = view.contacts[contact_id]
    when = from_epoch_ms(at)
    if current is None:
        profile = Profile(
            contact_id=contact_id,
            workspace_id=view.workspace_id,
            type="visitor",
            anonymous_ids=[anonymous_id],
            created_at=when,
            updated_at=when,
        )
    else:
        # An earlier event of the same visitor: the profile starts earlier. updated_at is the
        # event time of the latest fact the profile reflects, so it does not move back.
        profile = current.model_copy(update={"created_at": when})
    new_device = DeviceState(first_seen={**device.first_seen, generation: at})
    return Transition(
        Applied(),
        devices={anonymous_id: new_device},
        contacts={contact_id: profile},
        emits=(Emit(PROFILES, contact_id, profile),),
    )
