"""Two workers on different partitions of the same topics: one user's logins stay consistent."""

from __future__ import annotations

import time

from pipeline.core import ids
from tests.integration.conftest import SECRETS
from tests.support import events as ev
from tests.support.kafka import Pipeline

WS = "ws-a"
DEVICES = [f"device-{i:02d}" for i in range(24)]


def _balanced(pipeline: Pipeline) -> bool:
    """Both workers' latest assignments hold some, not all, of the 20 input partitions."""
    counts = []
    for index in (0, 1):
        lines = [
            line for line in pipeline.worker_log(index).splitlines() if "input partitions" in line
        ]
        counts.append(int(lines[-1].split("assigned ")[1].split(" ")[0]) if lines else 0)
    return all(0 < c < 20 for c in counts)


async def test_logins_from_many_devices_through_two_workers(pipeline: Pipeline) -> None:
    # One person on 24 devices within the hour: lift the shared-identifier guard (R4) above it.
    pipeline.start_worker({"IDP_SHARED_DEVICE_LIMIT": "50"})
    pipeline.start_worker({"IDP_SHARED_DEVICE_LIMIT": "50"})
    deadline = time.monotonic() + 60
    while not all("Worker]: Ready" in pipeline.worker_log(i) for i in (0, 1)) or not _balanced(
        pipeline
    ):
        assert time.monotonic() < deadline, pipeline.worker_log(0) + pipeline.worker_log(1)
        await pipeline.wait_for(lambda _: True, timeout=1)  # yields to the output reader
    logins = []
    for i, device in enumerate(DEVICES):
        await pipeline.send(
            "telemetry.page_view", ev.page_view(WS, device, f"2026-11-24T12:{i:02d}:00Z")
        )
        login = ev.login(WS, device, f"2026-11-24T12:{i:02d}:30Z", "many", SECRETS[WS])
        logins.append(login)
        await pipeline.send("telemetry.login", login)

    contact = ids.user_contact_id(WS, "many")
    visitors = sorted(ids.visitor_contact_id(WS, d, "origin") for d in DEVICES)

    def complete(out) -> bool:
        profile = out.latest_profiles().get(contact)
        return profile is not None and profile["anonymous_ids"] == DEVICES

    await pipeline.wait_for(complete, timeout=90, what="one profile with every device")
    await pipeline.wait_for(
        lambda out: {m["from_contact_id"] for m in out.values("identity.merged")} == set(visitors),
        timeout=30, what="every visitor's merge",
    )  # fmt: skip
    profile = pipeline.outputs.latest_profiles()[contact]
    assert profile["merged_contact_ids"] == visitors
    assert profile["created_at"] == "2026-11-24T12:00:00.000Z"
    for visitor_id in visitors:
        assert pipeline.outputs.latest_profiles()[visitor_id]["merged_into"] == contact
    merges = pipeline.outputs.values("identity.merged")
    first = next(m for m in merges if m["cause_event_id"] == logins[0]["event_id"])
    assert first["kind"] == "converted"
    # The load ran after the rebalance, and each worker owned some of the input partitions then.
    for index in (0, 1):
        last = [
            line
            for line in pipeline.worker_log(index).splitlines()
            if "assigned" in line and "input partitions" in line
        ][-1]
        count = int(last.split("assigned ")[1].split(" ")[0])
        assert 0 < count < 20, last
