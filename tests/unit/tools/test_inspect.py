"""`describe` on state built by the pure core: what a support engineer reads, and why."""

from pipeline.core import ids
from pipeline.core.oracle import Oracle
from pipeline.core.rules import CoreConfig
from pipeline.tools.inspect import Facts, describe, devices_of
from tests.support import events as ev

WS = "ws"
SECRET = "inspect-secret-0123456789abcdef0123"


def test_description_of_a_user_after_a_shared_computer() -> None:
    oracle = Oracle(CoreConfig(secrets={WS: (SECRET.encode(),)}))
    logout = ev.logout(WS, "pc", "2026-11-24T10:03:00Z", "ann")
    login = ev.login(WS, "pc", "2026-11-24T10:01:00Z", "ann", SECRET, email="ann@example.com")
    for event in (ev.page_view(WS, "pc", "2026-11-24T10:00:00Z"), login,
                  ev.chat_start(WS, "pc", "2026-11-24T10:02:00Z", "conv-ann"), logout):  # fmt: skip
        oracle.apply(ev.model(event))
    facts = Facts(WS, devices={k: v for (_, k), v in oracle.devices.items()},
                  users={k: v for (_, k), v in oracle.users.items()})  # fmt: skip
    profile = oracle.profiles()[ids.user_contact_id(WS, "ann")]
    text = "\n".join(describe(profile, facts))
    visitor = ids.visitor_contact_id(WS, "pc", "origin")
    after = ids.visitor_contact_id(WS, "pc", logout["event_id"])
    assert f"contact {profile.contact_id} (user) in workspace ws" in text
    assert "conversations: conv-ann" in text
    assert (
        f"2026-11-24T10:01:00.000Z  absorbed {visitor} from device pc (login, event {login['event_id']})"
        in text
    )
    assert "2026-11-24T10:02:00.000Z  started conversation conv-ann on pc" in text
    assert (
        f"2026-11-24T10:03:00.000Z  session on pc ended (logout, event {logout['event_id']})"
        in text
    )
    assert "claimed e-mail ann@example.com (unverified" in text
    assert f"2026-11-24T10:03:00.000Z → now: anonymous visitor (contact {after})" in text


def test_a_user_with_retired_devices_is_explained_by_them_too() -> None:
    # R4 accepts 10 devices a day: r10 (hour 5) is refused, and a day later r00-r10 have retired
    # (R15: quiet a day before her latest link), yet the description still names r10's refusal.
    oracle = Oracle(CoreConfig(secrets={WS: (SECRET.encode(),)}, retire_batch=1))
    refused = None
    for n in range(60):
        hour, minutes = divmod(n * 30, 60)
        stamp = f"2026-11-{24 + hour // 24}T{hour % 24:02}:{minutes:02}:00Z"
        login = ev.login(WS, f"r{n:02}", stamp, "t", SECRET)
        refused = refused or (login["event_id"] if n == 10 else None)
        oracle.apply(ev.model(login))
    user = oracle.users[WS, "t"]
    summary = oracle.retired(WS, "t")
    assert user.retired is not None and summary is not None and "r10" in summary.ids
    facts = Facts(WS, devices={k: v for (_, k), v in oracle.devices.items()},
                  users={k: v for (_, k), v in oracle.users.items()},
                  chunks={k: v for (_, k), v in oracle.chunks.items()})  # fmt: skip
    profile = oracle.profiles()[ids.user_contact_id(WS, "t")]
    assert facts.refusals("r10") == {refused: "shared_identifier"}
    assert "r10" in devices_of(profile, facts)
    assert "r00" in profile.anonymous_ids and "r10" not in profile.anonymous_ids
