"""A realistic, reproducible telemetry journey for the demo and the benchmark.

Many visitors browse; some start chats (a few leaving an e-mail); some sign up; users log in
on a second device, log out, and share a computer with someone else; a little junk arrives
too, as it does from real browsers.
"""

from __future__ import annotations

import hashlib
import hmac
import random
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from schemas.time import format_timestamp, parse_timestamp, to_epoch_ms
from schemas.topics import CHAT_START, LOGIN, LOGOUT, PAGE_VIEW, SIGNUP

CITIES = ("Paris", "Berlin", "Dublin", "Lisbon", "Austin", "Osaka", "Nairobi", "Lima", None)
# Yesterday, 09:00 UTC: journeys are recent, so the brokers' time-based retention (a week on
# the input topics) never deletes a journey's records, stamped with its events' times, mid-run.
START = datetime.now(UTC).replace(hour=9, minute=0, second=0, microsecond=0) - timedelta(days=1)


@dataclass(frozen=True, slots=True)
class Record:
    """One input message to produce."""

    topic: str
    key: str
    value: dict | bytes

    @property
    def timestamp_ms(self) -> int | None:
        """The Kafka record timestamp to produce it with: its event's own time.

        As a product's backend stamps an event when it receives it (R14 bounds event time by
        the record's). None for junk without a readable time: the producer's clock then.
        """
        stamp = self.value.get("timestamp") if isinstance(self.value, dict) else None
        if not isinstance(stamp, str):
            return None
        try:
            return to_epoch_ms(parse_timestamp(stamp))
        except ValueError:
            return None


def user_hash(secret: str, user_id: str) -> str:
    """HMAC-SHA256(secret, user_id) as lowercase hex (R9)."""
    return hmac.new(secret.encode(), user_id.encode(), hashlib.sha256).hexdigest()


def generate(
    secrets: dict[str, str], *, people: int, seed: int = 7, junk_ratio: float = 0.01
) -> list[Record]:
    """A journey of `people` persons over the given workspaces, ordered by event time."""
    rng = random.Random(seed)
    workspaces = sorted(secrets)
    timed: list[tuple[datetime, int, Record]] = []
    counter = 0

    def add(topic: str, at: datetime, fields: dict) -> None:
        nonlocal counter
        counter += 1
        event_id = str(uuid.UUID(int=rng.getrandbits(128), version=4))
        value = {"event_id": event_id, "timestamp": format_timestamp(at), **fields}
        timed.append((at, counter, Record(topic, fields["anonymous_id"], value)))

    for person in range(people):
        workspace = rng.choice(workspaces)
        secret = secrets[workspace]
        device = f"anon-{seed}-{person}-a"
        at = START + timedelta(seconds=rng.randint(0, 3600))
        city = rng.choice(CITIES)
        base = {"workspace_id": workspace, "anonymous_id": device}
        for _ in range(rng.randint(3, 12)):
            at += timedelta(seconds=rng.randint(5, 90))
            add(PAGE_VIEW, at, {**base, "url": f"https://example.com/p/{rng.randint(1, 40)}",
                                "city": city})  # fmt: skip
        roll = rng.random()
        email = f"person{person}@example.com"
        if roll < 0.25:  # a visitor who starts a chat becomes a lead
            at += timedelta(seconds=30)
            chat = {**base, "conversation_id": f"conv-{seed}-{person}", "city": city}
            if rng.random() < 0.5:
                chat["email"] = email
            add(CHAT_START, at, chat)
        if roll < 0.45:  # signs up
            user_id = f"user-{seed}-{person}"
            proof = {"user_id": user_id, "user_hash": user_hash(secret, user_id), "email": email}
            at += timedelta(seconds=60)
            add(SIGNUP, at, {**base, **proof})
            for _ in range(rng.randint(1, 5)):
                at += timedelta(seconds=rng.randint(5, 60))
                add(PAGE_VIEW, at, {**base, "url": "https://example.com/app"})
            if rng.random() < 0.4:  # logs in on a second device
                other = {"workspace_id": workspace, "anonymous_id": f"anon-{seed}-{person}-b"}
                at += timedelta(minutes=10)
                add(PAGE_VIEW, at, {**other, "url": "https://example.com/login"})
                add(LOGIN, at + timedelta(seconds=20), {**other, **proof})
            if rng.random() < 0.3:  # logs out, and the next visitor on the device browses
                at += timedelta(minutes=5)
                add(LOGOUT, at, {**base, "user_id": user_id})
                add(PAGE_VIEW, at + timedelta(minutes=1), {**base, "url": "https://example.com/"})
        if rng.random() < junk_ratio * 2:
            at += timedelta(seconds=1)
            add(PAGE_VIEW, at, {**base, "anonymous_id": rng.choice(["undefined", "null", "0"])})
        if rng.random() < junk_ratio:
            counter += 1
            timed.append((at, counter, Record(PAGE_VIEW, device, b'{"event_id": "broken')))
    timed.sort(key=lambda row: (row[0], row[1]))
    return [record for _, _, record in timed]


# The benchmark's steady-state mix: a population of returning devices, each seen about 40
# times, so about 2.5% of events are the first visit of a device.
STEADY_MIX = {
    PAGE_VIEW: 0.965,
    CHAT_START: 0.010,
    SIGNUP: 0.005,
    LOGIN: 0.015,
    LOGOUT: 0.005,
}
EVENTS_PER_DEVICE = 40


class SteadyJourney:
    """Telemetry of a site in its steady state, in the `STEADY_MIX` proportions, by the chunk.

    The first chunk draws its events from a population of `events / EVENTS_PER_DEVICE`
    devices (each seen about 40 times, first visits included). Later chunks go on where the
    previous one ended (same population, later times) while new devices keep arriving: each
    event is, with probability 1/EVENTS_PER_DEVICE, the first visit of a new device. So a
    benchmark can process the first chunk as a backlog and offer the next at a fixed rate,
    with first visits spread evenly instead of bunched at the start.
    """

    def __init__(self, secrets: dict[str, str], *, seed: int = 1) -> None:
        self._secrets = secrets
        self._seed = seed
        self._rng = random.Random(seed)
        self._workspaces = sorted(secrets)
        self._devices: list[tuple[str, str]] = []
        self._linked: dict[tuple[str, str], str] = {}
        self._topics, self._weights = zip(*STEADY_MIX.items(), strict=True)
        self._at = START

    def _new_device(self) -> tuple[str, str]:
        device = (self._rng.choice(self._workspaces), f"dev-{self._seed}-{len(self._devices)}")
        self._devices.append(device)
        return device

    def _owner(self, device: tuple[str, str]) -> str:
        index = int(device[1].rsplit("-", 1)[1])
        return f"user-{self._seed}-{index // 2}"  # two devices per user

    def take(self, events: int) -> list[Record]:
        """The next `events` events."""
        rng = self._rng
        arriving = bool(self._devices)
        if not arriving:
            for _ in range(max(10, events // EVENTS_PER_DEVICE)):
                self._new_device()
        records: list[Record] = []
        for _ in range(events):
            self._at += timedelta(milliseconds=rng.randint(1, 40))
            if arriving and rng.random() < 1 / EVENTS_PER_DEVICE:
                key = self._new_device()
                topic = PAGE_VIEW  # a device is first seen browsing
            else:
                key = rng.choice(self._devices)
                topic = rng.choices(self._topics, self._weights)[0]
            workspace, device = key
            fields = {
                "event_id": str(uuid.UUID(int=rng.getrandbits(128), version=4)),
                "workspace_id": workspace,
                "anonymous_id": device,
                "timestamp": format_timestamp(self._at),
            }
            if topic == PAGE_VIEW:
                fields["url"] = f"https://example.com/p/{rng.randint(1, 40)}"
            elif topic == CHAT_START:
                fields["conversation_id"] = f"conv-{fields['event_id'][:8]}"
                if rng.random() < 0.5:
                    fields["email"] = f"{self._owner(key)}@example.com"
            elif topic in (SIGNUP, LOGIN):
                user_id = self._owner(key)
                self._linked[key] = user_id
                fields["user_id"] = user_id
                fields["user_hash"] = user_hash(self._secrets[workspace], user_id)
            else:
                fields["user_id"] = self._linked.pop(key, self._owner(key))
            records.append(Record(topic, device, fields))
        return records


def steady(secrets: dict[str, str], *, events: int, seed: int = 1) -> list[Record]:
    """`events` events: the first chunk of a new `SteadyJourney`."""
    return SteadyJourney(secrets, seed=seed).take(events)
