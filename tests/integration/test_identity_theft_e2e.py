"""The two gravest thefts through the real broker and Redis: a backdated login and logout (R14).

Thirty days ago the victim logged in on device D at 10:00 and chatted there at 11:00 and 12:00,
each record written as it happened. Today the attacker, who knows D's anonymous_id, sends a
login of their own (a valid user_hash) stamped 10:02 that day, and a logout without any
credential stamped 10:01. Both are refused `too_late`; nothing the victim owns moves.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

from tests.integration.conftest import SECRETS
from tests.support import events as ev
from tests.support.kafka import Pipeline

WS = "ws-a"
SECRET = SECRETS[WS]
DAY = datetime.now(UTC).replace(hour=10, minute=0, second=0, microsecond=0) - timedelta(days=30)


def at(minutes: int) -> str:
    return (DAY + timedelta(minutes=minutes)).isoformat().replace("+00:00", "Z")


async def test_backdated_login_and_logout_are_too_late(pipeline: Pipeline) -> None:
    pipeline.start_worker()
    await pipeline.send("telemetry.login", ev.login(WS, "D", at(0), "vic", SECRET))
    await pipeline.send("telemetry.chat_start", ev.chat_start(WS, "D", at(60), "conv-1"))
    await pipeline.send("telemetry.chat_start", ev.chat_start(WS, "D", at(120), "conv-2",
                                                              email="vic@example.com"))  # fmt: skip

    def victim(out) -> dict | None:
        return next((p for p in out.latest_profiles().values() if p["user_id"] == "vic"), None)

    await pipeline.wait_for(lambda out: (victim(out) or {}).get("conversation_ids") == ["conv-1", "conv-2"],
                            what="the victim's two conversations")  # fmt: skip
    before = pipeline.outputs.latest_profiles()
    now_ms = int(time.time() * 1000)
    login = ev.login(WS, "D", at(2), "mal", SECRET)
    logout = ev.logout(WS, "D", at(1), "vic")
    await pipeline.send("telemetry.login", login, timestamp_ms=now_ms)
    await pipeline.send("telemetry.logout", logout, timestamp_ms=now_ms)
    await pipeline.wait_for(lambda out: len(out.of("identity.rejected")) == 2, what="two rejections")
    reasons = {r["input_event_id"]: r["reason"] for r in pipeline.outputs.values("identity.rejected")}
    assert reasons == {login["event_id"]: "too_late", logout["event_id"]: "too_late"}
    # The worker has gone past them: a later event of another device is processed.
    await pipeline.send("telemetry.page_view", ev.page_view(WS, "E", at(0)), key="D",
                        timestamp_ms=now_ms)  # fmt: skip
    await pipeline.wait_for(lambda out: any(r.value and r.value["reason"] == "too_late"
                                            and r.value["input_event_id"] not in reasons
                                            for r in out.of("identity.rejected")),
                            what="the page view (a day late too)")  # fmt: skip
    assert pipeline.outputs.latest_profiles() == before
    assert pipeline.outputs.of("identity.shutdown") == []
    assert not [m for m in pipeline.outputs.values("identity.merged") if m["user_id"] == "mal"]
    (rejected,) = [r for r in pipeline.outputs.values("identity.rejected")
                   if r["input_event_id"] == login["event_id"]]  # fmt: skip
    assert login["user_hash"] not in rejected["original"]  # the valid proof is not echoed
