"""The drawn inspector page on state built by the pure core: lanes, bars, marks, escaping.

Maya's journey: a lead on her phone (a chat with her e-mail), a login on her laptop with a
token (jti) that verifies the e-mail, the same token replayed on another device (R17
`token_reused`), a login on a kiosk beyond the shared-identifier limit of 2 devices (R4
`shared_identifier`), a second chat on the laptop, a logout there and a page view after it.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime

from pipeline.core import ids
from pipeline.core.oracle import Oracle
from pipeline.core.rules import CoreConfig
from pipeline.tools.inspect import Facts, describe
from pipeline.tools.inspect_html import drawing, page
from tests.support import events as ev

WS = "ws"
SECRET = "inspect-secret-0123456789abcdef0123"
EXP = int(datetime(2026, 11, 25, tzinfo=UTC).timestamp())


def _ms(clock: str) -> int:
    return int(datetime.fromisoformat(f"2026-11-24T{clock}+00:00").timestamp() * 1000)


def _ts(clock: str) -> str:
    return f"2026-11-24T{clock}Z"


def maya_journey(ws: str, secret: str, ts=_ts, exp: int = EXP) -> dict[str, dict]:
    """The events of the journey by name; `ts` turns a clock time into the event's timestamp."""
    token = ev.jwt_hs256(secret, {"user_id": "maya", "email": "maya@example.com", "exp": exp,
                                  "jti": "maya-token-1"})  # fmt: skip
    return {
        "phone_view": ev.page_view(ws, "maya-phone", ts("09:00:00")),
        "phone_chat": ev.chat_start(
            ws, "maya-phone", ts("09:02:00"), "conv-phone", email="maya@example.com", city="Paris"
        ),  # fmt: skip
        "laptop_view": ev.page_view(ws, "maya-laptop", ts("09:04:00")),
        "laptop_login": ev.login(
            ws, "maya-laptop", ts("09:05:00"), "maya", secret, identity_token=token
        ),  # fmt: skip
        "stolen_login": ev.login(
            ws, "thief-pc", ts("09:06:00"), "maya", secret, identity_token=token
        ),  # fmt: skip
        "kiosk_login": ev.login(ws, "shop-kiosk", ts("09:10:00"), "maya", secret),
        "laptop_chat": ev.chat_start(ws, "maya-laptop", ts("09:12:00"), "conv-laptop"),
        "laptop_logout": ev.logout(ws, "maya-laptop", ts("09:20:00"), "maya"),
        "laptop_after": ev.page_view(ws, "maya-laptop", ts("09:25:00")),
    }


def _state() -> tuple[dict[str, dict], Oracle, Facts]:
    config = CoreConfig(secrets={WS: (SECRET.encode(),)}, shared_device_limit=2)
    oracle = Oracle(config)
    journey = maya_journey(WS, SECRET)
    for event in journey.values():
        oracle.apply(ev.model(event))
    facts = Facts(WS, devices={k: v for (_, k), v in oracle.devices.items()},
                  users={k: v for (_, k), v in oracle.users.items()},
                  emails={k: v for (_, k), v in oracle.emails.items()},
                  tokens={k: v for (_, k), v in oracle.tokens.items()}, config=config)  # fmt: skip
    return journey, oracle, facts


def _attrs(tag: str, html: str, cls: str) -> list[dict[str, str]]:
    """The attributes of every `<tag class="... cls ...">` element."""
    found = []
    for match in re.finditer(rf"<{tag} ([^>]*)>", html):
        attrs = dict(re.findall(r'([\w-]+)="([^"]*)"', match.group(1)))
        if cls in attrs.get("class", "").split():
            found.append(attrs)
    return found


def test_the_drawing_of_maya() -> None:
    journey, oracle, facts = _state()
    contact = ids.user_contact_id(WS, "maya")
    profile = oracle.profiles()[contact]
    d = drawing(profile, facts)
    lanes = {lane.device: lane.role for lane in d.lanes}
    # Her own device first; the phone's lead, merged by e-mail; the two refused links.
    assert lanes == {"maya-laptop": "profile", "maya-phone": "lead", "thief-pc": "refused",
                     "shop-kiosk": "refused"}  # fmt: skip
    laptop_visitor = ids.visitor_contact_id(WS, "maya-laptop", "origin")
    after_logout = ids.visitor_contact_id(WS, "maya-laptop", journey["laptop_logout"]["event_id"])
    phone_lead = ids.visitor_contact_id(WS, "maya-phone", "origin")
    phone_after = ids.visitor_contact_id(
        WS, "maya-phone", f"email:{journey['phone_chat']['event_id']}"
    )
    bars = {(b.device, b.contact_id): (b.start_ms, b.end_ms) for b in d.bars}
    assert bars == {
        ("maya-laptop", laptop_visitor): (_ms("09:04:00"), _ms("09:05:00")),
        ("maya-laptop", contact): (_ms("09:05:00"), _ms("09:20:00")),
        ("maya-laptop", after_logout): (_ms("09:20:00"), None),
        # The lead ends at the e-mail match, just after the login that verified the e-mail;
        # the phone's later session exists from then on (it stays unlinked, R2).
        ("maya-phone", phone_lead): (_ms("09:00:00"), _ms("09:05:00")),
        ("maya-phone", phone_after): (_ms("09:05:00"), None),
    }
    marks = {(m.kind, m.device, m.reason, m.event_id) for m in d.marks}
    login_id = journey["laptop_login"]["event_id"]
    assert marks == {
        ("conversation", "maya-phone", "chat_start", journey["phone_chat"]["event_id"]),
        ("conversation", "maya-laptop", "chat_start", journey["laptop_chat"]["event_id"]),
        ("merge", "maya-laptop", "login", login_id),
        ("merge", "maya-phone", "email_match", login_id),
        ("shutdown", "maya-laptop", "logout", journey["laptop_logout"]["event_id"]),
        ("refusal", "thief-pc", "token_reused", journey["stolen_login"]["event_id"]),
        ("refusal", "shop-kiosk", "shared_identifier", journey["kiosk_login"]["event_id"]),
    }
    roles = {c.contact_id: c.role for c in d.contacts}
    assert roles == {contact: "profile", laptop_visitor: "merged", phone_lead: "merged",
                     after_logout: "other", phone_after: "other"}  # fmt: skip
    # Page views after a device's first are no facts: the laptop's last fact is its logout.
    assert d.start_ms < _ms("09:00:00") and d.end_ms > _ms("09:20:00")


def test_the_page_carries_lanes_marks_and_a_legend_without_loading_anything() -> None:
    journey, oracle, facts = _state()
    contact = ids.user_contact_id(WS, "maya")
    html = page(oracle.profiles()[contact], facts)
    assert html.startswith("<!DOCTYPE html>")
    assert [a["data-device"] for a in _attrs("g", html, "lane")] == [
        "maya-laptop", "maya-phone", "shop-kiosk", "thief-pc"]  # fmt: skip
    refusals = {(a["data-device"], a["data-reason"]) for a in _attrs("g", html, "refusal")}
    assert refusals == {("thief-pc", "token_reused"), ("shop-kiosk", "shared_identifier")}
    assert len(_attrs("g", html, "session")) == 5
    assert {a["data-mark"] for a in _attrs("li", html, "legend-mark")} == {
        "merge", "shutdown", "conversation", "refusal"}  # fmt: skip
    assert contact in {a["data-contact"] for a in _attrs("li", html, "legend-contact")}
    for loads in ("<script", "src=", "href=", "@import", "http:", "https:"):
        assert loads not in html, loads


def test_the_text_names_the_refused_links() -> None:
    journey, oracle, facts = _state()
    text = "\n".join(describe(oracle.profiles()[ids.user_contact_id(WS, "maya")], facts))
    stolen, kiosk = journey["stolen_login"]["event_id"], journey["kiosk_login"]["event_id"]
    assert f"login on device thief-pc refused (token_reused, event {stolen})" in text
    assert f"login on device shop-kiosk refused (shared_identifier, event {kiosk})" in text
    # Neither refused device is one of hers.
    assert "device thief-pc:" not in text and "device shop-kiosk:" not in text


def test_identifiers_from_input_are_escaped() -> None:
    config = CoreConfig(secrets={WS: (SECRET.encode(),)})
    oracle = Oracle(config)
    device = '<img src=x onerror="alert(1)">'
    oracle.apply(ev.model(ev.page_view(WS, device, _ts("09:00:00"))))
    oracle.apply(ev.model(ev.chat_start(WS, device, _ts("09:01:00"), "<u>conv</u>")))
    facts = Facts(WS, devices={k: v for (_, k), v in oracle.devices.items()}, config=config)
    (profile,) = oracle.profiles().values()
    html = page(profile, facts)
    assert "<img" not in html and "<u>" not in html
    assert "&lt;img src=x onerror=&quot;alert(1)&quot;&gt;" in html


def test_a_shared_computer_shows_the_switch_and_the_logout_of_someone_else() -> None:
    # Ann logs in on a library PC at 10:00, Bob at 10:10 (R8: Ann's session ends, user_switch);
    # a logout for Ann at 10:20 finds Bob logged in there: refused, not_logged_in (R10).
    config = CoreConfig(secrets={WS: (SECRET.encode(),)})
    oracle = Oracle(config)
    ann = ev.login(WS, "library-pc", _ts("10:00:00"), "ann", SECRET)
    bob = ev.login(WS, "library-pc", _ts("10:10:00"), "bob", SECRET)
    stray = ev.logout(WS, "library-pc", _ts("10:20:00"), "ann")
    for event in (ann, bob, stray):
        oracle.apply(ev.model(event))
    facts = Facts(WS, devices={k: v for (_, k), v in oracle.devices.items()},
                  users={k: v for (_, k), v in oracle.users.items()}, config=config)  # fmt: skip
    d = drawing(oracle.profiles()[ids.user_contact_id(WS, "ann")], facts)
    assert [(b.contact_id, b.start_ms, b.end_ms) for b in d.bars] == [
        (ids.user_contact_id(WS, "ann"), _ms("10:00:00"), _ms("10:10:00")),
        (ids.user_contact_id(WS, "bob"), _ms("10:10:00"), None),
    ]  # the PC never was an anonymous visitor: it logged in straight away
    assert {(m.kind, m.reason, m.event_id) for m in d.marks} == {
        ("shutdown", "user_switch", bob["event_id"]),
        ("refusal", "not_logged_in", stray["event_id"]),
    }
    roles = {c.contact_id: c.role for c in d.contacts}
    assert roles == {ids.user_contact_id(WS, "ann"): "profile",
                     ids.user_contact_id(WS, "bob"): "other"}  # fmt: skip
