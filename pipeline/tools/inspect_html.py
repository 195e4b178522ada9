"""`idp inspect --html`: one profile drawn as a self-contained page (inline SVG and CSS).

Each device that explains the profile is a lane over event time; each of its sessions is a bar
coloured by the contact the device was then; merges, shutdowns, conversations and refused links
(R4 `shared_identifier`, R17 `token_reused`, a logout of someone not logged in) are marks on
the lanes. Everything is pure: `drawing` turns a profile and its facts into what to draw, `page`
turns that into HTML. The page loads nothing (no scripts, fonts or images); every identifier
comes from input and is escaped.
"""

from __future__ import annotations

from dataclasses import dataclass
from html import escape
from typing import Literal

from pipeline.core import ids
from pipeline.core.timeline import Segment, Timeline
from pipeline.tools.inspect import Facts, describe, devices_of
from schemas import Profile
from schemas.time import format_timestamp, from_epoch_ms

Role = Literal["profile", "merged", "other"]
MarkKind = Literal["merge", "shutdown", "conversation", "refusal"]
LaneRole = Literal["profile", "lead", "refused"]

MAX_LANES = 24  # a shared identifier can name thousands of devices: the earliest are drawn

# Chart geometry, in SVG user units (the chart scales to the page's width).
WIDTH = 1200
LABEL_W = 200
RIGHT_PAD = 28
AXIS_H = 44
LANE_H = 72
BAR_H = 22

PROFILE_COLOUR = "#2563eb"
MERGED_COLOURS = ("#0d9488", "#9333ea", "#d97706", "#db2777", "#65a30d", "#0891b2", "#c2410c")
OTHER_COLOURS = ("#94a3b8", "#a8a29e", "#a5b4fc", "#99c9b8", "#d6b48c", "#c4a5c9")

# Tick spacings, in ms: the smallest that leaves at most ~10 ticks is used.
_STEPS = (1_000, 5_000, 15_000, 30_000, 60_000, 300_000, 900_000, 1_800_000, 3_600_000,
          10_800_000, 21_600_000, 43_200_000, 86_400_000, 172_800_000, 604_800_000,
          2_592_000_000)  # fmt: skip


@dataclass(frozen=True, slots=True)
class Bar:
    """A session of a device: `[start_ms, end_ms)`, `end_ms` None while it lasts."""

    device: str
    contact_id: str
    kind: Literal["visitor", "user"]
    start_ms: int
    end_ms: int | None
    label: str


@dataclass(frozen=True, slots=True)
class Mark:
    """Something that happened on a device at `at`, and why."""

    kind: MarkKind
    device: str
    at: int
    reason: str  # login, signup, email_match, logout, user_switch, shared_identifier, ...
    event_id: str
    text: str  # one sentence for the tooltip and the event list
    contact_id: str = ""  # the contact it happened to (for a merge: the one it went into)
    label: str = ""  # a short label beside the mark (a conversation's id)


@dataclass(frozen=True, slots=True)
class Contact:
    """A contact some bar belongs to, with its colour and what it is to the profile."""

    contact_id: str
    role: Role
    colour: str
    label: str


@dataclass(frozen=True, slots=True)
class Lane:
    """One device."""

    device: str
    role: LaneRole


@dataclass(frozen=True, slots=True)
class Drawing:
    """What the page draws for one profile."""

    profile: Profile
    lanes: tuple[Lane, ...]
    bars: tuple[Bar, ...]
    marks: tuple[Mark, ...]
    contacts: tuple[Contact, ...]
    start_ms: int
    end_ms: int
    hidden_lanes: int = 0


def _who(segment: Segment, timeline: Timeline) -> str:
    if segment.user_id is not None:
        return f"user {segment.user_id}"
    if segment.chats:
        city = next((c.city for c in segment.chats if c.city), None)
        return f"lead {ids.pseudonym(segment.contact_id, city)}"
    return "visitor"


def _lane_role(profile: Profile, device: str) -> LaneRole:
    return "profile" if device in profile.anonymous_ids else "lead"


def drawing(profile: Profile, facts: Facts) -> Drawing:
    """Lanes, bars and marks for a profile, from the facts `idp inspect` loaded."""
    devices = devices_of(profile, facts)
    hidden = max(0, len(devices) - MAX_LANES)
    devices = devices[:MAX_LANES]
    lanes: list[Lane] = []
    bars: list[Bar] = []
    marks: list[Mark] = []
    roles: dict[str, tuple[Role, str]] = {}
    merged = set(profile.merged_contact_ids)
    for device in devices:
        timeline = facts.timeline(device)
        refused = facts.refusals(device)
        stored = facts.whole(device)
        shown = [s for s in timeline.segments if timeline.exists(s)]
        role: LaneRole = _lane_role(profile, device)
        if (
            role == "lead"
            and refused
            and not any(s.merge and s.merge.into_contact_id == profile.contact_id for s in shown)
        ):
            role = "refused"
        lanes.append(Lane(device, role))
        for segment in shown:
            start = segment.start_ms
            if start is None:
                start = timeline.first_activity if timeline.first_activity is not None else 0
            end = None if segment.end_key is None else segment.end_key // 2
            who = _who(segment, timeline)
            bars.append(Bar(device, segment.contact_id, segment.kind, start, end, who))
            if segment.contact_id == profile.contact_id:
                contact_role: Role = "profile"
            elif segment.contact_id in merged or (
                segment.merge and segment.merge.into_contact_id == profile.contact_id
            ):
                contact_role = "merged"
            else:
                contact_role = "other"
            roles.setdefault(segment.contact_id, (contact_role, f"{who} on {device}"))
            for chat in segment.chats:
                email = f", e-mail {chat.email}" if chat.email else ""
                marks.append(Mark("conversation", device, chat.at, "chat_start", chat.event_id,
                                  f"conversation {chat.conversation_id} started{email}",
                                  segment.contact_id, chat.conversation_id))  # fmt: skip
            if segment.merge is not None:
                merge = segment.merge
                marks.append(Mark("merge", device, merge.at, merge.reason, merge.cause_event_id,
                                  f"{who} merged into user {merge.user_id} ({merge.reason})",
                                  merge.into_contact_id))  # fmt: skip
        for shutdown in timeline.shutdowns:
            whose = f"user {shutdown.user_id}" if shutdown.user_id else "the visitor"
            marks.append(Mark("shutdown", device, shutdown.at, shutdown.reason,
                              shutdown.cause_event_id,
                              f"session of {whose} ended ({shutdown.reason})",
                              shutdown.contact_id))  # fmt: skip
        for fact in stored.sessions:
            reason = refused.get(fact.event_id)
            if reason is None and fact.event_id in timeline.ignored_logouts:
                reason = "not_logged_in"
            if reason is not None:
                what = f"{fact.kind} of user {fact.user_id} refused ({reason})"
                marks.append(Mark("refusal", device, fact.at, reason, fact.event_id, what))
    times = [b.start_ms for b in bars] + [b.end_ms for b in bars if b.end_ms is not None]
    times += [m.at for m in marks]
    start_ms, end_ms = _domain(times)
    return Drawing(profile, tuple(lanes), tuple(bars),
                   tuple(sorted(marks, key=lambda m: (m.at, m.device, m.kind))),
                   _contacts(profile, roles), start_ms, end_ms, hidden)  # fmt: skip


def _domain(times: list[int]) -> tuple[int, int]:
    """The time span drawn: every fact, with a margin on each side."""
    if not times:
        return 0, 60_000
    low, high = min(times), max(times)
    # Room on the right for the sessions still going on ("now" is after the latest fact).
    pad = max((high - low) // 20, 30_000)
    return low - pad, high + 2 * pad


def _contacts(profile: Profile, roles: dict[str, tuple[Role, str]]) -> tuple[Contact, ...]:
    """Colours: the profile's contact blue, contacts merged into it bright, others muted."""
    contacts = []
    merged_i = other_i = 0
    order = {"profile": 0, "merged": 1, "other": 2}
    for contact_id, (role, label) in sorted(roles.items(), key=lambda kv: order[kv[1][0]]):
        if role == "profile":
            colour = PROFILE_COLOUR
            label = f"this profile: {label.split(' on ')[0]}"
        elif role == "merged":
            colour = MERGED_COLOURS[merged_i % len(MERGED_COLOURS)]
            merged_i += 1
            label = f"{label}, merged into this profile"
        else:
            colour = OTHER_COLOURS[other_i % len(OTHER_COLOURS)]
            other_i += 1
            label = f"{label}, another contact"
        contacts.append(Contact(contact_id, role, colour, label))
    return tuple(contacts)


# -- rendering


def _e(value: object) -> str:
    return escape(str(value), quote=True)


def _time(ms: int) -> str:
    return format_timestamp(from_epoch_ms(ms))


def _ticks(start_ms: int, end_ms: int) -> tuple[int, list[int]]:
    span = max(end_ms - start_ms, 1)
    step = next((s for s in _STEPS if span / s <= 10), _STEPS[-1])
    first = -(-start_ms // step) * step
    return step, list(range(first, end_ms + 1, step))


def _tick_label(ms: int, step: int, span: int) -> str:
    text = _time(ms)  # 2026-11-24T09:05:00.000Z
    day, clock = text[5:10], text[11:19] if step < 60_000 else text[11:16]
    return f"{day} {clock}" if span >= 86_400_000 else clock


class _Scale:
    def __init__(self, start_ms: int, end_ms: int) -> None:
        self.start_ms, self.end_ms = start_ms, end_ms
        self.x0, self.x1 = LABEL_W, WIDTH - RIGHT_PAD

    def x(self, ms: int) -> float:
        fraction = (ms - self.start_ms) / max(self.end_ms - self.start_ms, 1)
        return round(self.x0 + fraction * (self.x1 - self.x0), 1)


def _symbol(kind: str, x: float, y: float, *, colour: str = "") -> str:
    """The mark's shape centred on (x, y); the legend draws the same shapes."""
    if kind == "merge":
        return (f'<path class="shape" d="M{x} {y - 9}L{x + 9} {y}L{x} {y + 9}L{x - 9} {y}Z" '
                f'fill="#fff" stroke="{colour or "#1e3a8a"}" stroke-width="3"/>')  # fmt: skip
    if kind == "shutdown":
        return (f'<rect class="shape" x="{x - 2.5}" y="{y - 15}" width="5" height="30" rx="1" '
                f'fill="#111827"/><rect class="shape" x="{x - 7}" y="{y - 15}" width="14" '
                f'height="5" fill="#111827"/>')  # fmt: skip
    if kind == "conversation":
        return (f'<path class="shape" d="M{x - 8} {y - 7}h16a3 3 0 0 1 3 3v7a3 3 0 0 1-3 3h-9'
                f'l-5 5v-5h-2a3 3 0 0 1-3-3v-7a3 3 0 0 1 3-3Z" fill="#f59e0b" stroke="#92400e" '
                f'stroke-width="1.2" transform="translate(0 -4)"/>')  # fmt: skip
    return (f'<circle class="shape" cx="{x}" cy="{y}" r="9" fill="#dc2626" stroke="#fff" '
            f'stroke-width="2"/><path d="M{x - 4} {y - 4}L{x + 4} {y + 4}M{x + 4} {y - 4}'
            f'L{x - 4} {y + 4}" stroke="#fff" stroke-width="2.4" '
            'stroke-linecap="round"/>')  # fmt: skip


_LANE_CAPTION = {"profile": "device of this profile", "lead": "lead merged by e-mail",
                 "refused": "refused link only"}  # fmt: skip


def _svg(d: Drawing) -> str:
    scale = _Scale(d.start_ms, d.end_ms)
    colours = {c.contact_id: c.colour for c in d.contacts}
    height = AXIS_H + LANE_H * max(len(d.lanes), 1) + 12
    step, ticks = _ticks(d.start_ms, d.end_ms)
    span = d.end_ms - d.start_ms
    out = [f'<svg id="timeline" viewBox="0 0 {WIDTH} {height}" role="img" '
           f'aria-label="devices of contact {_e(d.profile.contact_id)} over time" '
           f'data-start-ms="{d.start_ms}" data-end-ms="{d.end_ms}">',
           '<defs><linearGradient id="fade" x1="0" x2="1"><stop offset="0" stop-color="#fff" '
           'stop-opacity="0"/><stop offset="1" stop-color="#fff" stop-opacity="0.85"/>'
           '</linearGradient></defs>']  # fmt: skip
    for i in range(len(d.lanes)):
        top = AXIS_H + i * LANE_H
        out.append(f'<rect class="stripe" x="0" y="{top}" width="{WIDTH}" height="{LANE_H}" '
                   f'fill="{"#f8fafc" if i % 2 == 0 else "#ffffff"}"/>')  # fmt: skip
    out.append('<g class="axis">')
    for tick in ticks:
        x = scale.x(tick)
        out.append(f'<line x1="{x}" x2="{x}" y1="{AXIS_H - 6}" y2="{height - 12}" '
                   f'stroke="#e2e8f0"/><text x="{x}" y="{AXIS_H - 12}" text-anchor="middle" '
                   f'class="tick">{_e(_tick_label(tick, step, span))}</text>')  # fmt: skip
    out.append("</g>")
    for i, lane in enumerate(d.lanes):
        top = AXIS_H + i * LANE_H
        mid = top + LANE_H / 2 - 4
        name = lane.device if len(lane.device) <= 24 else lane.device[:23] + "…"
        out.append(f'<g class="lane" data-device="{_e(lane.device)}" data-role="{lane.role}">'
                   f'<title>{_e(lane.device)}</title>'
                   f'<text class="device" x="12" y="{mid}">{_e(name)}</text>'
                   f'<text class="caption" x="12" y="{mid + 16}">{_LANE_CAPTION[lane.role]}</text>'
                   f'<line x1="{LABEL_W}" x2="{WIDTH - RIGHT_PAD}" y1="{mid}" y2="{mid}" '
                   f'stroke="#cbd5e1" stroke-dasharray="3 4"/>')  # fmt: skip
        for bar in (b for b in d.bars if b.device == lane.device):
            x0 = scale.x(bar.start_ms)
            x1 = scale.x(d.end_ms if bar.end_ms is None else bar.end_ms)
            w = max(x1 - x0, 3)
            end = "" if bar.end_ms is None else str(bar.end_ms)
            until = "now" if bar.end_ms is None else _time(bar.end_ms)
            out.append(f'<g class="session" data-device="{_e(bar.device)}" '
                       f'data-contact="{_e(bar.contact_id)}" data-kind="{bar.kind}" '
                       f'data-start-ms="{bar.start_ms}" data-end-ms="{end}">'
                       f'<title>{_e(bar.label)} (contact {_e(bar.contact_id)}), '
                       f'{_time(bar.start_ms)} → {until}</title>'
                       f'<rect x="{x0}" y="{mid - BAR_H / 2}" width="{w}" height="{BAR_H}" '
                       f'rx="5" fill="{colours[bar.contact_id]}"/>')  # fmt: skip
            if bar.end_ms is None:  # still going: fades out towards "now"
                fade = min(w * 0.4, 60)
                out.append(f'<rect x="{x0 + w - fade}" y="{mid - BAR_H / 2}" width="{fade}" '
                           f'height="{BAR_H}" fill="url(#fade)"/>')  # fmt: skip
            if w > 7.2 * len(bar.label) + 24:  # clear of a merge mark at its start
                out.append(f'<text class="bar-label" x="{x0 + 14}" y="{mid + 4.5}">'
                           f"{_e(bar.label)}</text>")  # fmt: skip
            out.append("</g>")
        rows: list[float] = [-1e9, -1e9]  # right end of the last label in each row below
        for mark in (m for m in d.marks if m.device == lane.device):
            x = scale.x(mark.at)
            y = mid - 22 if mark.kind == "conversation" else mid
            out.append(f'<g class="mark {mark.kind}" data-device="{_e(mark.device)}" '
                       f'data-reason="{_e(mark.reason)}" data-event-id="{_e(mark.event_id)}" '
                       f'data-at-ms="{mark.at}" data-contact="{_e(mark.contact_id)}">'
                       f"<title>{_time(mark.at)}: {_e(mark.text)} (event {_e(mark.event_id)})"
                       f"</title>{_symbol(mark.kind, x, y)}")  # fmt: skip
            if mark.kind == "conversation":
                short = mark.label if len(mark.label) <= 18 else mark.label[:17] + "…"
                out.append(f'<text class="mark-label conversation" x="{x + 13}" y="{y}">'
                           f"{_e(short)}</text>")  # fmt: skip
            else:
                text = mark.reason.replace("_", " ")
                width = 6.4 * len(text)
                row = next((r for r, right in enumerate(rows) if x - width / 2 > right + 6), None)
                if row is not None:
                    rows[row] = x + width / 2
                    ty = mid + BAR_H / 2 + 14 + row * 13
                    out.append(f'<text class="mark-label {mark.kind}" x="{x}" y="{ty}" '
                               f'text-anchor="middle">{_e(text)}</text>')  # fmt: skip
            out.append("</g>")
        out.append("</g>")
    out.append("</svg>")
    return "".join(out)


_MARK_LEGEND = (
    ("merge", "merge into a user: login, signup or e-mail match"),
    ("shutdown", "shutdown: logout, or another user's login"),
    ("conversation", "conversation started"),
    ("refusal", "refused: shared identifier (R4), token reused (R17), not logged in"),
)

_CSS = """
:root { color-scheme: light; }
* { box-sizing: border-box; }
body { margin: 0; background: #eef2f7; color: #0f172a;
  font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial,
  sans-serif; }
main { max-width: 1240px; margin: 0 auto; padding: 20px 20px 40px; }
header h1 { font-size: 20px; margin: 0 0 4px; font-weight: 650; }
header h1 code { font-size: 18px; }
.facts { display: flex; flex-wrap: wrap; gap: 6px 8px; margin: 8px 0 4px; padding: 0;
  list-style: none; }
.facts li { background: #fff; border: 1px solid #d8dee8; border-radius: 999px;
  padding: 2px 10px; }
.facts li b { font-weight: 600; color: #475569; margin-right: 4px; }
.facts li.flag { background: #fef2f2; border-color: #fca5a5; color: #991b1b; }
.sub { color: #475569; margin: 2px 0 0; }
section { background: #fff; border: 1px solid #d8dee8; border-radius: 10px;
  padding: 14px 16px; margin-top: 14px; }
h2 { font-size: 15px; margin: 0 0 8px; }
#timeline { width: 100%; height: auto; display: block; }
#timeline text { font-family: inherit; }
#timeline .tick { font-size: 12px; fill: #64748b; }
#timeline .device { font-size: 14px; font-weight: 600; fill: #0f172a; }
#timeline .caption { font-size: 11.5px; fill: #64748b; }
#timeline .bar-label { font-size: 12.5px; font-weight: 600; fill: #fff;
  paint-order: stroke; stroke: rgba(15, 23, 42, .35); stroke-width: 2px; }
#timeline .mark-label { font-size: 11.5px; fill: #334155; }
#timeline .mark-label.refusal { fill: #b91c1c; font-weight: 600; }
#timeline .mark:hover .shape { filter: brightness(1.15); }
.legend { display: grid; grid-template-columns: repeat(auto-fill, minmax(370px, 1fr));
  gap: 6px 18px; list-style: none; margin: 0; padding: 0; }
.legend li { display: flex; align-items: center; gap: 8px; min-width: 0; }
.swatch { width: 26px; height: 14px; border-radius: 4px; flex: none; }
.legend svg { width: 26px; height: 26px; flex: none; }
table { border-collapse: collapse; width: 100%; font-size: 13px; }
th, td { text-align: left; padding: 4px 8px; border-bottom: 1px solid #eef2f7;
  vertical-align: top; }
th { color: #475569; font-weight: 600; }
td.when { white-space: nowrap; font-variant-numeric: tabular-nums; color: #334155; }
td.what-refusal { color: #b91c1c; }
details pre { font-size: 12px; overflow-x: auto; background: #f8fafc; padding: 10px;
  border-radius: 6px; }
code { font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; }
"""


def _header(p: Profile) -> str:
    facts = [("type", p.type), ("user_id", p.user_id),
             ("email", None if p.email is None else
              f"{p.email} ({'verified' if p.email_verified else 'unverified'})"),
             ("name", p.name), ("pseudonym", p.pseudonym), ("merged into", p.merged_into),
             ("devices", len(p.anonymous_ids)), ("conversations", len(p.conversation_ids)),
             ("merged contacts", len(p.merged_contact_ids))]  # fmt: skip
    items = [f"<li><b>{_e(k)}</b>{_e(v)}</li>" for k, v in facts if v not in (None, 0)]
    items += [f'<li class="flag" data-flag="{_e(f)}">{_e(f)}</li>' for f in p.flags]
    return (f'<header><h1>Contact <code>{_e(p.contact_id)}</code></h1>'
            f'<p class="sub">workspace <code>{_e(p.workspace_id)}</code> · created '
            f'{_time_of(p.created_at)} · updated {_time_of(p.updated_at)} · times in UTC</p>'
            f'<ul class="facts">{"".join(items)}</ul></header>')  # fmt: skip


def _time_of(value: object) -> str:
    return _e(format_timestamp(value))  # type: ignore[arg-type]


def _legend(d: Drawing) -> str:
    items = [f'<li class="legend-contact" data-contact="{_e(c.contact_id)}" '
             f'data-role="{c.role}"><i class="swatch" style="background:{c.colour}"></i>'
             f'<span title="contact {_e(c.contact_id)}">{_e(c.label)}</span></li>'
             for c in d.contacts]  # fmt: skip
    items += [f'<li class="legend-mark" data-mark="{kind}"><svg viewBox="-13 -15 26 30">'
              f'{_symbol(kind, 0, 4 if kind == "conversation" else 0)}</svg>'
              f"<span>{_e(text)}</span></li>"
              for kind, text in _MARK_LEGEND]  # fmt: skip
    return f'<ul id="legend" class="legend">{"".join(items)}</ul>'


def _events(d: Drawing) -> str:
    rows = [f'<tr class="event" data-mark="{m.kind}"><td class="when">{_time(m.at)}</td>'
            f"<td><code>{_e(m.device)}</code></td>"
            f'<td class="what-{m.kind}">{_e(m.text)}</td><td><code>{_e(m.event_id)}</code></td>'
            f"</tr>"
            for m in d.marks]  # fmt: skip
    head = "<tr><th>when</th><th>device</th><th>what</th><th>event</th></tr>"
    return f'<table id="events">{head}{"".join(rows)}</table>'


def page(profile: Profile, facts: Facts) -> str:
    """The whole page for one profile, as HTML."""
    d = drawing(profile, facts)
    more = (f'<p class="sub">{d.hidden_lanes} more devices are not drawn.</p>'
            if d.hidden_lanes else "")  # fmt: skip
    text = "\n".join(describe(profile, facts))
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>contact {_e(profile.contact_id)} · idp inspect</title>"
        f"<style>{_CSS}</style></head><body><main>{_header(profile)}"
        f'<section id="devices"><h2>Devices over time</h2><p class="sub">Each lane is a device; '
        "each bar a session, coloured by the contact the device was then. Hover a bar or a "
        f"mark for its times and event.</p>{_svg(d)}{more}</section>"
        f"<section><h2>Legend</h2>{_legend(d)}</section>"
        f"<section><h2>What happened</h2>{_events(d)}</section>"
        f"<section><details><summary>As text (<code>idp inspect</code>)</summary>"
        f"<pre>{_e(text)}</pre></details></section>"
        "</main></body></html>\n"
    )
