"""`describe` on state built by the pure core: what a support engineer reads, and why."""

from pipeline.core import ids
from pipeline.core.oracle import Oracle
from pipeline.core.rules import CoreConfig
from pipeline.tools.inspect import Facts, describe
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
