"""The core's two answers for callers in a hurry: `browsing` and `likely_needs`.

`apply` and the hints take events checked at the edge (`events.check`); `browsing` takes an
event checked or not.
"""

from __future__ import annotations

import hashlib
import hmac

from pipeline.core import ids
from pipeline.core.events import check
from pipeline.core.facts import Device
from pipeline.core.model import NeedMore, Refusal, Transition, Unchanged, View
from pipeline.core.rules import CoreConfig, apply, browsing, likely_needs
from tests.support import events as ev

SECRET = "shortcut-secret-0123456789abcdef01"
CONFIG = CoreConfig(secrets={"ws": (SECRET.encode(),)})
TEN = 1_795_514_400_000  # 2026-11-24T10:00:00Z in epoch ms


def page_view(at: str = "2026-11-24T10:00:00Z", anon: str = "d1", ws: str = "ws"):
    return ev.model(ev.page_view(ws, anon, at))


def checked(event):
    result = check(event, CONFIG)
    assert not isinstance(result, Refusal), result
    return result


def test_a_page_view_no_earlier_than_the_device_s_first_activity_is_browsing() -> None:
    assert browsing(page_view(), TEN, CONFIG, record_ms=None)
    assert browsing(page_view("2026-11-24T10:00:01Z"), TEN, CONFIG, record_ms=None)


def test_an_earlier_page_view_or_a_new_device_is_not() -> None:
    # An earlier page view moves the device's first activity, so its visitor's created_at.
    assert not browsing(page_view("2026-11-24T09:59:59Z"), TEN, CONFIG, record_ms=None)
    assert not browsing(page_view(), None, CONFIG, record_ms=None)


def test_browsing_is_what_apply_decides_for_such_an_event() -> None:
    view = View("ws", devices={"d1": Device(first_activity=TEN)})
    result = apply(checked(page_view("2026-11-24T10:30:00Z")), view, CONFIG)
    assert isinstance(result, Transition) and result.outcome == Unchanged()
    assert not result.writes and not result.emits


def test_other_events_and_refusable_page_views_are_never_browsing() -> None:
    login = ev.model(ev.login("ws", "d1", "2026-11-24T10:30:00Z", "u1", SECRET))
    assert not browsing(login, TEN, CONFIG, record_ms=None)
    # These must reach `apply`, which refuses them with a reason.
    assert not browsing(page_view(ws="other"), TEN, CONFIG, record_ms=None)
    assert not browsing(page_view(anon="undefined"), TEN, CONFIG, record_ms=None)
    assert not browsing(page_view("2030-01-01T00:00:00Z"), TEN, CONFIG, record_ms=TEN)


def test_a_login_is_likely_to_need_its_user_its_e_mail_and_the_user_s_contact() -> None:
    login = ev.model(ev.login("ws", "d1", "2026-11-24T10:00:00Z", " u1 ", SECRET,
                              email=" Ann@Example.com"))  # fmt: skip
    # And the user's erasure marker (R16), named by HMAC(secret, "erased:user:u1").
    marker = hmac.new(SECRET.encode(), b"erased:user:u1", hashlib.sha256).hexdigest()[:32]
    assert likely_needs(checked(login), CONFIG) == NeedMore(
        users=("u1",), emails=("ann@example.com",), contacts=(ids.user_contact_id("ws", "u1"),),
        erasures=(marker,),
    )  # fmt: skip


def test_a_token_s_e_mail_claim_is_a_hint_even_before_its_signature_is_checked() -> None:
    token = ev.jwt_hs256("not-the-workspace-secret-0123456789", {"user_id": "u1", "exp": 1,
                                                                 "email": "bob@example.com"})  # fmt: skip
    signup = ev.model(ev.signup("ws", "d1", "2026-11-24T10:00:00Z", "u1", SECRET,
                                identity_token=token))  # fmt: skip
    assert likely_needs(checked(signup), CONFIG).emails == ("bob@example.com",)


def test_a_chat_is_likely_to_need_its_e_mail_and_a_page_view_nothing() -> None:
    chat = ev.model(ev.chat_start("ws", "d1", "2026-11-24T10:00:00Z", "c1", email="a@b.io"))
    # And the e-mail's erasure marker (R16), named by HMAC(secret, "erased:email:a@b.io").
    marker = hmac.new(SECRET.encode(), b"erased:email:a@b.io", hashlib.sha256).hexdigest()[:32]
    assert likely_needs(checked(chat), CONFIG) == NeedMore(emails=("a@b.io",), erasures=(marker,))
    assert likely_needs(checked(page_view()), CONFIG) == NeedMore()
    junk = ev.model(ev.login("ws", "d1", "2026-11-24T10:00:00Z", "null", SECRET))
    assert likely_needs(checked(junk), CONFIG) == NeedMore()  # apply refuses it; nothing to load


def test_a_first_visit_is_likely_to_need_the_device_s_first_visitor() -> None:
    origin = ids.visitor_contact_id("ws", "d1", "origin")
    # A device without a record may have been erased (R16): its marker, a keyed digest.
    marker = hmac.new(SECRET.encode(), b"erased:device:d1", hashlib.sha256).hexdigest()[:32]
    assert likely_needs(checked(page_view(anon=" d1")), CONFIG, new_device=True) == NeedMore(
        contacts=(origin,), erasures=(marker,)
    )
    # ... which is what apply asks for, given the absent device: the marker, then the visitor.
    view = View("ws", devices={"d1": None})
    asked = apply(checked(page_view(anon=" d1")), view, CONFIG)
    assert asked == NeedMore(erasures=(marker,))
    view.erasures[marker] = None
    asked = apply(checked(page_view(anon=" d1")), view, CONFIG)
    assert asked == NeedMore(contacts=(origin,))


def test_a_repeated_login_records_its_fact_and_announces_nothing() -> None:
    """A second login of the user already logged in on the device moves no session (R6):
    its fact is kept (for the device guard, R4), but no profile, merge or shutdown differs."""
    from pipeline.core.oracle import Oracle

    oracle = Oracle(CONFIG)
    oracle.apply(ev.model(ev.page_view("ws", "d1", "2026-11-24T10:00:00Z")))
    oracle.apply(ev.model(ev.login("ws", "d1", "2026-11-24T10:01:00Z", "u1", SECRET)))
    profiles = oracle.profiles()
    again = oracle.apply(ev.model(ev.login("ws", "d1", "2026-11-24T10:05:00Z", "u1", SECRET)))
    assert again.outcome.kind == "applied" and again.emits == ()
    assert [f.at for f in again.devices["d1"].sessions] == [TEN + 60_000, TEN + 300_000]
    assert oracle.profiles() == profiles
    # A login of another user on that device is no repeat: U1's session ends there (R8).
    switch = oracle.apply(ev.model(ev.login("ws", "d1", "2026-11-24T10:06:00Z", "u2", SECRET)))
    assert [e.value.reason for e in switch.emits if e.topic == "identity.shutdown"] == [
        "user_switch"
    ]


def test_the_loaded_device_and_user_say_what_a_login_will_ask_for_next() -> None:
    """The device's possible visitors (first, after a logout, after an e-mail match) and the
    user's other devices, with the profiles of the users involved."""
    from pipeline.core.facts import ChatFact, EmailEntry, SessionFact, User
    from pipeline.core.rules import likely_more

    device = Device(
        sessions=(
            SessionFact(TEN, "in-1", "login", "u1"),
            SessionFact(TEN + 5, "out-1", "logout", "u1"),
        ),
        chats=(ChatFact(TEN + 9, "chat-1", "conv-1", "ann@example.com"),),
        first_activity=TEN,
    )
    view = View("ws", devices={"d1": device}, users={"u1": User(devices=("d1", "d2"))},
                emails={"ann@example.com": EmailEntry(verified={"u2": (TEN, "in-2")})})  # fmt: skip
    login = ev.model(ev.login("ws", "d1", "2026-11-24T11:00:00Z", "u1", SECRET))
    visitors = [ids.visitor_contact_id("ws", "d1", s) for s in ("origin", "out-1", "email:chat-1")]
    assert likely_more(checked(login), view, CONFIG) == NeedMore(
        devices=("d2",),
        contacts=tuple(
            sorted([*visitors, ids.user_contact_id("ws", "u1"), ids.user_contact_id("ws", "u2")])
        ),  # fmt: skip
        users=("u1", "u2"),
        emails=("ann@example.com",),
    )
    # A logout may begin a visitor named by itself.
    logout = ev.model(ev.logout("ws", "d1", "2026-11-24T11:00:00Z", "u1"))
    assert (
        ids.visitor_contact_id("ws", "d1", logout.event_id)
        in likely_more(checked(logout), view, CONFIG).contacts
    )
    # A login on a device without a record still names its user: her record and profile, the
    # device's first visitor; a page view there gives no hint.
    assert likely_more(checked(login), View("ws"), CONFIG) == NeedMore(
        contacts=tuple(sorted([visitors[0], ids.user_contact_id("ws", "u1")])), users=("u1",)
    )
    assert likely_more(checked(page_view()), View("ws"), CONFIG) == NeedMore()


def test_a_new_device_s_login_asks_for_the_user_s_devices_and_retired_summary() -> None:
    """u1 has devices d2 and d3 live and a retired summary; she logs in on d9, which has no
    record yet: her other devices and her summary's two records are asked for at once."""
    from pipeline.core.facts import Retired, User
    from pipeline.core.rules import likely_more

    user = User(devices=("d2", "d3"), retired=Retired(TEN, loaded=False))
    view = View("ws", devices={"d9": None}, users={"u1": user})
    login = ev.model(ev.login("ws", "d9", "2026-11-24T11:00:00Z", "u1", SECRET))
    need = likely_more(checked(login), view, CONFIG)
    assert need.devices == ("d2", "d3")
    assert need.chunks == ("p:u1", "v:u1")
